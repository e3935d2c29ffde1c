"""`sadp-data index`: existing WebDataset shards become scored shards without being rewritten."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sadp_data.adapters.webdataset import ScoredShards

from sadp_data.cli import main
from sadp_data.indexing import index_shards
from sadp_data.shards import INDEX, OFFSETS, ForeignShardRootError, ShardError, ShardIndex

N, SHARD = 250, 64


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (N, 5, 4), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 10, N))
    out = tmp_path / "shards"
    assert main(["convert", str(tmp_path / "data.npz"), str(out), "--shard-size", str(SHARD), "--no-progress"]) == 0
    return out, x


def _all_samples(root: Path, workers: int = 0, **trust) -> tuple[np.ndarray, list]:
    sampler = ScoredShards.sampler_for(root, keep_ratio=1.0, epochs=2, warmup_epochs=0, schedule="constant", **trust)
    sampler.set_epoch(0)
    batches = list(ScoredShards(root, sampler, **trust).decode().to_tuple("x.npy").loader(16, num_workers=workers))
    indices = torch.cat([batch[1] for batch in batches]).numpy()
    return indices, [image for batch in batches for image in batch[0].numpy()]


def test_reindexing_converted_shards_reproduces_their_index_and_keeps_the_sidecar(converted) -> None:
    root, x = converted
    original = ShardIndex.load(root)
    store = original.open_store()
    store.update(np.arange(N), np.linspace(0.1, 2.0, N))
    store.close()
    meta = json.loads((root / INDEX).read_text())
    for name in (INDEX, OFFSETS, "train.wids.json"):
        (root / name).unlink()
    assert main(["index", str(root / "train-{000000..000003}.tar"), str(root), "--no-progress"]) == 0
    rebuilt = ShardIndex.load(root)
    np.testing.assert_array_equal(rebuilt.offsets, original.offsets)
    assert rebuilt.fingerprint == original.fingerprint and rebuilt.meta["shards"] == meta["shards"]
    assert rebuilt.shard_size == SHARD and rebuilt.consecutive_shards and "shard_root" not in rebuilt.meta
    reopened = rebuilt.open_store("r")  # the scores survived: the sidecar still belongs to the shards
    np.testing.assert_allclose(reopened.scores(), np.linspace(0.1, 2.0, N).astype(np.float32))
    reopened.close()
    indices, images = _all_samples(root)
    assert sorted(indices.tolist()) == list(range(N))
    np.testing.assert_array_equal(np.stack(images), x[indices])
    with pytest.raises(FileExistsError, match="--overwrite"):
        index_shards(sorted(root.glob("*.tar")), root, progress=False)


def test_shards_written_by_webdataset_without_index_cls_are_numbered_in_shard_order(tmp_path: Path, capsys) -> None:
    import webdataset as wds

    folder = tmp_path / "theirs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    written = [rng.integers(0, 255, (3, 3), dtype=np.uint8) for _ in range(47)]
    with wds.ShardWriter(str(folder / "data-%03d.tar"), maxcount=20, verbose=0) as writer:
        for number, image in enumerate(written):
            writer.write({"__key__": f"img{number:04d}", "x.npy": image, "txt": f"caption {number}"})
    out = tmp_path / "index"
    assert main(["index", str(folder / "data-{000..002}.tar"), str(out), "--no-progress"]) == 0
    assert f"--trust-shard-root {folder}" in capsys.readouterr().out  # how readers opt in to shards outside OUT
    index = ShardIndex.load(out, trusted_roots=[folder])
    assert index.num_examples == 47 and [s["nsamples"] for s in index.shards] == [20, 20, 7]
    assert index.meta["shard_root"] == "../theirs" and index.meta["fields"] == ["txt", "x.npy"]
    assert index.meta["name"] == "data" and not index.keys_are_indices
    with pytest.raises(ForeignShardRootError, match="trusted_roots"):  # shards outside OUT: the reader opts in
        ScoredShards.sampler_for(out)
    indices, images = _all_samples(out, workers=2, trusted_roots=[folder])
    assert sorted(indices.tolist()) == list(range(47))  # every sample once, numbered in shard order
    for number, image in zip(indices.tolist(), images, strict=True):
        np.testing.assert_array_equal(image, written[number])


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    import tarfile

    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_bad_shards_are_refused_with_the_shard_and_sample_named(tmp_path: Path) -> None:
    _tar(tmp_path / "split-0.tar", [("a.x", b"1"), ("b.x", b"2"), ("a.y", b"3")])
    with pytest.raises(ShardError, match=r"split-0.tar: the members of sample 'a' are not consecutive"):
        index_shards(tmp_path / "split-0.tar", tmp_path / "o1", progress=False)
    _tar(tmp_path / "dup-0.tar", [("a.index.cls", b"0"), ("b.index.cls", b"0")])
    with pytest.raises(ShardError, match=r"dup-0.tar: sample 'b' has index.cls 0, already used"):
        index_shards(tmp_path / "dup-0.tar", tmp_path / "o2", progress=False)
    _tar(tmp_path / "mixed-0.tar", [("a.index.cls", b"0"), ("b.x", b"1")])
    with pytest.raises(ShardError, match=r"mixed-0.tar: some samples have index.cls and some do not"):
        index_shards(tmp_path / "mixed-0.tar", tmp_path / "o3", progress=False)
    _tar(tmp_path / "range-0.tar", [("a.index.cls", b"5")])
    with pytest.raises(ShardError, match=r"range-0.tar: sample 'a' has index.cls 5, outside \[0, 1\)"):
        index_shards(tmp_path / "range-0.tar", tmp_path / "o4", progress=False)
    _tar(tmp_path / "missing-6.tar", [("a.x", b"1")])
    with pytest.raises(FileNotFoundError, match=r"missing-7\.tar does not exist"):
        index_shards(tmp_path / "missing-{6..7}.tar", tmp_path / "o5", progress=False)
    assert not (tmp_path / "o1" / INDEX).exists()  # nothing half-written for a refused shard


def test_a_sidecar_of_other_data_is_never_overwritten(converted, tmp_path: Path) -> None:
    root, _ = converted
    other = tmp_path / "other"
    _tar(tmp_path / "one-0.tar", [("a.x", b"1")])
    other.mkdir()
    (root / "scores.zarr").rename(other / "scores.zarr")  # a sidecar of 250 examples beside a 1-sample shard
    with pytest.raises(FileExistsError, match="holds scores of other data"):
        index_shards(tmp_path / "one-0.tar", other, progress=False)
    assert (other / "scores.zarr").exists()
