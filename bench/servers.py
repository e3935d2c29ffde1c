"""Loopback servers for tests and benchmarks of remote data loading: S3 (moto), static HTTP (nginx), a latency proxy.

All bind 127.0.0.1 only. ``start()`` (or ``with``) returns once the server answers on its port and is ours (nginx's
pid file, moto's "Running on" line), or raises :class:`ServerStartError` after ``startup_timeout`` s with its log
tail; ``stop()`` (or leaving ``with``, also on an exception) ends the child's process group (SIGTERM; SIGKILL after
5 s) or the proxy's thread and removes the temp folder (garbage collection stops nothing). A child's port comes
from binding port 0 and releasing it (a race: a child that finds it taken restarts on a fresh one, up to 3 times).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
#: The dummy credentials and region the S3 server and its clients use.
AWS_KEY, AWS_SECRET, AWS_REGION = "testing", "testing", "us-east-1"
_S = TypeVar("_S", bound="_Managed")


class ServerStartError(RuntimeError):
    """A server did not become ready (exited early or timed out); the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.create_server((HOST, 0)) as sock:
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


class _Managed:
    """``with server:`` is ``server.start()`` and, on leaving (also on an exception), ``server.stop()``."""

    port = 0  # 0 while not started

    def start(self: _S) -> _S: ...
    def stop(self) -> None: ...

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if not self.port:
            raise RuntimeError(f"{type(self).__name__} is not started (use it as a context manager or call start())")
        return f"http://{HOST}:{self.port}"

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Subprocess(_Managed):
    """The lifecycle of a server run as a child process: temp folder, port, ready-wait, teardown."""

    name = "server"

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]: ...
    def _ready(self) -> bool: ...
    def _env(self) -> dict[str, str] | None: ...  # None: the parent's environment
    @property
    def log_path(self) -> Path:
        """The child's stdout/stderr (for nginx also its error log), in the temp folder."""
        if self.tmp is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self.tmp / "server.log"

    def start(self: _S) -> _S:
        """Start the child on a free port and wait until it answers; on any failure clean up and raise."""
        assert isinstance(self, _Subprocess)
        if self._proc is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sadp-{self.name}-"))
        try:
            for _ in range(3):
                self.port = free_port()
                if self._launch():
                    return self
            raise ServerStartError(f"{self.name}: its port was taken 3 times:\n{_tail(self.log_path)}")
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> bool:
        """Start once: True when ready, False when the port turned out to be taken; raise on other failures."""
        self.log_path.write_bytes(b"")
        command = self._command()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                cwd=self.tmp, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if (code := self._proc.poll()) is not None:
                self._proc, self.port, tail = None, 0, _tail(self.log_path)
                if "address already in use" in tail.lower():
                    return False
                raise ServerStartError(f"{self.name} exited with code {code} before it was ready: {command}\n{tail}")
            if self._ready():
                return True
            time.sleep(0.05)
        raise ServerStartError(f"{self.name} not ready in {self.startup_timeout} s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """End the child's process group (SIGTERM, SIGKILL after 5 s) and remove the temp folder. Idempotent."""
        proc, self._proc, self.port = self._proc, None, 0
        for sig, timeout in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if proc is None or proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class S3Server(_Subprocess):
    """moto's standalone S3 (and other AWS) server, ``python -m moto.server``, on 127.0.0.1.

    The child gets dummy credentials (``testing``), region ``us-east-1``, no AWS config files or instance metadata;
    :meth:`storage_options` has explicit keys, the endpoint and path-style addressing: no request goes to AWS. moto
    keeps objects in memory, checks no signatures, logs a line per request (in the temp folder), is a threaded
    werkzeug server with keep-alive: right for correctness and counts, no model of S3's speed. ETag: the quoted MD5
    for a single PUT, ``"<md5 of the parts' md5s>-<parts>"`` for a multipart upload.
    """

    name = "moto"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def _ready(self) -> bool:
        return f"Running on http://{HOST}:{self.port}" in _tail(self.log_path) and port_open(self.port)

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
            "AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "1",
        }  # fmt: skip

    endpoint_url = _Managed.url  #: ``http://127.0.0.1:PORT``: the endpoint for boto3, s3fs and a proxy's upstream

    def storage_options(self, endpoint_url: str | None = None) -> dict[str, Any]:
        """s3fs/fsspec options for this server, or for ``endpoint_url`` (e.g. a :class:`LatencyProxy` in front)."""
        client = {"endpoint_url": endpoint_url or self.endpoint_url, "region_name": AWS_REGION}
        config = {"s3": {"addressing_style": "path"}}
        return {"key": AWS_KEY, "secret": AWS_SECRET, "client_kwargs": client, "config_kwargs": config}

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (an unsigned ``PUT /name``: moto checks no signatures); an existing one is kept."""
        self._post_or_put(f"/{name}", "PUT")

    def reset(self) -> None:
        """Drop every bucket and object (moto's ``/moto-api/reset``)."""
        self._post_or_put("/moto-api/reset", "POST")

    def _post_or_put(self, path: str, method: str) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(self.url + path, method=method), timeout=10).close()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"moto: {method} {path}: {error.code} {error.read().decode(errors='replace')}") from None


#: The access log's fields (each logged as a JSON string) and how to read them.
_FIELDS: dict[str, Any] = {
    "method": ("$request_method", str), "uri": ("$request_uri", str), "status": ("$status", int),
    "bytes_sent": ("$bytes_sent", int), "body_bytes_sent": ("$body_bytes_sent", int), "host": ("$http_host", str),
    "range": ("$http_range", lambda value: value or None), "request_time": ("$request_time", float),
    "connection": ("$connection", int), "connection_requests": ("$connection_requests", int)}  # fmt: skip


class NginxServer(_Subprocess):
    """nginx serving folder ``root`` read-only (GET and HEAD; other methods get 403) on 127.0.0.1.

    Byte ranges (single, suffix, multipart), ETag ``"<mtime hex>-<size hex>"``, keep-alive (75 s, 100,000 requests
    a connection), sendfile. Config, pid, logs and temp paths are in the temp folder (nothing of /etc/nginx is read);
    ``workers`` worker processes, as root ``user root`` (to read a root-owned folder). The access log is unbuffered,
    a JSON object a line (keys of ``_FIELDS``; ``bytes_sent`` counts headers and body), written just after the
    response is sent: a client can have its last byte first, so pass ``min_count`` to wait for the lines.
    """

    name = "nginx"

    def __init__(self, root: str | os.PathLike[str], *, workers: int = 1, startup_timeout: float = 15.0,
                 nginx: str | None = None) -> None:  # fmt: skip
        super().__init__(startup_timeout)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"NginxServer: root {self.root} is not a folder")
        if any(char in str(self.root) for char in "\"$;{}'\\"):
            raise ValueError(f"NginxServer: root {self.root} has a character the generated config cannot hold")
        self.workers = workers
        self.binary = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        self._log_offset = 0

    def _config(self, tmp: Path) -> str:
        temps = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi"))
        log_format = "{" + ",".join(f'"{key}":"{variable}"' for key, (variable, _) in _FIELDS.items()) + "}"
        return f"""daemon off; master_process on; worker_processes {self.workers}; {"user root;" * (os.geteuid() == 0)}
pid {tmp / "nginx.pid"}; error_log {self.log_path} notice; events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream; sendfile on; tcp_nopush on; tcp_nodelay on; server_tokens off; etag on;
    keepalive_timeout 75s; keepalive_requests 100000;
    {temps} scgi_temp_path {tmp / "scgi"};
    log_format sadp escape=json '{log_format}';
    access_log {tmp / "access.log"} sadp;
    server {{ listen {HOST}:{self.port}; root "{self.root}"; location / {{ limit_except GET {{ deny all; }} }} }}
}}
"""

    def _ready(self) -> bool:  # nginx writes its pid file after binding the listening socket
        assert self.tmp is not None and self._proc is not None
        pid = self.tmp / "nginx.pid"
        return pid.exists() and pid.read_text().strip() == str(self._proc.pid) and port_open(self.port)

    def _command(self) -> list[str]:
        assert self.tmp is not None
        if not Path(self.binary).exists():
            raise FileNotFoundError(f"NginxServer: no nginx binary at {self.binary}")
        (conf := self.tmp / "nginx.conf").write_text(self._config(self.tmp))
        (self.tmp / "access.log").write_bytes(b"")
        self._log_offset = 0
        return [self.binary, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.log_path)]

    def _parse(self) -> tuple[list[dict[str, Any]], int]:
        if self.tmp is None:
            raise RuntimeError("NginxServer is not started (use it as a context manager or call start())")
        with (self.tmp / "access.log").open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is left for the next read
        records = [{k: _FIELDS[k][1](v) for k, v in json.loads(line).items()} for line in complete.splitlines()]
        return records, self._log_offset + len(complete)

    def requests(self, min_count: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The log's records since start or :meth:`reset`; waits up to ``timeout`` s for ``min_count`` of them."""
        deadline = time.monotonic() + timeout
        while len(records := self._parse()[0]) < min_count and time.monotonic() < deadline:
            time.sleep(0.01)
        return records

    def bytes_sent(self, *, headers: bool = True, min_count: int = 0) -> int:
        """Bytes sent since start or :meth:`reset`: ``$bytes_sent`` (headers and body), or bodies only."""
        return sum(record["bytes_sent" if headers else "body_bytes_sent"] for record in self.requests(min_count))

    def reset(self) -> None:
        """Forget the requests logged so far (they stay in the file; later reads start after them)."""
        self._log_offset = self._parse()[1]


#: Headers of one connection, not of the message (RFC 9110 §7.6.1): the proxy neither forwards nor returns them.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect"})  # fmt: skip


class LatencyProxy(_Managed):
    """An HTTP reverse proxy on 127.0.0.1 that waits ``latency_ms`` before forwarding each request.

    aiohttp on an event loop in a daemon thread of this process (so it shares the caller's GIL and CPU: about
    0.5 GB/s over loopback, half of nginx direct); many requests in flight, their waits overlapping; keep-alive on
    both sides (up to ``max_connections`` upstream). Forwarded unchanged: method, raw path and query, headers (the
    client's ``Host`` too, so an S3 signature for the proxy's address holds), request body and response (status,
    headers such as Content-Range, ETag, Content-Length; body streamed, nothing decompressed). Hop-by-hop headers
    are dropped (the proxy answers ``Expect: 100-continue``); aiohttp adds ``Content-Type:
    application/octet-stream`` to a body without one. ``latency_ms`` (settable any time) is waited once per request
    before it goes upstream; responses are not throttled. Counted before the client sees the bytes (so complete
    once a response is read): ``requests``, ``bytes_sent`` (body bytes), :meth:`request_log`.
    """

    def __init__(self, upstream_url: str, latency_ms: float = 0.0, *, max_connections: int = 256,
                 startup_timeout: float = 10.0) -> None:  # fmt: skip
        self.upstream_url = upstream_url.rstrip("/")
        self.latency_ms = float(latency_ms)
        self.max_connections, self.startup_timeout = max_connections, startup_timeout
        self.requests = self.bytes_sent = 0
        self._log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None  # aiohttp objects: aiohttp is imported only when a proxy starts
        self._session: Any = None

    def stats(self) -> dict[str, int]:
        """``{"requests": n, "bytes_sent": b}`` since start or :meth:`reset`."""
        with self._lock:
            return {"requests": self.requests, "bytes_sent": self.bytes_sent}

    def request_log(self) -> list[dict[str, Any]]:
        """Per-request records since start or :meth:`reset`, in arrival order (``status`` None until answered)."""
        with self._lock:
            return [dict(record) for record in self._log]

    def reset(self) -> None:
        """Zero the counters and clear the request log."""
        with self._lock:
            self.requests = self.bytes_sent = 0
            self._log.clear()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import ClientError, web

        record = {"method": request.method, "path": request.raw_path, "range": request.headers.get("Range"),
                  "status": None, "bytes_sent": 0}  # fmt: skip
        with self._lock:
            self.requests += 1
            self._log.append(record)
        await asyncio.sleep(max(self.latency_ms, 0.0) / 1000)  # 0: just a yield to the loop
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        response = web.StreamResponse()
        try:
            async with self._session.request(
                request.method, self.upstream_url + request.raw_path, headers=headers, allow_redirects=False,
                data=request.content if request.body_exists else None,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            ) as upstream:  # fmt: skip
                response.set_status(upstream.status, upstream.reason)
                for raw_key, raw_value in upstream.raw_headers:  # as sent: names keep their case (ETag)
                    if (key := raw_key.decode("latin-1")).lower() not in HOP_BY_HOP:
                        response.headers.add(key, raw_value.decode("latin-1"))
                record["status"] = upstream.status
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    with self._lock:
                        record["bytes_sent"] += len(chunk)
                        self.bytes_sent += len(chunk)
                    await response.write(chunk)
            await response.write_eof()
            return response
        except (ClientError, ConnectionError) as error:
            if request.transport is None or request.transport.is_closing():
                return response  # the client went away (e.g. it read only part of a body)
            if response.prepared:
                raise  # the upstream failed mid-body: aiohttp drops the connection, the client sees a short body
            record["status"] = 502
            return web.Response(status=502, text=f"LatencyProxy: upstream {self.upstream_url} failed: {error!r}\n")

    async def _setup(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=60), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=10), read_bufsize=1 << 20, trust_env=False)  # fmt: skip
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def _teardown(self) -> None:
        if self._runner is not None:  # made after the session
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> LatencyProxy:
        """Start the event loop thread and the server; on failure clean up and raise :class:`ServerStartError`."""
        if self._thread is not None:
            raise RuntimeError("LatencyProxy is already started")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"LatencyProxy({self.upstream_url})", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._setup(), loop).result(self.startup_timeout)
        except BaseException as error:
            self.stop()
            raise ServerStartError(f"LatencyProxy to {self.upstream_url} failed to start: {error!r}") from error
        return self

    def stop(self) -> None:
        """Close the listening socket, its connections, the upstream session and the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._teardown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = self._runner = self._session = None
            self.port = 0
