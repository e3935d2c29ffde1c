"""`sadp-data index`: existing WebDataset shards become scored shards without being rewritten."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data.adapters.webdataset import ScoredShards
from sadp_data.cli import main
from sadp_data.shards import INDEX, OFFSETS, ForeignShardRootError, ShardError, ShardIndex
from sadp_data.shards._tar import parse_sample
from sadp_data.shards.indexing import index_shards

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


def _member(name: str, data: bytes = b"", kind: bytes = b"0", link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = len(data), kind, link
    return info


def _tar_of(members: list[tuple[str, bytes] | tarfile.TarInfo]) -> bytes:
    """A tar (tarfile's default pax format) of ``(name, data)`` members and ready ``TarInfo``s (no data)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for item in members:
            info = item if isinstance(item, tarfile.TarInfo) else _member(*item)
            archive.addfile(info, io.BytesIO(item[1]) if isinstance(item, tuple) else None)
    return buffer.getvalue()


def _three_samples() -> list[tuple[str, bytes]]:
    return [(f"00000000{n}.{field}", f"{field}{n}".encode() * 40) for n in range(3) for field in ("x.bin", "y.cls")]


def _delivered(out: Path) -> list[dict]:
    """Every sample of an indexed folder read back by byte offset (``ScoredShards``, no decoding), in index order.
    The shards lie beside ``out``, which the reader is told to trust (``shard_root`` is ``..``)."""
    trust = {"trusted_roots": [out.parent]}
    sampler = ScoredShards.sampler_for(out, keep_ratio=1.0, warmup_epochs=0, schedule="constant", **trust)
    sampler.set_epoch(0)
    samples = sorted(ScoredShards(out, sampler, **trust), key=lambda sample: sample["__index__"])
    sampler.store.close()
    return [{k: v for k, v in sample.items() if k not in ("__index__", "__weight__")} for sample in samples]


def _webdataset_reads(path: Path) -> list[dict]:
    """What webdataset's own tar reader delivers for ``path`` (without its ``__url__``)."""
    from webdataset.tariterators import tarfile_samples

    return [{k: v for k, v in s.items() if k != "__url__"} for s in tarfile_samples([{"url": str(path)}])]


def test_a_shard_cut_off_inside_a_member_header_is_refused_naming_the_byte(tmp_path: Path) -> None:
    data = _tar_of(_three_samples())
    cut = 8 * tarfile.BLOCKSIZE + 100  # sample 2's first header starts at block 8
    (tmp_path / "cut-0.tar").write_bytes(data[:cut])
    with pytest.raises(ShardError, match=rf"cut-0\.tar: cut off at byte {8 * tarfile.BLOCKSIZE} inside a tar header"):
        index_shards(tmp_path / "cut-0.tar", tmp_path / "out", progress=False)


def test_a_field_held_twice_in_a_sample_is_refused_at_index_and_read_time(tmp_path: Path) -> None:
    members = [*_three_samples(), ("000000002.y.cls", b"other")]
    (tmp_path / "twice-0.tar").write_bytes(_tar_of(members))
    with pytest.raises(ValueError, match="duplicate file name"):  # webdataset refuses it too
        _webdataset_reads(tmp_path / "twice-0.tar")
    with pytest.raises(ShardError, match=r"twice-0\.tar.*sample '000000002' holds field 'y\.cls' twice"):
        index_shards(tmp_path / "twice-0.tar", tmp_path / "out", progress=False)
    sample = _tar_of([("000000002.y.cls", b"1"), ("000000002.x.bin", b"2"), ("000000002.Y.CLS", b"3")])
    with pytest.raises(ShardError, match=r"shard s, sample 2: .*sample '000000002' holds field 'y\.cls' twice"):
        parse_sample(sample[: 6 * tarfile.BLOCKSIZE], "shard s, sample 2")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_refused_at_index_time_naming_the_member(tmp_path: Path, kind: bytes) -> None:
    members = [*_three_samples()[:4], _member("000000001.z.bin", kind=kind, link="000000001.x.bin")]
    (tmp_path / "link-0.tar").write_bytes(_tar_of(members))
    with pytest.raises(ShardError, match=r"link-0\.tar, member '000000001\.z\.bin' at byte \d+: is a .*link"):
        index_shards(tmp_path / "link-0.tar", tmp_path / "out", progress=False)


def test_member_names_are_split_into_key_and_field_as_webdataset_splits_them(tmp_path: Path) -> None:
    members = [
        ("./000000000.x.npy", b"a" * 700),
        ("./000000000.y.cls", b"0"),
        ("v1.0/000000001.x.npy", b"b" * 10),
        ("v1.0/000000001.Y.CLS", b"1"),
        ("v1.0/", b""),  # a directory member, which webdataset skips
        ("__meta__", b"{}"),  # a metadata member, which webdataset skips
        ("d.e/f/000000002.tar.gz", b"c"),
    ]
    members[4] = _member("v1.0/", kind=tarfile.DIRTYPE)
    (tmp_path / "names-0.tar").write_bytes(_tar_of(members))
    index = index_shards(tmp_path / "names-0.tar", tmp_path / "out", progress=False)
    assert index.meta["fields"] == ["tar.gz", "x.npy", "y.cls"]
    expected = _webdataset_reads(tmp_path / "names-0.tar")
    assert [sample["__key__"] for sample in expected] == ["./000000000", "v1.0/000000001", "d.e/f/000000002"]
    assert _delivered(tmp_path / "out") == expected


def _huge() -> bytes:
    """A member header declaring 8 GiB (base-256 size field) followed by a little data."""
    info = _member("000000000.x.bin")
    info.size = 8 << 30
    return info.tobuf(tarfile.GNU_FORMAT) + b"x" * 1000


def _gzipped() -> bytes:
    import gzip

    return gzip.compress(_tar_of(_three_samples()))


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        (
            lambda: _tar_of(_three_samples())[: 5 * tarfile.BLOCKSIZE + 30],
            r"member '000000001.x.bin' at byte 2048: declares 240 bytes .* ends at byte 2590",
        ),
        (_huge, r"declares 8589934592 bytes"),
        (lambda: np.random.default_rng(5).bytes(3000), r"not a tar archive"),
        (lambda: b"", r"is empty"),
        (_gzipped, r"gzip-compressed.*decompress it"),
    ],
    ids=["cut-inside-data", "8-GiB-header", "random-bytes", "empty", "tar.gz"],
)
def test_unreadable_shards_raise_shard_error_naming_the_shard(tmp_path: Path, shard, message: str) -> None:
    (tmp_path / "bad-0.tar").write_bytes(shard())
    with pytest.raises(ShardError, match=rf"shard {tmp_path}/bad-0\.tar\b.*{message}"):
        index_shards(tmp_path / "bad-0.tar", tmp_path / "out", progress=False)
