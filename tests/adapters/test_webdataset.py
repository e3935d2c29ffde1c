"""Scored shards: convert, info, and the importance-sampled WebDataset adapter."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data import SADPSampler
from sadp_data.adapters.webdataset import ScoredShards
from sadp_data.cli import main
from sadp_data.distributed import rank_positions
from sadp_data.shards import ShardError, ShardIndex
from sadp_data.store import ScoreStore, ScoreStoreError

N, SHARD = 250, 64


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (N, 5, 4), dtype=np.uint8)
    y = rng.integers(0, 10, N)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


@pytest.fixture
def shards(tmp_path: Path, source) -> Path:
    out = tmp_path / "shards"
    assert main(["convert", str(source[0]), str(out), "--shard-size", str(SHARD), "--no-progress"]) == 0
    return out


def _epoch(root: Path, keep: float, epoch: int, workers: int = 0, store=None):
    sampler = ScoredShards.sampler_for(
        root, store=store, keep_ratio=keep, epochs=10, warmup_epochs=0, seed=3, schedule="constant"
    )
    sampler.set_epoch(epoch)
    loader = ScoredShards(root, sampler).decode().to_tuple("x.npy", "y.cls").loader(16, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(loader)
    return sampler, batches


def test_convert_round_trip_and_index(shards: Path, source) -> None:
    _, x, y = source
    index = ShardIndex.load(shards)
    assert index.num_examples == N and [s["nsamples"] for s in index.shards] == [64, 64, 64, 58]
    wids = json.loads((shards / "train.wids.json").read_text())
    assert [s["nsamples"] for s in wids["shardlist"]] == [64, 64, 64, 58]
    sampler, batches = _epoch(shards, 1.0, 0)
    indices = torch.cat([b[2] for b in batches]).numpy()
    assert sorted(indices.tolist()) == list(range(N))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = torch.cat([b[1] for b in batches]).numpy()
    np.testing.assert_array_equal(images, x[indices])
    np.testing.assert_array_equal(labels, y[indices])
    sampler.store.close()


def test_convert_is_deterministic(tmp_path: Path, source, shards: Path) -> None:
    again = tmp_path / "again"
    main(["convert", str(source[0]), str(again), "--shard-size", str(SHARD), "--no-progress"])
    for path in sorted(shards.glob("*.tar")):
        assert (again / path.name).read_bytes() == path.read_bytes()
    assert ShardIndex.load(again).fingerprint == ShardIndex.load(shards).fingerprint


@pytest.mark.parametrize("workers", [0, 2])
def test_pruned_epochs_deliver_exactly_the_plan(shards: Path, workers: int) -> None:
    for epoch in (1, 2):
        sampler, batches = _epoch(shards, 0.5, epoch, workers)
        indices = torch.cat([b[2] for b in batches]).numpy()
        weights = torch.cat([b[3] for b in batches]).numpy()
        assert sorted(indices.tolist()) == sorted(sampler.plan.order.tolist())
        np.testing.assert_allclose(weights, sampler.weights(indices))
        sampler.store.close()


def test_rank_split_has_no_misses_and_equal_counts() -> None:
    for count, world in ((10, 3), (7, 7), (100, 4)):
        parts = [rank_positions(count, rank, world) for rank in range(world)]
        assert len({len(p) for p in parts}) == 1
        assert set(np.concatenate(parts).tolist()) == set(range(count))


def test_info_is_readable(shards: Path, capsys) -> None:
    with ScoreStore.open(shards / "scores.zarr", num_examples=N) as store:
        store.update(np.arange(10), np.linspace(0.1, 1.0, 10), epoch=0)
    assert main(["info", str(shards)]) == 0
    text = capsys.readouterr().out
    assert "examples     250" in text and "4 x up to 64 samples" in text and "scored       10 of 250" in text


def test_the_command_line_names_os_errors_without_a_traceback(shards: Path, capsys, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(shards / "index.json"))

    monkeypatch.setattr(ShardIndex, "load", denied)
    with pytest.raises(SystemExit) as stop:
        main(["info", str(shards)])
    assert stop.value.code == 2
    assert "sadp-data info: error: PermissionError: [Errno 13] Permission denied:" in capsys.readouterr().err


def test_bad_shards_are_named(shards: Path) -> None:
    victim = shards / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    index = ShardIndex.load(shards)
    start = int(index.offsets[70, 1])
    data[start : start + 100] = b"\xff" * 100  # a corrupt header, same size
    victim.write_bytes(bytes(data))
    store = index.open_store()  # one writer for both loaders (a second one would be refused)
    with pytest.raises(ShardError, match=r"train-000001.tar, sample 000000070"):
        _epoch(shards, 1.0, 0, store=store)
    sampler = ScoredShards.sampler_for(shards, store=store, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    dataset = ScoredShards(shards, sampler, on_error="skip").decode()
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable samples"):
        assert len(list(dataset)) == N - 1
    sampler.store.close()
    victim.write_bytes(bytes(data[:-2000]))
    with pytest.raises(ShardError, match=r"train-000001\.tar has .* bytes but the index says"):
        ShardIndex.load(shards)
    victim.unlink()
    with pytest.raises(ShardError, match=r"train-000001\.tar is missing"):
        ShardIndex.load(shards)


def test_sidecar_of_another_dataset_is_refused(shards: Path, tmp_path: Path) -> None:
    other = ScoreStore.create(tmp_path / "other.zarr", N, fingerprint="not-these-shards")
    other.close()
    (shards / "scores.zarr").rename(tmp_path / "moved.zarr")
    (tmp_path / "other.zarr").rename(shards / "scores.zarr")
    with pytest.raises(ScoreStoreError, match="another dataset"):
        ShardIndex.load(shards).open_store()


def test_a_store_of_another_dataset_passed_in_directly_is_refused(shards: Path, tmp_path: Path) -> None:
    other = ScoreStore.create(tmp_path / "other.zarr", N, fingerprint="not-these-shards")
    with pytest.raises(ScoreStoreError, match="another dataset"):
        ScoredShards(shards, SADPSampler(other, 0.5, epochs=3))
    other.close()


def test_module_callable_source_and_errors(tmp_path: Path, monkeypatch) -> None:
    module = tmp_path / "my_data.py"
    module.write_text(
        "import numpy as np\ndef build():\n    return [(np.full(3, i, np.float32), i % 2) for i in range(20)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_data", None)
    assert main(["convert", "my_data:build", str(tmp_path / "out"), "--shard-size", "8", "--no-progress"]) == 0
    assert ShardIndex.load(tmp_path / "out").num_examples == 20
    with pytest.raises(SystemExit):
        main(["convert", "my_data:build", str(tmp_path / "out"), "--no-progress"])  # not empty
    with pytest.raises(SystemExit):
        main(["convert", "nowhere:nothing", str(tmp_path / "o2"), "--no-progress"])


def test_bench_loader_writes_the_documented_json() -> None:
    from sadp_data.bench.loader import run_loader_bench

    result = run_loader_bench(rounds=1, workers=(0,), limit=600, progress=False)
    assert result["backend"] == "webdataset"
    assert {"samples_per_s", "epoch_time_s"} <= set(result["raw"])
    assert [(r["keep_ratio"], r["num_workers"]) for r in result["results"]] == [(1.0, 0), (0.7, 0), (0.5, 0)]
    assert all(r["samples_per_s"] > 0 and r["epoch_time_s"] > 0 for r in result["results"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_delivers_the_identical_remaining_batches(shards: Path, workers: int) -> None:
    store = ShardIndex.load(shards).open_store()
    store.update(np.arange(N), np.random.default_rng(2).random(N) + 0.01)

    def loader_for(state=None):
        sampler = ScoredShards.sampler_for(shards, store=store, keep_ratio=0.5, epochs=4, seed=5, schedule="constant")
        loader = ScoredShards(shards, sampler).decode().to_tuple("x.npy", "y.cls").loader(16, num_workers=workers)
        if state is not None:
            loader.load_state_dict(state)
        else:
            sampler.set_epoch(1)
        return loader

    uninterrupted = [batch[2].tolist() for batch in loader_for()]
    interrupted = loader_for()
    head = []
    for batch in interrupted:
        head.append(batch[2].tolist())
        if len(head) == 3:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 48 and state["num_workers"] == max(1, workers)
    resumed = loader_for(json.loads(json.dumps(state)))  # a checkpoint is JSON
    assert len(resumed) == len(uninterrupted) - 3
    tail = [batch[2].tolist() for batch in resumed]
    assert head + tail == uninterrupted
    again = loader_for(state)  # interrupted again within the resumed epoch, near the end
    middle = []
    for batch in again:
        middle.append(batch[2].tolist())
        if len(middle) == len(uninterrupted) - 4:
            break
    last = [batch[2].tolist() for batch in loader_for(again.state_dict())]
    assert head + middle + last == uninterrupted and len(last) == 1
    sampler = ScoredShards.sampler_for(shards, store=store, keep_ratio=0.5, epochs=4, seed=5, schedule="constant")
    other = ScoredShards(shards, sampler).to_tuple("x.npy").loader(16, num_workers=workers + 2)
    with pytest.raises(ValueError, match="num_workers"):
        other.load_state_dict(state)
    store.close()
