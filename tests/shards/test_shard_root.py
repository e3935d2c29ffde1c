"""Where an index may send its reader: ``shard_root`` stays in the dataset's folder or origin unless trusted.

An ``index.json`` is untrusted input: its ``shard_root`` must not send a reader (and the caller's
``storage_options``, credentials included) to another host, nor to any folder on the disk. A root
outside is read only when the caller names it in ``trusted_roots``, and even then the caller's
``storage_options`` stay with the index's own origin. HTTP servers here are ``http.server`` on
127.0.0.1 that record every request's headers.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sadp_data.cli import main
from sadp_data.remote import Location
from sadp_data.shards import INDEX, OFFSETS, SIDECAR, ForeignShardRootError, ShardError, ShardIndex

pytestmark = pytest.mark.remote

N, SHARD = 30, 10
SECRET = {"headers": {"Authorization": "Bearer secret-token"}}


class _Recording(SimpleHTTPRequestHandler):
    """Serves a folder and records ``(method, path, headers)`` of every request in ``self.server.seen``."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _record(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))

    def do_GET(self) -> None:
        self._record()
        super().do_GET()

    def do_HEAD(self) -> None:
        self._record()
        super().do_HEAD()


class _Server:
    def __init__(self, folder: Path) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Recording, directory=str(folder)))
        self.httpd.seen = []
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def seen(self) -> list[tuple[str, str, dict]]:
        return self.httpd.seen

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("converted")
    np.savez(folder / "data.npz", x=rng.integers(0, 255, (N, 4, 4), dtype=np.uint8), y=rng.integers(0, 10, N))
    out = folder / "shards"
    assert main(["convert", str(folder / "data.npz"), str(out), "--shard-size", str(SHARD), "--no-progress"]) == 0
    return out


def _index_only(converted: Path, folder: Path, shard_root: str) -> Path:
    """``folder`` holding ``converted``'s index (with ``shard_root`` set) and offsets, but no shards."""
    folder.mkdir(parents=True)
    meta = json.loads((converted / INDEX).read_text())
    meta["shard_root"] = shard_root
    (folder / INDEX).write_text(json.dumps(meta))
    shutil.copy(converted / OFFSETS, folder / OFFSETS)
    shutil.copytree(converted / SIDECAR, folder / SIDECAR)
    return folder


def _shards_only(converted: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for tar in converted.glob("*.tar"):
        shutil.copy(tar, folder / tar.name)
    return folder


@pytest.fixture
def two_hosts(converted: Path, tmp_path: Path) -> Iterator[tuple[_Server, _Server]]:
    """An index served by one origin whose ``shard_root`` names another origin serving the shards."""
    shards = _shards_only(converted, tmp_path / "other" / "shards")
    with _Server(shards.parent) as other:
        _index_only(converted, tmp_path / "own" / "ds", f"{other.url}/shards")
        with _Server(tmp_path / "own") as own:
            yield own, other


def test_a_remote_index_pointing_at_another_host_is_refused_without_a_request_there(two_hosts) -> None:
    own, other = two_hosts
    with pytest.raises(ForeignShardRootError, match=rf"shard_root {other.url}/shards.*trusted_roots"):
        ShardIndex.load(f"{own.url}/ds", storage_options=SECRET)
    with pytest.raises(ForeignShardRootError):
        ShardIndex.load(f"{own.url}/ds", verify=False, storage_options=SECRET)
    assert other.seen == []  # not one request reached the other host
    assert own.seen and all(headers.get("Authorization") == "Bearer secret-token" for *_, headers in own.seen)


def test_a_trusted_foreign_host_is_read_without_the_callers_credentials(two_hosts) -> None:
    own, other = two_hosts
    index = ShardIndex.load(f"{own.url}/ds", storage_options=SECRET, trusted_roots=[f"{other.url}/shards"])
    assert index.shard_url(0).startswith(f"{other.url}/shards/") and index.shard_location.storage_options == {}
    assert other.seen and all("Authorization" not in headers for *_, headers in other.seen)
    other.seen.clear()
    theirs = {"headers": {"Authorization": "Bearer theirs"}}
    index = ShardIndex.load(
        f"{own.url}/ds", storage_options=SECRET, trusted_roots=[other.url], shard_storage_options=theirs
    )  # a trusted root covers the folders below it; the foreign origin gets only its own options
    assert other.seen and all(headers.get("Authorization") == "Bearer theirs" for *_, headers in other.seen)


def test_a_shard_root_on_the_same_origin_keeps_the_credentials(converted: Path, tmp_path: Path) -> None:
    _shards_only(converted, tmp_path / "site" / "shards")
    _index_only(converted, tmp_path / "site" / "meta" / "ds", "../../shards")
    with _Server(tmp_path / "site") as site:
        index = ShardIndex.load(f"{site.url}/meta/ds", storage_options=SECRET)
        assert index.shard_url(0) == f"{site.url}/shards/train-000000.tar"
        assert index.num_examples == N and index.shard_location.storage_options == SECRET
        assert all(headers.get("Authorization") == "Bearer secret-token" for *_, headers in site.seen)


@pytest.mark.parametrize("shard_root", ["/etc", "../../..", "../outside", "file:///etc", "sub/../../outside"])
def test_a_local_shard_root_outside_the_index_folder_is_refused(converted: Path, tmp_path: Path, shard_root) -> None:
    _shards_only(converted, tmp_path / "outside")
    folder = _index_only(converted, tmp_path / "ds", shard_root)
    with pytest.raises(ForeignShardRootError, match=r"outside .*ds.*trusted_roots"):
        ShardIndex.load(folder, verify=False)
    if shard_root == "../outside":  # the user's own layout (``index_shards`` of shards elsewhere): trusted by name
        index = ShardIndex.load(folder, trusted_roots=[tmp_path / "outside"])
        assert index.shard_path(0) == tmp_path / "outside" / "train-000000.tar"
        with pytest.raises(ForeignShardRootError):
            ShardIndex.load(folder, trusted_roots=[tmp_path / "outside" / "sub"])  # a folder below does not cover it


def test_a_symlink_out_of_the_index_folder_is_outside(converted: Path, tmp_path: Path) -> None:
    _shards_only(converted, tmp_path / "outside")
    folder = _index_only(converted, tmp_path / "ds", "link")
    (folder / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ForeignShardRootError, match="link"):
        ShardIndex.load(folder)


def test_a_local_index_naming_a_url_needs_trust_and_gets_no_credentials(converted: Path, tmp_path: Path) -> None:
    shards = _shards_only(converted, tmp_path / "served" / "shards")
    with _Server(shards.parent) as server:
        folder = _index_only(converted, tmp_path / "ds", f"{server.url}/shards")
        with pytest.raises(ForeignShardRootError, match="trusted_roots"):
            ShardIndex.load(folder, storage_options=SECRET)
        assert server.seen == []
        index = ShardIndex.load(folder, storage_options=SECRET, trusted_roots=[f"{server.url}/shards/"])
        assert index.remote and all("Authorization" not in headers for *_, headers in server.seen)


def test_locations_carry_storage_options_only_within_their_origin() -> None:
    location = Location("s3://bucket/data", {"key": "k"})
    assert location.child("../other").storage_options == {"key": "k"}
    assert location.child("s3://bucket/x").storage_options == {"key": "k"}
    assert location.child("s3://other-bucket/x").storage_options == {}
    assert location.child("https://bucket/x").storage_options == {}
    assert Location("/data", {"key": "k"}).child("s3://bucket/x").storage_options == {}
    http = Location("http://127.0.0.1:8000/ds", {"headers": {}})
    assert http.child("http://127.0.0.1:8001/ds").storage_options == {}
    assert http.child("http://127.0.0.1:8000/x").storage_options == {"headers": {}}


def test_info_on_the_command_line_needs_the_trusted_root(converted: Path, tmp_path: Path, capsys) -> None:
    _shards_only(converted, tmp_path / "outside")
    folder = _index_only(converted, tmp_path / "ds", "../outside")
    with pytest.raises(SystemExit):
        main(["info", str(folder)])
    assert "--trust-shard-root" in capsys.readouterr().err
    assert main(["info", str(folder), "--trust-shard-root", str(tmp_path / "outside")]) == 0


@pytest.mark.parametrize(("key", "value"), [("name", "../../escape"), ("name", ""), ("fingerprint", "a/../../b")])
def test_index_names_that_would_leave_the_sidecar_cache_are_refused(converted: Path, tmp_path: Path, key, value):
    folder = tmp_path / "ds"
    shutil.copytree(converted, folder)
    meta = json.loads((folder / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps({**meta, key: value}))
    with pytest.raises(ShardError, match=rf"{key}.*{re.escape(repr(value))}"):
        ShardIndex.load(folder)
