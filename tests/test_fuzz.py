"""Fuzzing every reader that parses bytes from disk: data or our own error, never a crash or garbage.

Random bytes and mutations (byte flips, truncations, insertions) of valid files go through the IDX
reader, the N-MNIST event reader and label lists, tar sample headers (``parse_sample``, what the
WebDataset adapter reads through the offsets index), ``index.json`` and ``offsets.npy``
(``ShardIndex.load``), ``.npz`` sources, and the score sidecar's metadata (``ScoreStore.open``).
Each must return data that passes its own checks or raise the error class documented for it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sadp_data.shards import ShardError, ShardIndex  # noqa: E402
from sadp_data.shards._tar import parse_sample  # noqa: E402
from sadp_data.sources import open_source  # noqa: E402
from sadp_data.sources.datasets import load_idx  # noqa: E402
from sadp_data.sources.events.nmnist import read, read_labels  # noqa: E402
from sadp_data.store import ScoreStore, ScoreStoreError  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("SADP_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=os.environ.get("SADP_FUZZ_RANDOM") is None,  # CI: the same inputs every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` with a few flips, a truncation or an insertion (or random bytes instead)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=4 * len(original) + 16))
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    action = draw(st.sampled_from(["none", "truncate", "insert"]))
    if action == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


def _idx_bytes() -> bytes:
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    return b"\0\0\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in images.shape) + images.tobytes()


@FUZZ
@given(data=mutated(_idx_bytes()), compressed=st.booleans())
def test_idx_reader(tmp_path, data, compressed):
    path = tmp_path / ("f.gz" if compressed else "f")
    path.write_bytes(gzip.compress(data) if compressed and len(data) % 2 else data)
    try:
        array = load_idx(path)
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert array.size * array.itemsize + 4 + 4 * array.ndim == len(data)


def _events_bytes() -> bytes:
    return bytes([3, 4, 0x80, 0, 10, 5, 6, 0x00, 1, 0, 33, 33, 0x81, 0, 0])


@FUZZ
@given(data=mutated(_events_bytes()))
def test_nmnist_event_reader(tmp_path, data):
    path = tmp_path / "r.bin"
    path.write_bytes(data)
    try:
        events = read(path)
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert events.shape[0] * 5 == len(data)
    assert (events["x"] < 34).all() and (events["y"] < 34).all() and (np.diff(events["t"]) >= 0).all()


@pytest.mark.slow
@FUZZ
@given(text=st.text(max_size=80))
def test_nmnist_label_lists(tmp_path, text):
    (tmp_path / "train1K.txt").write_text("#id\tlabel\n" + text)
    try:
        pairs = read_labels(tmp_path)
    except ValueError:
        return
    assert pairs.dtype == np.int64 and (pairs.size == 0 or pairs.shape[1] == 2)


def _sample_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, payload in (("000000001.x.npy", b"\x93NUMPY" + bytes(40)), ("000000001.y.cls", b"7")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()[: 4 * tarfile.BLOCKSIZE]


@FUZZ
@given(data=mutated(_sample_bytes()))
def test_tar_sample_headers(data):
    try:
        sample = parse_sample(data, "shard 0, sample 1")
    except ShardError as error:
        assert "shard 0, sample 1" in str(error)
        return
    assert all(isinstance(value, bytes) for key, value in sample.items() if key != "__key__")


@FUZZ
@given(data=mutated(_sample_bytes()))
def test_the_fast_tar_header_path_agrees_with_tarfile(data):
    """Every header the fast path accepts, tarfile reads the same way (name, size, type)."""
    from sadp_data.shards._tar import _plain_header

    for position in range(0, len(data) - tarfile.BLOCKSIZE + 1, tarfile.BLOCKSIZE):
        header = data[position : position + tarfile.BLOCKSIZE]
        fast = _plain_header(header)
        if fast is not None:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            assert fast == (info.name, info.size, info.type)


def test_long_ustar_names_use_the_prefix_field():
    from sadp_data.shards._tar import _plain_header

    name = "a" * 120 + "/000000001.x.npy"
    info = tarfile.TarInfo(name)
    info.size = 3
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert _plain_header(header) == (name, 3, tarfile.REGTYPE)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from sadp_data.shards.writer import write_shards

    folder = tmp_path_factory.mktemp("fuzz")
    np.savez(folder / "d.npz", x=np.zeros((12, 2), np.float32), y=np.arange(12) % 3)
    write_shards(open_source(str(folder / "d.npz")), folder / "shards", shard_size=5, progress=False)
    return folder / "shards"


@FUZZ
@given(data=st.data())
def test_index_json_and_offsets(shards, tmp_path, data):
    import shutil

    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "shards"
    shutil.copytree(shards, root)
    target = data.draw(st.sampled_from(["index.json", "offsets.npy"]))
    original = (root / target).read_bytes()
    if target == "index.json" and data.draw(st.booleans()):
        meta = json.loads(original)
        key = data.draw(st.sampled_from(sorted(meta)))
        meta[key] = data.draw(st.one_of(st.none(), st.integers(-5, 50), st.text(max_size=5), st.just([{}])))
        (root / target).write_text(json.dumps(meta))
    else:
        (root / target).write_bytes(data.draw(mutated(original)))
    try:
        index = ShardIndex.load(root)
    except ShardError as error:
        assert str(root) in str(error)
        return
    assert index.offsets.shape in ((index.num_examples, 3), (index.num_examples, 4))
    assert sum(s["nsamples"] for s in index.shards) == index.num_examples


@FUZZ
@given(data=st.data())
def test_npz_sources(tmp_path, data):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 2), np.float32), y=np.arange(4))
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "s.npz"
    path.write_bytes(data.draw(mutated(buffer.getvalue())))
    try:
        source = open_source(str(path))
    except ValueError as error:
        assert str(path) in str(error)
        return
    first = source[0]  # a source that opens delivers whole examples of the declared arrays
    assert set(first) == {"x.npy", "y.cls"} and first["x.npy"].shape == (2,)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_sidecar_metadata(tmp_path, data):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "s.zarr"
    with ScoreStore.create(path, 10, chunk_size=4) as store:
        store.update(np.arange(10), np.linspace(0.5, 5, 10))
    target = path / data.draw(st.sampled_from(["zarr.json", "score/zarr.json", "seen/zarr.json"]))
    target.write_bytes(data.draw(mutated(target.read_bytes())))
    try:
        store = ScoreStore.open(path, "r")
    except ScoreStoreError:
        return
    scores = store.scores()
    assert scores.shape == (store.num_examples,) and np.isfinite(scores).all() and (scores >= 0).all()
    store.close()
