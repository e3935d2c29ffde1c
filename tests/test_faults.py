"""Faults and bad input: each case fails loudly, naming the culprit, instead of silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data import SADPSampler, ScoreStore
from sadp_data.kernels import plan_epoch

#: The scripts the tests start as processes.
WORKERS = Path(__file__).parent / "workers"


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_scores_are_refused_with_their_position(backend, bad):
    scores = np.ones(1000, np.float32)
    scores[737] = bad
    if backend == "torch":
        scores = torch.from_numpy(scores)
    with pytest.raises(ValueError, match="position 737"):
        plan_epoch(scores, 0.5, 0, 1, backend=backend)


@pytest.fixture
def store(tmp_path: Path) -> ScoreStore:
    store = ScoreStore.create(tmp_path / "s.zarr", 1000)
    store.update(np.arange(1000), np.random.default_rng(0).gamma(0.5, size=1000))
    yield store
    store.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"keep_ratio": 0.9}, "keep_ratio"),
        ({"epochs": 6}, "epochs"),
        ({"warmup_epochs": 2}, "warmup_epochs"),
        ({"schedule": "constant"}, "schedule"),
        ({"smoothing": 0.3}, "smoothing"),
        ({"method_options": {"weight_power": 1.0}}, "method_options"),
        ({"shard_size": 100}, "shard_size"),
    ],
)
def test_resuming_from_a_sampler_with_other_plan_settings_is_refused_naming_the_field(store, change, field):
    settings = {"keep_ratio": 0.5, "epochs": 5, "seed": 1}
    saved = SADPSampler(store, **settings)
    saved.set_epoch(2)
    iterator = iter(saved)
    for _ in range(10):
        next(iterator)
    state = saved.state_dict()
    with pytest.raises(ValueError, match=field):
        SADPSampler(store, **{**settings, **change}).load_state_dict(state)
    same = SADPSampler(store, **settings)
    same.load_state_dict(state)  # the same settings resume
    assert len(same) == len(saved.plan) - 10


@pytest.mark.parametrize("position", [-1, 10_000])
def test_a_position_outside_the_epoch_is_refused(store, position):
    sampler = SADPSampler(store, 0.5, epochs=5, seed=1)
    sampler.set_epoch(2)
    state = {**sampler.state_dict(), "position": position}
    with pytest.raises(ValueError, match=f"position {position}"):
        SADPSampler(store, 0.5, epochs=5, seed=1).load_state_dict(state)


@pytest.mark.slow
def test_a_second_writer_is_refused_in_this_process_and_in_another_until_the_first_dies(tmp_path):
    import signal
    import subprocess
    import sys

    from sadp_data.store import ScoreStoreError

    path = tmp_path / "s.zarr"
    first = ScoreStore.create(path, 100)
    with pytest.raises(ScoreStoreError, match="mode='r'"):
        ScoreStore.open(path, "r+")
    reader = ScoreStore.open(path, "r")  # readers and mirrors never conflict
    mirror = ScoreStore.open(path, "mirror")
    reader.close()
    mirror.close()
    first.close()
    holder = subprocess.Popen(
        [sys.executable, str(WORKERS / "hold_writer.py"), str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ScoreStoreError, match="already open for writing"):
            ScoreStore.open(path, "r+")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        again = ScoreStore.open(path, "r+")  # the OS released the dead writer's lock
        again.update(np.arange(10), np.ones(10))
        again.close()
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_above_zero_opening_the_sidecar_for_writing_are_told_to_use_open_store(tmp_path):
    import subprocess
    import sys

    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKERS / "rank_opens_writer.py"), str(rank), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert "refused:" in outputs[1] and "open_store" in outputs[1], outputs[1]


def _scored_sidecar(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    with ScoreStore.create(path, 1000, chunk_size=100) as store:
        store.update(np.arange(1000), np.random.default_rng(0).gamma(1.0, size=1000))
    return path


def test_a_deleted_score_chunk_is_refused_naming_the_chunk_file(tmp_path):
    from sadp_data.store import ScoreStoreError

    path = _scored_sidecar(tmp_path)
    (path / "score" / "c" / "3").unlink()
    with pytest.raises(ScoreStoreError, match=r"score/c/3: chunk file missing"):
        ScoreStore.open(path, "r")


def test_random_bytes_over_a_chunk_are_refused_naming_the_chunk_file(tmp_path):
    from sadp_data.store import ScoreStoreError

    path = _scored_sidecar(tmp_path)
    chunk = path / "seen" / "c" / "7"
    data = bytearray(chunk.read_bytes())
    data[10:30] = np.random.default_rng(1).integers(0, 256, 20, dtype=np.uint8).tobytes()
    chunk.write_bytes(bytes(data))
    with pytest.raises(ScoreStoreError, match=r"seen/c/7.*corrupt"):
        ScoreStore.open(path, "r")


def test_chunks_that_equal_the_fill_value_stay_on_disk(tmp_path):
    path = tmp_path / "s.zarr"
    with ScoreStore.create(path, 300, chunk_size=100) as store:
        store.update(np.arange(100), np.zeros(100))  # a chunk of zero scores: zarr would delete it by default
    assert sorted(p.name for p in (path / "score" / "c").iterdir()) == ["0", "1", "2"]
    with ScoreStore.open(path, "r") as reopened:
        assert reopened.seen()[:100].tolist() == [1] * 100


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _npz(path: Path, count: int = 120) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 255, (count, 4, 4), dtype=np.uint8), y=rng.integers(0, 10, count))
    return path


FAILING_SOURCE = """
import numpy as np
def build():
    class Data:
        def __len__(self):
            return 120
        def __getitem__(self, i):
            if i == 90:
                raise RuntimeError("source broke at 90")
            return np.full(3, i, np.float32), i % 2
    return Data()
"""


def test_reconverting_with_overwrite_replaces_everything_and_a_failure_leaves_the_old_folder_whole(
    tmp_path, monkeypatch, capsys
):
    from sadp_data.cli import main
    from sadp_data.shards import ShardIndex

    source, out = _npz(tmp_path / "d.npz"), tmp_path / "shards"
    assert main(["convert", str(source), str(out), "--shard-size", "16", "--no-progress"]) == 0
    assert main(["convert", str(source), str(out), "--shard-size", "50", "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    index = ShardIndex.load(out)
    assert index.shard_size == 50 and index.open_store("r").num_examples == 120
    before = _tree(out)
    (tmp_path / "broken.py").write_text(FAILING_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit):
        main(["convert", "broken:build", str(out), "--overwrite", "--no-progress"])
    assert "source broke at 90" in capsys.readouterr().err
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.slow
def test_a_conversion_killed_half_way_leaves_the_old_folder_whole_and_a_retry_succeeds(tmp_path):
    import signal
    import subprocess
    import sys

    from sadp_data.cli import main

    source, out = _npz(tmp_path / "d.npz"), tmp_path / "shards"
    assert main(["convert", str(source), str(out), "--shard-size", "16", "--no-progress"]) == 0
    before = _tree(out)
    child = subprocess.Popen(
        [sys.executable, str(WORKERS / "slow_convert.py"), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert _tree(out) == before
    assert any(p.name.startswith(".shards.partial-") for p in tmp_path.iterdir())  # the dead run's staging
    assert main(["convert", str(source), str(out), "--shard-size", "40", "--overwrite", "--no-progress"]) == 0
    assert not any(p.name.startswith(".shards.") for p in tmp_path.iterdir())  # cleaned up by the retry
    assert len(list(out.glob("*.tar"))) == 3


def test_ffcv_conversion_is_atomic_too(tmp_path, monkeypatch):
    pytest.importorskip("ffcv")
    from sadp_data.adapters import ffcv as adapter
    from sadp_data.sources import open_source

    source, out = _npz(tmp_path / "d.npz"), tmp_path / "data.beton"
    adapter.write_beton(open_source(str(source)), out)
    before = out.read_bytes(), _tree(tmp_path / "data.scores.zarr")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # The new .beton is complete when its sidecar fails: neither may replace the old pair.
    monkeypatch.setattr(adapter.ScoreStore, "create", full_disk)
    with pytest.raises(OSError, match="No space left"):
        adapter.write_beton(open_source(str(_npz(tmp_path / "other.npz", 80))), out, overwrite=True)
    assert (out.read_bytes(), _tree(tmp_path / "data.scores.zarr")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"keep_ratio": "0.5"}, TypeError, "keep_ratio"),
        ({"seed": "abc"}, TypeError, "seed"),
        ({"seed": 1.7}, TypeError, "seed"),
        ({"epochs": 2.5}, TypeError, "epochs"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"warmup_epochs": True}, TypeError, "warmup_epochs"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_types_are_refused_at_the_boundary_naming_the_parameter(store, kwargs, error, name):
    with pytest.raises(error, match=name):
        SADPSampler(store, **{"keep_ratio": 0.5, "epochs": 4, **kwargs})


def test_bad_epochs_and_runs_that_never_prune_are_flagged(store):
    sampler = SADPSampler(store, 0.5, epochs=4)
    with pytest.raises(TypeError, match="epoch"):
        sampler.set_epoch(1.5)
    with pytest.warns(RuntimeWarning, match="past the run's 4 epochs"):
        sampler.set_epoch(4)
    with pytest.warns(RuntimeWarning, match="no epoch of this run prunes"):
        SADPSampler(store, 0.5, epochs=2, warmup_epochs=2)


def test_wrap_refuses_to_drop_a_sampler_the_user_set(store):
    from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

    from sadp_data import wrap

    dataset = TensorDataset(torch.arange(1000))
    loader = DataLoader(dataset, batch_size=10, sampler=SubsetRandomSampler(range(100)))
    with pytest.raises(TypeError, match="SubsetRandomSampler"):
        wrap(loader, SADPSampler(store, 0.5, epochs=4))
    with pytest.warns(UserWarning, match="shuffle=True"):  # shuffling is replaced, and said so
        assert len(wrap(DataLoader(dataset, batch_size=10, shuffle=True), SADPSampler(store, 0.5, epochs=4))) > 0


def test_step_on_part_of_the_forwarded_batch_is_refused():
    pytest.importorskip("spikingjelly")
    import torch.nn.functional as F

    from sadp_data import SpikeAwareScorer
    from sadp_data.adapters.spikingjelly import MlpSNN, reset

    torch.manual_seed(0)
    model = MlpSNN(hidden=(16,), time_steps=4)
    scorer = SpikeAwareScorer(model)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = model(x)
    loss = F.cross_entropy(out, y, reduction="none")
    with pytest.raises(ValueError, match=r"input of shape \[8, 1, \.\.\.\] but the loss has 4 examples"):
        scorer.step(torch.arange(4), out[:4], y[:4], loss[:4])
    reset(model)
    out = model(x)  # the whole batch scores as before
    scores = scorer.scores(F.cross_entropy(out, y, reduction="none"), out, y)
    assert scores.shape == (8,) and torch.isfinite(scores).all()


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.slow
def test_forwards_without_step_do_not_keep_their_graphs():
    pytest.importorskip("spikingjelly")
    import gc

    import torch.nn.functional as F

    from sadp_data import SpikeAwareScorer
    from sadp_data.adapters.spikingjelly import ConvSNN, reset

    torch.manual_seed(0)
    model = ConvSNN()
    model.train()
    scorer = SpikeAwareScorer(model)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for scored_first in (False, True):  # before the first step(), and after one
        if scored_first:
            out = model(x)
            scorer.step(torch.arange(64), out, y, F.cross_entropy(out, y, reduction="none")).backward()
            reset(model)
            del out
        gc.collect()
        before = _rss_bytes()
        for _ in range(25):  # e.g. a validation loop without no_grad: about 150 MB of graph each
            model(x)
            reset(model)
        gc.collect()
        assert _rss_bytes() - before < 600 * 2**20
    out = model(x)  # the next step still scores its own batch
    scores = scorer.step(torch.arange(64), out, y, F.cross_entropy(out, y, reduction="none"))
    assert torch.isfinite(scores)


def _damaged_shards(tmp_path: Path, damage) -> tuple[Path, bytearray]:
    """Scored shards of 120 examples whose sample 70 had ``damage(data, start, size)`` applied to the
    bytes of its ``x.npy`` payload (every tar header stays valid); returns the folder and the shard's bytes."""
    import tarfile

    from sadp_data.cli import main
    from sadp_data.shards import ShardIndex

    out = tmp_path / "shards"
    assert main(["convert", str(_npz(tmp_path / "d.npz")), str(out), "--shard-size", "50", "--no-progress"]) == 0
    index = ShardIndex.load(out)
    victim = index.shard_path(int(index.offsets[70, 0]))
    with tarfile.open(victim) as archive:
        member = archive.getmember("000000070.x.npy")
    data = bytearray(victim.read_bytes())
    damage(data, member.offset_data, member.size)
    victim.write_bytes(bytes(data))
    return out, data


def _flip_last_byte(data: bytearray, start: int, size: int) -> None:
    data[start + size - 1] ^= 0xFF  # one pixel


def test_corrupted_sample_bytes_inside_a_shard_are_refused_not_delivered(tmp_path):
    pytest.importorskip("webdataset")
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.cli import main
    from sadp_data.shards import ShardError, ShardIndex

    out, _ = _damaged_shards(tmp_path, _flip_last_byte)
    store = ShardIndex.load(out).open_store()
    sampler = ScoredShards.sampler_for(out, store=store, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    with pytest.raises(ShardError, match=r"sample 000000070 .*checksum mismatch"):
        list(ScoredShards(out, sampler).decode())
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable samples"):
        assert len(list(ScoredShards(out, sampler, on_error="skip").decode())) == 119
    assert len(list(ScoredShards(out, sampler, verify=False).decode())) == 120  # checks off: delivered as is
    store.close()
    with pytest.raises(SystemExit):
        main(["info", str(out), "--verify"])


def test_decode_errors_are_named_and_skipped_with_on_error_skip(tmp_path):
    pytest.importorskip("webdataset")

    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.shards import ShardError, ShardIndex, sample_checksum

    def break_magic(data: bytearray, start: int, size: int) -> None:
        data[start : start + 6] = b"NOTNPY"  # the .npy magic: decoding fails

    out, data = _damaged_shards(tmp_path, break_magic)
    offsets = ShardIndex.load(out).offsets.copy()
    _, start, length, _ = (int(v) for v in offsets[70])
    offsets[70, 3] = sample_checksum(bytes(data[start : start + length]))  # bytes "as converted": checks pass
    np.save(out / "offsets.npy", offsets)
    store = ShardIndex.load(out).open_store()
    sampler = ScoredShards.sampler_for(out, store=store, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    with pytest.raises(ShardError, match=r"sample 000000070: cannot be decoded"):
        list(ScoredShards(out, sampler).decode())
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable samples"):
        assert len(list(ScoredShards(out, sampler, on_error="skip").decode())) == 119
    store.close()


def test_offsets_pointing_outside_the_shards_are_refused_on_load(tmp_path):
    from sadp_data.cli import main
    from sadp_data.shards import ShardError, ShardIndex

    out = tmp_path / "shards"
    assert main(["convert", str(_npz(tmp_path / "d.npz")), str(out), "--shard-size", "50", "--no-progress"]) == 0
    offsets = np.load(out / "offsets.npy")
    offsets[9, 0] = 7  # there are 3 shards
    np.save(out / "offsets.npy", offsets)
    with pytest.raises(ShardError, match="row 9"):
        ShardIndex.load(out)


def test_a_create_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    from sadp_data import store as store_module

    path = tmp_path / "s.zarr"
    real = store_module._write_empty

    def disk_full(target, *args):
        real(target, *args)  # the arrays are written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_empty", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ScoreStore.create(path, 100)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with ScoreStore.create(path, 100) as store:  # a retry works: nothing half-made blocks it
        store.update(np.arange(3), np.ones(3))


def test_a_read_only_cache_location_falls_back_to_no_cache_with_one_warning(monkeypatch):
    import numba

    from sadp_data.kernels import numba_cache

    def no_locator(**options):
        def decorate(function):
            if options.get("cache"):
                raise RuntimeError(f"cannot cache function {function.__name__!r}: no locator available")
            return function

        return decorate

    monkeypatch.setattr(numba, "njit", no_locator)
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        assert numba_cache.cache_usable() is False
    monkeypatch.undo()
    assert numba_cache.cache_usable() is True  # here the package's __pycache__ is writable


def test_samples_skipped_in_workers_are_counted_in_the_main_process(tmp_path):
    pytest.importorskip("webdataset")

    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.shards import ShardIndex

    out, _ = _damaged_shards(tmp_path, _flip_last_byte)
    store = ShardIndex.load(out).open_store()
    sampler = ScoredShards.sampler_for(out, store=store, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    loader = ScoredShards(out, sampler, on_error="skip").decode().to_tuple("x.npy", "y.cls").loader(16, num_workers=2)
    with pytest.warns(RuntimeWarning, match="the workers skipped 1 unreadable samples of 120"):
        delivered = sum(len(x) for x, *_ in loader)
    assert delivered == 119 and loader.skipped_count == 1
    store.close()
