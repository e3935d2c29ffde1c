"""A misbehaving HTTP server on 127.0.0.1 for tests of remote reads: stalls, errors, short bodies, ignored ranges.

``FaultyServer(files)`` serves ``files`` (name → bytes) from a thread (``http.server``, one thread per
connection) with ``HEAD``, ``GET``, single byte ranges (206) and an ETag, like a static file server.
``fault(name, kind, times)`` makes the next ``times`` requests for ``name`` (every one with ``None``)
misbehave; ``name`` ``"*"`` matches every object:

- ``"stall"``: never answer (until ``stop()``), the way a hung server or a dropped route looks;
- ``"cut"``: announce the whole Content-Length, send half of the body, close the connection;
- ``"full"``: answer a Range request with 200 and the whole object (a server that ignores ranges);
- an HTTP status such as ``503`` or ``500``: answer it with a short text body.

``log`` lists every request as ``(method, name, range header or None, what was done)``. A stalled
request holds its thread until ``stop()``, which releases them all, so nothing outlives the server.
"""

from __future__ import annotations

import contextlib
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .servers import HOST, ManagedServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class FaultyServer(ManagedServer):
    """Serves ``files`` over HTTP on 127.0.0.1, misbehaving where ``fault`` says (see the module docstring)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.faults: dict[str, list[Any]] = {}
        self.log: list[tuple[str, str, str | None, str]] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def fault(self, name: str, kind: str | int, times: int | None = None) -> None:
        """The next ``times`` requests for ``name`` (``"*"``: any; ``None``: all of them) misbehave as ``kind``."""
        with self.lock:
            self.faults[name] = [kind, times]

    def take_fault(self, name: str) -> str | int | None:
        with self.lock:
            for key in (name, "*"):
                entry = self.faults.get(key)
                if entry is None:
                    continue
                kind, times = entry
                if times is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self.faults[key]
                return kind
        return None

    def requests(self, method: str = "GET") -> list[tuple[str, str, str | None, str]]:
        """The logged requests of ``method``."""
        with self.lock:
            return [entry for entry in self.log if entry[0] == method]

    def start(self) -> FaultyServer:
        self.released.clear()
        server = ThreadingHTTPServer((HOST, 0), _handler(self))
        server.daemon_threads = True
        self._server, self.port = server, int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="faulty-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled requests, stop serving and close the socket. Idempotent."""
        self.released.set()
        server, self._server, self.port = self._server, None, 0
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _handler(owner: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: ``owner.log`` records requests
            return

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            name = self.path.lstrip("/")
            wanted = self.headers.get("Range")
            fault = owner.take_fault(name)
            with owner.lock:
                owner.log.append((self.command, name, wanted, "ok" if fault is None else str(fault)))
            if fault == "stall":
                owner.released.wait()
                self.close_connection = True
                return
            if isinstance(fault, int):
                return self._send(fault, f"fault {fault}".encode(), body)
            data = owner.files.get(name)
            if data is None:
                return self._send(404, b"no such object", body)
            tag = {"ETag": f'"{zlib.crc32(data):08x}"', "Accept-Ranges": "bytes"}
            match = _RANGE.match(wanted or "")
            if match is None or fault == "full":
                return self._send(200, data, body, tag, cut=fault == "cut")
            start = int(match[1])
            stop = min(len(data), int(match[2]) + 1 if match[2] else len(data))
            if start >= len(data):
                return self._send(416, b"range not satisfiable", body, {"Content-Range": f"bytes */{len(data)}"})
            span = {**tag, "Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
            return self._send(206, data[start:stop], body, span, cut=fault == "cut")

        def _send(
            self, status: int, data: bytes, body: bool, headers: dict[str, str] | None = None, cut: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
                self.send_header(key, value)
            if cut:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if body:
                with contextlib.suppress(ConnectionError):  # the client gave up (its timeout): nothing to do
                    self.wfile.write(data[: len(data) // 2] if cut else data)

    return Handler
