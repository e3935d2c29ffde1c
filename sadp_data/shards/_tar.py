"""How a shard's tar bytes become samples: one rule for indexing a whole shard and for reading one sample.

``shard_samples`` walks a whole shard for ``index_shards`` (where each sample's bytes lie);
``parse_sample`` splits the bytes of one sample, read at its indexed byte offset, into its fields.
Both name members through ``member_field``, which follows webdataset's reader
(``webdataset.tariterators``), so a byte-offset read delivers what ``webdataset.WebDataset`` delivers
for the same tar:

* a regular file ``{key}.{field}`` is field ``field`` (lower-cased) of sample ``key``, split as
  webdataset's ``base_plus_ext`` splits it: the key runs to the first dot after the last slash
  (``./000000001.x.npy`` is key ``./000000001``, field ``x.npy``; ``v1.0/a.b.c`` is key ``v1.0/a``);
* directories and ``__name__`` metadata members are skipped, as webdataset skips them.

What a byte-offset reader cannot reproduce, and what webdataset would silently deliver less of, is
refused with ``ShardError`` naming the shard, member and byte offset: links and other special
members, sparse files, names without an extension, field names ``__x__`` (readers add such keys), a
field held twice in a sample (webdataset refuses that too), a sample's members not consecutive,
global pax headers that change members, compressed tars, and truncation anywhere: in a header, in
data or padding, or a missing end-of-archive block (trailing bytes after it must be zeros).

Trade-off: ``parse_sample`` reads plain ustar headers (what ``ShardWriter`` writes) itself, about 20×
faster than ``tarfile``; any other header goes through ``tarfile``, which decides.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field

from .errors import ShardError

#: webdataset's ``base_plus_ext``: ``(key, extension)``; ``tests/test_fuzz.py`` checks they agree.
_KEY_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
#: Members webdataset's ``tar_file_iterator`` skips as metadata.
_META = re.compile(r"__[^/]*__($|/)")
#: Field names of the form readers use for their own keys (``__key__``, ``__index__``, webdataset's ``__url__``).
_RESERVED = re.compile(r"__.+__")
_FIELD_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
#: Header types that change the next member's metadata: parsed by ``tarfile`` instead of the fast path.
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
#: Global pax records that leave members' names, sizes and data alone (``git archive`` writes ``comment``).
_HARMLESS_GLOBALS = {"comment", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.GNUTYPE_SPARSE: "sparse file"}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_REWRITE = "rewrite the shard with webdataset's ShardWriter"


def member_field(name: str, kind: bytes, size: int, where: str) -> tuple[str, str] | None:
    """``(key, field)`` of a tar member, ``None`` for one that webdataset skips (a directory or
    ``__name__`` metadata); ``ShardError`` (``where``: shard and member) for one this library refuses."""
    if kind == tarfile.DIRTYPE:
        return None
    if kind not in _FIELD_TYPES:
        what = _KINDS.get(kind, f"member of tar type {kind!r}")
        raise ShardError(f"{where}: is a {what}, not a regular file; byte-offset reads need plain files: {_REWRITE}")
    if size < 0:
        raise ShardError(f"{where}: declares {size} bytes; the shard is corrupt: {_REWRITE}")
    if name.startswith("__") and (_META.match(name) or ("/" not in name and name.endswith("__"))):
        return None
    match = _KEY_FIELD.match(name)
    if match is None:
        raise ShardError(f"{where}: has no extension (webdataset names members key.field): {_REWRITE}")
    suffix = match.group(2).lower()
    if suffix.startswith("__") and _RESERVED.fullmatch(suffix):
        raise ShardError(f"{where}: field {suffix!r} is reserved (readers add __key__, __index__, ...): {_REWRITE}")
    return match.group(1), suffix


def _put(fields: dict, key: str, name: str, value: object, where: str) -> None:
    """Add field ``name`` of sample ``key`` to ``fields``, refusing a field held twice (webdataset refuses it)."""
    if name in fields:
        raise ShardError(f"{where}: sample {key!r} holds field {name!r} twice: {_REWRITE} with one member per field")
    fields[name] = value


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _check_globals(pax_headers: dict[str, str], where: str) -> None:
    """Refuse global pax records that would change members read on their own (their name, size, charset)."""
    changed = sorted(set(pax_headers) - _HARMLESS_GLOBALS)
    if changed:
        raise ShardError(
            f"{where}: a global pax header sets {changed}, which changes every later member; samples could not be "
            f"read on their own: {_REWRITE}"
        )


@dataclass
class SampleSpan:
    """One sample of a shard: its key, the bytes ``[start, stop)`` of its members, and where each field's
    data lies in the shard (``data[fields["y.cls"]]``)."""

    key: str
    start: int
    stop: int
    fields: dict[str, slice] = field(default_factory=dict)


def shard_samples(data: bytes, path: str) -> list[SampleSpan]:
    """Every sample of the tar shard ``data`` (named ``path`` in errors), in tar order (see the module docstring).

    Guarantees the whole shard is a readable, uncompressed, complete tar whose samples ``parse_sample``
    reads back as webdataset reads them, or raises ``ShardError`` naming ``path``, the member and the byte.
    """
    if not data:
        raise ShardError(f"shard {path} is empty (0 bytes): copy or write it again")
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except tarfile.TarError as error:
        kind = next((kind for magic, kind in _COMPRESSED.items() if data.startswith(magic)), None)
        if kind is not None:
            raise ShardError(
                f"shard {path} is {kind}-compressed; byte-offset reads need an uncompressed tar: decompress it "
                "(the samples' bytes stay the same) and index the .tar"
            ) from error
        raise ShardError(f"shard {path}: not a tar archive (byte 0: {error}); index only tar shards") from error
    spans: list[SampleSpan] = []
    finished: set[str] = set()
    with archive:
        while True:
            position = archive.offset
            try:
                member = archive.next()
            except tarfile.TarError as error:
                raise ShardError(f"shard {path}: corrupt tar at byte {position} ({error}): {_REWRITE}") from error
            if member is None:
                break
            archive.members.clear()  # tarfile keeps every member otherwise
            where = f"shard {path}, member {member.name!r} at byte {member.offset}"
            _check_globals(archive.pax_headers, where)
            if member.sparse is not None:
                raise ShardError(f"{where}: is a sparse file; byte-offset reads need plain files: {_REWRITE}")
            named = member_field(member.name, member.type, member.size, where)
            stop = member.offset_data + (_padded(member.size) if member.type in _FIELD_TYPES else 0)
            if stop > len(data):
                raise ShardError(
                    f"{where}: declares {member.size} bytes but the shard ends at byte {len(data)}: it is truncated "
                    "or corrupt; copy or write it again"
                )
            if named is None:
                continue
            key, name = named
            if not spans or spans[-1].key != key:
                if key in finished:
                    raise ShardError(f"shard {path}: the members of sample {key!r} are not consecutive; {_REWRITE}")
                if spans:
                    finished.add(spans[-1].key)
                spans.append(SampleSpan(key, member.offset, stop))
            span = spans[-1]
            span.stop = stop
            _put(span.fields, key, name, slice(member.offset_data, member.offset_data + member.size), where)
    _check_end(data, archive.offset, path)
    return spans


def _check_end(data: bytes, position: int, path: str) -> None:
    """After the last member, at ``position``: an end-of-archive (zero) block, then only zeros."""
    rest = data[position:]
    if len(rest) >= tarfile.BLOCKSIZE and rest[: tarfile.BLOCKSIZE].count(0) == tarfile.BLOCKSIZE:
        if rest.count(0) != len(rest):
            raise ShardError(
                f"shard {path}: non-zero bytes after the end-of-archive block at byte {position} (tars joined "
                f"together?); {_REWRITE}"
            )
    elif len(rest) >= tarfile.BLOCKSIZE:
        raise ShardError(f"shard {path}: corrupt tar header at byte {position} (not a header): {_REWRITE}")
    elif rest.count(0) != len(rest):
        raise ShardError(
            f"shard {path}: cut off at byte {position} inside a tar header ({len(rest)} of {tarfile.BLOCKSIZE} "
            "bytes): the shard is truncated; copy or write it again"
        )
    else:
        raise ShardError(
            f"shard {path}: ends at byte {len(data)} without the tar end-of-archive block: the shard is truncated; "
            "copy or write it again"
        )


def parse_sample(buffer: bytes, where: str) -> dict[str, bytes]:
    """Split the bytes of one sample's tar members into ``{"__key__": key, field: bytes}`` (``member_field``'s rule).

    ``where`` (shard and offset) is used in error messages.
    """
    sample: dict[str, bytes] = {}
    position = 0
    while position < len(buffer):
        header = buffer[position : position + tarfile.BLOCKSIZE]
        member = _plain_header(header)
        if member is None:  # anything but a plain ustar header with a valid checksum: tarfile decides
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.TarError as error:
                raise ShardError(f"{where}: corrupt tar header at +{position}: {error}") from error
            member = (info.name, info.size, info.type)
        name, size, kind = member
        if kind in _EXTENDED_HEADERS:  # pax or GNU long-name headers (e.g. a fractional mtime)
            return _parse_extended(buffer, where)
        named = member_field(name, kind, size, f"{where}: member {name!r} at +{position}")
        start = position + tarfile.BLOCKSIZE
        position = start + (_padded(size) if kind in _FIELD_TYPES else 0)  # tarfile skips no data of a directory
        if named is not None:
            data = buffer[start : start + size]
            if len(data) != size:
                raise ShardError(f"{where}: member {name} is truncated ({len(data)} of {size} bytes)")
            _add(sample, named, name, data, where)
    return sample


def _add(sample: dict, named: tuple[str, str], member: str, data: bytes, where: str) -> None:
    """Add a member's data to ``sample`` (``__key__`` set by its first member), refusing another sample's member."""
    key, name = named
    if sample.setdefault("__key__", key) != key:
        raise ShardError(f"{where}: member {member} belongs to another sample than {sample['__key__']}")
    _put(sample, key, name, data, where)


def _plain_header(header: bytes) -> tuple[str, int, bytes] | None:
    """``(name, size, type)`` of a plain POSIX ustar header of a file whose checksum is right, else ``None``.

    What webdataset's ``ShardWriter`` writes, parsed 20× faster than ``tarfile.TarInfo.frombuf``
    (which builds every field). Anything else (other types, base-256 or signed numbers, v7 or GNU
    headers, bad checksums) returns ``None`` so that ``tarfile`` reads (or rejects) it.
    """
    if len(header) != tarfile.BLOCKSIZE or header[257:265] != b"ustar\x0000" or header[156:157] != tarfile.REGTYPE:
        return None
    stored, size = _octal(header[148:156]), _octal(header[124:136])
    if stored is None or size is None or stored != sum(header) - sum(header[148:156]) + 8 * 32:
        return None
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    text = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
    return text, size, tarfile.REGTYPE


def _octal(field: bytes) -> int | None:
    """A NUL- or space-terminated octal number of digits only (``None`` otherwise: tarfile decides)."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits.isdigit():  # also refuses what int() would take: signs, underscores, "0o"
        return None
    try:
        return int(digits, 8)
    except ValueError:  # an 8 or a 9
        return None


def _parse_extended(buffer: bytes, where: str) -> dict[str, bytes]:
    """``parse_sample`` for samples with pax or GNU extended headers, through ``tarfile`` (slower, complete)."""
    sample: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(buffer), mode="r:") as archive:
            for member in archive:
                inside = f"{where}: member {member.name!r} at +{member.offset}"
                _check_globals(archive.pax_headers, inside)
                if member.sparse is not None:
                    raise ShardError(f"{inside}: is a sparse file; byte-offset reads need plain files: {_REWRITE}")
                named = member_field(member.name, member.type, member.size, inside)
                if named is None:
                    continue
                _add(sample, named, member.name, archive.extractfile(member).read(), where)
    except tarfile.TarError as error:
        raise ShardError(f"{where}: corrupt tar data: {error}") from error
    return sample
