"""The loopback servers of ``bench.servers``: moto S3, nginx, and the latency proxy in front of either.

Exact bytes for full and ranged reads, the access log's and the proxy's counts, the latency's lower bound (never an
upper one: the machine may be busy), concurrency, keep-alive, and that nothing is left listening after exit.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sadp_data.bench.latency_proxy import LatencyProxy
from sadp_data.bench.servers import NginxServer, S3Server, ServerStartError, free_port, port_open

pytestmark = pytest.mark.remote

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
needs_aiohttp = pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None, reason="aiohttp is not installed")
PAYLOAD = os.urandom(1_000_003)
BUCKET = "sadp-test"


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("www")
    (folder / "data").mkdir()
    (folder / "data" / "a.bin").write_bytes(PAYLOAD)
    (folder / "data" / "with space.bin").write_bytes(PAYLOAD[:1000])
    return folder


@pytest.fixture(scope="module")
def nginx(root: Path):
    if NGINX is None:
        pytest.skip("nginx is not installed")
    with NginxServer(root, nginx=NGINX) as server:
        yield server


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


def _s3fs(options: dict):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def test_nginx_serves_exact_ranges_keeps_alive_and_logs_each_request(nginx: NginxServer) -> None:
    nginx.reset()
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    conn.request("GET", "/data/a.bin", headers={"Range": "bytes=100-199"})
    ranged = conn.getresponse()
    assert (ranged.status, ranged.read()) == (206, PAYLOAD[100:200])
    assert ranged.getheader("Content-Range") == f"bytes 100-199/{len(PAYLOAD)}"
    etag = ranged.getheader("ETag")
    assert etag and etag.startswith('"') and etag.endswith('"')  # nginx: "<mtime hex>-<size hex>"
    assert etag.strip('"').split("-")[1] == format(len(PAYLOAD), "x")
    conn.request("GET", "/data/a.bin")
    full = conn.getresponse()
    assert (full.status, full.read()) == (200, PAYLOAD)
    conn.request("GET", "/data/with%20space.bin", headers={"Range": "bytes=-10"})
    suffix = conn.getresponse()
    assert (suffix.status, suffix.read()) == (206, PAYLOAD[990:1000])
    conn.request("PUT", "/data/a.bin", body=b"x")  # read-only
    forbidden = conn.getresponse()
    forbidden.read()
    assert forbidden.status == 403
    conn.close()

    records = nginx.requests(min_count=4)
    assert [(r["method"], r["uri"], r["status"], r["range"]) for r in records] == [
        ("GET", "/data/a.bin", 206, "bytes=100-199"),
        ("GET", "/data/a.bin", 200, None),
        ("GET", "/data/with%20space.bin", 206, "bytes=-10"),
        ("PUT", "/data/a.bin", 403, None),
    ]
    assert [r["body_bytes_sent"] for r in records[:3]] == [100, len(PAYLOAD), 10]
    assert len({r["connection"] for r in records}) == 1  # one keep-alive connection
    assert [r["connection_requests"] for r in records] == [1, 2, 3, 4]
    assert nginx.bytes_sent(headers=False) == sum(r["body_bytes_sent"] for r in records)
    assert nginx.bytes_sent() == sum(r["bytes_sent"] for r in records) > nginx.bytes_sent(headers=False)
    nginx.reset()
    assert nginx.requests() == [] and nginx.bytes_sent() == 0


def test_s3_server_put_get_and_exact_ranges(s3: S3Server) -> None:
    fs = _s3fs(s3.storage_options())
    fs.pipe_file(f"{BUCKET}/direct.bin", PAYLOAD)
    assert fs.cat_file(f"{BUCKET}/direct.bin") == PAYLOAD
    # s3fs's cat_file is (path, version_id, start, end): pass start/end by keyword.
    assert fs.cat_file(f"{BUCKET}/direct.bin", start=12_345, end=67_890) == PAYLOAD[12_345:67_890]
    starts, ends = [0, 999_000, 500], [10, len(PAYLOAD), 501]
    ranges = fs.cat_ranges([f"{BUCKET}/direct.bin"] * 3, starts, ends)
    assert ranges == [PAYLOAD[s:e] for s, e in zip(starts, ends, strict=True)]
    info = fs.info(f"{BUCKET}/direct.bin")
    assert info["size"] == len(PAYLOAD)
    assert info["ETag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"'  # single-part upload: the quoted MD5


@needs_nginx
@needs_aiohttp
def test_proxy_in_front_of_nginx_returns_the_same_bytes_and_counts_them(nginx: NginxServer) -> None:
    fsspec = pytest.importorskip("fsspec")

    with LatencyProxy(nginx.url) as proxy:
        nginx.reset()
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        url = f"{proxy.url}/data/a.bin"
        info = fs.info(url)
        assert info["size"] == len(PAYLOAD) and info["ETag"].startswith('"')  # fsspec's HTTP info() keeps ETag
        assert fs.cat_file(url, start=1000, end=5000) == PAYLOAD[1000:5000]
        assert fs.cat_file(url) == PAYLOAD
        status, headers, body = _get(proxy.port, "/data/a.bin", {"Range": "bytes=7-9"})
        assert (status, body, headers["Content-Range"]) == (206, PAYLOAD[7:10], f"bytes 7-9/{len(PAYLOAD)}")
        assert headers["ETag"] == info["ETag"]

        log = proxy.request_log()
        assert [(r["method"], r["path"], r["status"], r["bytes_sent"]) for r in log if r["method"] == "GET"] == [
            ("GET", "/data/a.bin", 206, 4000),
            ("GET", "/data/a.bin", 200, len(PAYLOAD)),
            ("GET", "/data/a.bin", 206, 3),
        ]
        assert proxy.stats() == {"requests": len(log), "bytes_sent": 4000 + len(PAYLOAD) + 3}
        upstream = nginx.requests(min_count=len(log))
        assert len(upstream) == len(log)
        assert nginx.bytes_sent(headers=False) == proxy.bytes_sent
        assert {r["host"] for r in upstream} == {f"127.0.0.1:{proxy.port}"}  # the client's Host is kept
        proxy.reset()
        assert proxy.stats() == {"requests": 0, "bytes_sent": 0} and proxy.request_log() == []


@needs_aiohttp
def test_proxy_in_front_of_s3_put_get_and_ranges(s3: S3Server) -> None:
    with LatencyProxy(s3.endpoint_url, latency_ms=5) as proxy:
        fs = _s3fs(s3.storage_options(endpoint_url=proxy.url))
        data = PAYLOAD * 3  # over aiohttp's 1 MiB default request body limit: uploads are streamed
        fs.pipe_file(f"{BUCKET}/proxied.bin", data)
        assert [(r["method"], r["status"]) for r in proxy.request_log()] == [("PUT", 200)]
        proxy.reset()
        assert fs.cat_file(f"{BUCKET}/proxied.bin", start=10, end=1010) == data[10:1010]
        assert fs.cat_ranges([f"{BUCKET}/proxied.bin"] * 2, [0, len(data) - 5], [3, len(data)]) == [
            data[:3],
            data[-5:],
        ]
        log = proxy.request_log()
        assert sorted((r["method"], r["range"], r["status"], r["bytes_sent"]) for r in log) == [
            ("GET", "bytes=0-2", 206, 3),
            ("GET", "bytes=10-1009", 206, 1000),
            ("GET", f"bytes={len(data) - 5}-{len(data) - 1}", 206, 5),
        ]
        assert proxy.stats() == {"requests": 3, "bytes_sent": 1008}
        assert fs.info(f"{BUCKET}/proxied.bin")["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


@needs_nginx
@needs_aiohttp
def test_latency_is_added_per_request_and_is_settable(nginx: NginxServer) -> None:
    with LatencyProxy(nginx.url, latency_ms=20) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("GET", "/data/a.bin", headers={"Range": "bytes=0-0"})
        conn.getresponse().read()
        sock = conn.sock
        nginx.reset()
        began = time.perf_counter()
        for i in range(10):
            conn.request("GET", "/data/a.bin", headers={"Range": f"bytes={i}-{i}"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (206, PAYLOAD[i : i + 1])
        assert time.perf_counter() - began >= 0.2
        assert conn.sock is sock  # the client's connection was kept alive
        assert max(r["connection_requests"] for r in nginx.requests(min_count=10)) > 1  # and the upstream one
        proxy.latency_ms = 0
        conn.request("GET", "/data/a.bin", headers={"Range": "bytes=0-0"})
        assert conn.getresponse().read() == PAYLOAD[:1]
        conn.close()
        assert proxy.stats() == {"requests": 12, "bytes_sent": 12}


@needs_nginx
@needs_aiohttp
def test_proxy_handles_tens_of_concurrent_requests(nginx: NginxServer) -> None:
    spans = [(i * 25_000, i * 25_000 + 10_000 + i) for i in range(32)]
    with LatencyProxy(nginx.url, latency_ms=50) as proxy:
        with ThreadPoolExecutor(len(spans)) as pool:
            results = list(pool.map(lambda s: _get(proxy.port, "/data/a.bin", {"Range": f"bytes={s[0]}-{s[1] - 1}"}),
                                    spans))  # fmt: skip
        assert [(status, body) for status, _, body in results] == [(206, PAYLOAD[s:e]) for s, e in spans]
        assert proxy.stats() == {"requests": 32, "bytes_sent": sum(e - s for s, e in spans)}


@needs_aiohttp
def test_proxy_answers_502_when_the_upstream_is_down() -> None:
    with LatencyProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        status, _, body = _get(proxy.port, "/x")
    assert status == 502 and b"LatencyProxy" in body
    assert proxy.request_log()[0]["status"] == 502


def test_servers_are_gone_after_exit_also_on_an_exception(root: Path) -> None:
    servers: list[LatencyProxy | NginxServer | S3Server] = []
    if importlib.util.find_spec("aiohttp") is not None:
        servers.append(LatencyProxy("http://127.0.0.1:9"))
    if NGINX is not None:
        servers.append(NginxServer(root, nginx=NGINX))
    if importlib.util.find_spec("moto") is not None:
        servers.append(S3Server())
    if not servers:
        pytest.skip("none of aiohttp, nginx, moto is installed")
    for server in servers:
        with pytest.raises(KeyError), server:
            port = server.port
            assert port_open(port)
            tmp = getattr(server, "tmp", None)
            raise KeyError("boom")
        assert not port_open(port), type(server).__name__
        assert tmp is None or not tmp.exists()


def test_a_server_that_fails_to_start_raises_with_its_log_tail(root: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake-nginx"
    fake.write_text("#!/bin/sh\necho 'config is broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = NginxServer(root, nginx=str(fake))
    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3.*config is broken"):
        server.start()
    assert server.tmp is None and server.port == 0
    with pytest.raises(NotADirectoryError):
        NginxServer(tmp_path / "missing")


def test_a_taken_port_is_detected_and_the_server_restarts_on_another(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moto")
    from sadp_data.bench import servers

    with socket.create_server(("127.0.0.1", 0)) as squatter:  # listening: a bare port check would call it ready
        taken = squatter.getsockname()[1]
        ports, original = iter([taken]), servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or original())
        with S3Server() as s3:
            assert s3.port != taken
            s3.create_bucket("after-retry")


def test_nginx_delays_each_request_inside_nginx_and_proxies_s3(root: Path, s3: S3Server) -> None:
    import s3fs

    if NGINX is None:
        pytest.skip("nginx is not installed")
    name = "data/a.bin"
    with NginxServer(root, latency_ms=20, nginx=NGINX) as slow:
        start = time.perf_counter()
        for _ in range(5):
            request = urllib.request.Request(f"{slow.url}/{name}", headers={"Range": "bytes=2-9"})
            with urllib.request.urlopen(request) as response:
                assert response.status == 206 and response.read() == (root / name).read_bytes()[2:10]
        assert time.perf_counter() - start >= 5 * 0.02  # a lower bound only
        assert [r["body_bytes_sent"] for r in slow.requests(min_count=5)] == [8] * 5
    s3.create_bucket("front")
    s3fs.S3FileSystem(skip_instance_cache=True, **s3.storage_options()).pipe_file("front/k", b"0123456789" * 100)
    with NginxServer(upstream=s3.endpoint_url, latency_ms=5, nginx=NGINX) as front:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.storage_options(front.url))
        assert fs.cat_ranges(["front/k"] * 2, [0, 15], [3, 20]) == [b"012", b"56789"]
        ranged = [r for r in front.requests(min_count=2) if r["range"]]
        assert sorted(r["body_bytes_sent"] for r in ranged) == [3, 5]
    with pytest.raises(ValueError, match="either a root folder"):
        NginxServer(root, upstream=s3.endpoint_url)
