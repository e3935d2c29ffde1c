"""Loopback servers for tests and benchmarks of remote data loading: S3 (moto), static HTTP (nginx), a latency proxy.

All bind 127.0.0.1 only. ``start()`` (or ``with``) returns once the server answers on its port and is ours (nginx's
pid file, moto's "Running on" line), or raises :class:`ServerStartError` after ``startup_timeout`` s with its log
tail; ``stop()`` (or leaving ``with``, also on an exception) ends the child's process group (SIGTERM; SIGKILL after
5 s) or the proxy's thread and removes the temp folder (garbage collection stops nothing). A child's port comes
from binding port 0 and releasing it (a race: a child that finds it taken restarts on a fresh one, up to 3 times).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
#: nginx's echo module (Debian package libnginx-mod-http-echo, a dependency of nginx-light): ``echo_sleep``.
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
#: The dummy credentials and region the S3 server and its clients use.
AWS_KEY, AWS_SECRET, AWS_REGION = "testing", "testing", "us-east-1"
_S = TypeVar("_S", bound="ManagedServer")


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


class ManagedServer:
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


class _Subprocess(ManagedServer):
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

    endpoint_url = ManagedServer.url  #: ``http://127.0.0.1:PORT``: the endpoint for boto3, s3fs and a proxy's upstream

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

    ``latency_ms`` delays every request that long inside nginx before it is served (the echo module's
    ``echo_sleep``, Debian's ``libnginx-mod-http-echo``): a per-request round trip that costs no CPU of the
    client's process. ``upstream`` (a URL) makes it a reverse proxy to that server instead of serving ``root``
    (any method; keep-alive to the upstream; ``Host`` passed through so S3 signatures hold): the delay and the
    access log then apply to, e.g., moto's S3.
    """

    name = "nginx"

    def __init__(self, root: str | os.PathLike[str] | None = None, *, workers: int = 1, startup_timeout: float = 15.0,
                 nginx: str | None = None, latency_ms: float = 0.0, upstream: str | None = None) -> None:  # fmt: skip
        super().__init__(startup_timeout)
        if (root is None) == (upstream is None):
            raise ValueError("NginxServer: give either a root folder to serve or an upstream URL to proxy")
        self.root = Path(root or ".").resolve()
        if upstream is None and not self.root.is_dir():
            raise NotADirectoryError(f"NginxServer: root {self.root} is not a folder")
        if any(char in str(self.root) + (upstream or "") for char in "\"$;{}'\\ "):
            raise ValueError(f"NginxServer: {upstream or self.root} has a character the generated config cannot hold")
        if latency_ms < 0:
            raise ValueError(f"NginxServer: latency_ms must be non-negative, got {latency_ms}")
        self.latency_ms, self.upstream = float(latency_ms), upstream
        self.workers = workers
        self.binary = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        self._log_offset = 0

    def _config(self, tmp: Path) -> str:
        temps = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi"))
        log_format = "{" + ",".join(f'"{key}":"{variable}"' for key, (variable, _) in _FIELDS.items()) + "}"
        user = "user root;" * (os.geteuid() == 0)
        echo = f"load_module {ECHO_MODULE};\n" if self.latency_ms else ""
        return (
            echo
            + f"""daemon off; master_process on; worker_processes {self.workers}; {user}
pid {tmp / "nginx.pid"}; error_log {self.log_path} notice; events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream; sendfile on; tcp_nopush on; tcp_nodelay on; server_tokens off; etag on;
    keepalive_timeout 75s; keepalive_requests 100000;
    {temps} scgi_temp_path {tmp / "scgi"};
    log_format sadp escape=json '{log_format}';
    access_log {tmp / "access.log"} sadp;
    {self._server()}
}}
"""
        )

    def _server(self) -> str:
        """The ``server`` block (and the upstream's): static files or a proxy, behind ``echo_sleep`` when delayed."""
        serve, upstream = "limit_except GET { deny all; }", ""
        if self.upstream is not None:
            address = self.upstream.split("://", 1)[-1].rstrip("/")
            upstream = "upstream backend { server " + address + "; keepalive 64; }"
            serve = ('proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; '
                     "proxy_set_header Host $http_host; proxy_buffering off; proxy_request_buffering off; "
                     "client_max_body_size 0;")  # fmt: skip
        routes = "location / { " + serve + " }"
        if self.latency_ms:
            sleep = f"{self.latency_ms / 1000:.3f}"  # echo_sleep takes at most 3 decimals (ms)
            routes = "location / { echo_sleep " + sleep + "; echo_exec @serve; } location @serve { " + serve + " }"
        return f'{upstream} server {{ listen {HOST}:{self.port}; root "{self.root}"; {routes} }}'

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
