"""Fuzzing the tar shard reader against webdataset's own: the same samples, or a ``ShardError`` naming the shard.

Generated WebDataset tars (ustar, GNU and pax formats; long, dotted, ``./``-prefixed, upper-case and
non-ASCII names; directories, links, FIFOs, metadata members, global pax headers anywhere) are mutated at
the member level (a member duplicated, two swapped, one renamed) and at the byte level (truncated
inside a header, inside data, inside padding, at a member boundary or in the end-of-archive blocks;
bytes flipped; garbage appended; gzip; random bytes). The shard is then indexed
(``shard_samples``, what ``index_shards`` runs per shard) and every sample read back from its byte
span (``parse_sample``, what ``ScoredShards`` runs per sample). The invariant: either a
``ShardError`` names the shard, or the samples equal, in order, what webdataset's reader
(``tar_file_expander`` + ``group_by_keys``, as in ``webdataset.WebDataset``) delivers for the same
bytes. A few examples run end to end (``index_shards`` on a file, then ``ScoredShards``).

CI runs ``SADP_FUZZ_EXAMPLES`` (default 60) × 25 examples of the main property (1,500), × 3 end to
end (180) and × 10 of each of the two small ones (600 each): 2,880 in all, about 20 s. A longer run:
``SADP_FUZZ_EXAMPLES=600`` (15,000 of the main property, about 3 minutes); ``SADP_FUZZ_RANDOM=1``
draws new inputs instead of CI's fixed ones.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sadp_data.shards import ShardError  # noqa: E402
from sadp_data.shards._tar import _plain_header, member_field, parse_sample, shard_samples  # noqa: E402

EXAMPLES = int(os.environ.get("SADP_FUZZ_EXAMPLES", "60"))


def _settings(scale: float) -> settings:
    return settings(
        max_examples=max(1, int(EXAMPLES * scale)),
        deadline=None,
        derandomize=os.environ.get("SADP_FUZZ_RANDOM") is None,  # CI: the same inputs every run
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


KEYS = ["000000001", "000000002", "./000000003", "v1.0/000000004", "a/b.c/k", "K", "ключ", "d" * 120 + "/long"]
GOOD_FIELDS = ["x.npy", "y.cls", "tar.gz", "txt"]
FIELDS = [*GOOD_FIELDS, "Y.CLS", "", "__key__", "a/b"]
KINDS = [tarfile.REGTYPE] * 12 + [tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
#: Members webdataset skips: metadata, a directory, global pax headers (harmless, then renaming later members).
EXTRAS = [
    ("__meta__", tarfile.REGTYPE, b"{}"),
    ("v1.0", tarfile.DIRTYPE, b""),
    ("pax_global_header", tarfile.XGLTYPE, b"18 comment=commit\n"),
    ("pax_global_header", tarfile.XGLTYPE, b"10 path=x\n"),
]
GLOBALS = [None, None, {"comment": "commit 1"}, {"path": "renamed.x"}, {"hdrcharset": "BINARY"}]


@st.composite
def members(draw) -> list[tuple[str, bytes, bytes]]:
    """``(name, type, data)`` of a WebDataset-like tar's members (half of the time only good ones), then
    perhaps a directory or metadata member added, and a member duplicated, swapped with another or renamed."""
    good = draw(st.booleans())
    fields = st.lists(st.sampled_from(GOOD_FIELDS), min_size=1, max_size=3, unique=True) if good else None
    items = []
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)):
        for field in draw(fields if good else st.lists(st.sampled_from(FIELDS), max_size=3)):
            kind = tarfile.REGTYPE if good else draw(st.sampled_from(KINDS))
            size = draw(st.sampled_from([0, 1, 100, 511, 512, 513, 1100]))
            items.append((f"{key}.{field}" if field else key, kind, bytes([len(items) % 251]) * size))
    extra = draw(st.sampled_from([None, None, None, *EXTRAS]))
    if extra is not None:
        items.insert(draw(st.integers(0, len(items))), extra)
    action = draw(st.sampled_from(["none", "none", "none", "duplicate", "swap", "rename"])) if items else "none"
    first, second = (draw(st.integers(0, len(items) - 1)) for _ in range(2)) if items else (0, 0)
    if action == "duplicate":
        items.insert(second, items[first])
    elif action == "swap":
        items[first], items[second] = items[second], items[first]
    elif action == "rename":
        items[first] = (draw(st.sampled_from(KEYS)) + "." + draw(st.sampled_from(FIELDS)), *items[first][1:])
    return items


def _write(items: list[tuple[str, bytes, bytes]], form: int, fraction: bool, globals_: dict | None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=form, pax_headers=globals_ or {}) as archive:
        for name, kind, data in items:
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, 1.5 if fraction else 0
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "000000001.x.npy"
            info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.XGLTYPE) else 0
            archive.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def _offsets(data: bytes) -> list[int]:
    """Where each kind of truncation cuts: inside headers, data and padding, at boundaries, in the end blocks."""
    cuts = [0, 1, len(data) - 1]
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                padded = -(-member.size // 512) * 512 if member.isreg() else 0
                cuts += [member.offset, member.offset + 100, member.offset_data - 1, member.offset_data + padded]
                if member.size:
                    cuts += [member.offset_data + member.size // 2, member.offset_data + member.size]
            end = archive.offset
    except tarfile.ReadError:  # e.g. a global header and no member
        return cuts
    return [*cuts, end + 1, end + 511, end + 512, end + 1024]


@st.composite
def shards(draw) -> bytes:
    """Tar bytes: a generated tar, perhaps cut, flipped, extended, compressed, or random bytes instead."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=3000))
    form = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    items = draw(members())
    globals_ = draw(st.sampled_from(GLOBALS)) if form == tarfile.PAX_FORMAT else None
    try:
        data = _write(items, form, draw(st.booleans()), globals_)
    except ValueError:  # a name ustar cannot hold
        data = _write(items, tarfile.PAX_FORMAT, False, None)
    action = draw(st.sampled_from(["none"] * 4 + ["cut", "cut", "flip", "append", "gzip"]))
    if action == "cut":
        data = data[: max(0, min(len(data), draw(st.sampled_from(_offsets(data)))))]
    elif action == "flip":
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
    elif action == "append":
        data += draw(st.binary(min_size=1, max_size=600))
    elif action == "gzip":
        data = gzip.compress(data)
    return data


def _webdataset(data: bytes) -> list[dict] | Exception:
    """What webdataset's reader delivers for ``data`` (its exception, if it raises)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        samples = list(group_by_keys(tar_file_expander([{"url": "shard", "stream": io.BytesIO(data)}])))
    except Exception as error:
        return error
    return [{key: value for key, value in sample.items() if key != "__url__"} for sample in samples]


def _ours(data: bytes, path: str) -> list[dict]:
    """Index ``data`` and read every sample back from its byte span, as ``ScoredShards`` does."""
    return [
        parse_sample(data[span.start : span.stop], f"shard {path}, sample {n}")
        for n, span in enumerate(shard_samples(data, path))
    ]


#: What an error says without its numbers and names (to count kinds of refusals in hypothesis's statistics).
_GIST = re.compile(r"[0-9]+|'.*?'|\[.*?\]|\(.*?\)")


@pytest.mark.slow
@_settings(25)
@given(data=shards())
def test_indexed_samples_read_back_as_webdataset_reads_them_or_the_shard_is_refused(data):
    try:
        ours = _ours(data, "fuzz-0.tar")
    except ShardError as error:
        assert "fuzz-0.tar" in str(error)
        event("refused: " + _GIST.sub("#", str(error))[:70])
        return
    event(f"delivered {min(len(ours), 3)}{'+' if len(ours) >= 3 else ''} samples")
    assert _webdataset(data) == ours


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tarfuzz")


@_settings(3)
@given(data=shards())
def test_index_shards_and_scored_shards_deliver_what_webdataset_delivers(folder, data):
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.shards.indexing import index_shards

    root = Path(tempfile.mkdtemp(dir=folder))
    (root / "fuzz-0.tar").write_bytes(data)
    try:
        index_shards(root / "fuzz-0.tar", root / "out", progress=False)
    except ShardError as error:
        assert str(root / "fuzz-0.tar") in str(error)
        event("refused")
        return
    event("delivered")
    trust = {"trusted_roots": [root]}  # the shard lies beside the index folder (shard_root "..")
    sampler = ScoredShards.sampler_for(root / "out", keep_ratio=1.0, warmup_epochs=0, schedule="constant", **trust)
    sampler.set_epoch(0)
    delivered = sorted(ScoredShards(root / "out", sampler, **trust), key=lambda sample: sample["__index__"])
    sampler.store.close()
    hidden = ("__index__", "__weight__")
    assert _webdataset(data) == [{k: v for k, v in s.items() if k not in hidden} for s in delivered]


@_settings(10)
@given(name=st.text(st.sampled_from("ab./_X\u00e9\n"), max_size=12))
def test_the_key_field_split_is_webdatasets(name):
    from webdataset.tariterators import base_plus_ext

    key, suffix = base_plus_ext(name)
    try:
        named = member_field(name, tarfile.REGTYPE, 0, "shard s")
    except ShardError as error:  # no extension, or a reserved field name
        assert key is None or re.fullmatch(r"__.+__", suffix.lower())
        assert "shard s" in str(error)
        return
    assert named is None or named == (key, suffix.lower())


@_settings(10)
@given(
    name=st.text(st.sampled_from("ab./_é"), max_size=140),
    size=st.integers(0, 8 << 30),
    kind=st.sampled_from(KINDS),
    form=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]),
    flip=st.tuples(st.integers(0, 511), st.integers(0, 255)),
)
def test_the_fast_header_path_reads_what_tarfile_reads(name, size, kind, form, flip):
    """Every header the fast path accepts (generated, then one byte changed), tarfile reads the same way."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    try:
        header = bytearray(info.tobuf(form)[-512:])
    except ValueError:  # a name or size this format cannot hold
        return
    for candidate in (bytes(header), bytes(header[: flip[0]]) + bytes([flip[1]]) + bytes(header[flip[0] + 1 :])):
        fast = _plain_header(candidate)
        if fast is not None:
            read = tarfile.TarInfo.frombuf(candidate, "utf-8", "surrogateescape")
            assert fast == (read.name, read.size, read.type)
