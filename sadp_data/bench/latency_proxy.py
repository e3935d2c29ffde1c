"""``LatencyProxy``: an HTTP reverse proxy on 127.0.0.1 that waits before forwarding each request, and counts.

For tests that count requests and bytes at the server side in front of any upstream (nginx, moto).
The remote loader bench injects latency in nginx itself (``NginxServer(latency_ms=...)``), which costs
no CPU of the measuring process; this proxy shares the caller's GIL and CPU.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sadp_data.bench.servers import HOST, ManagedServer, ServerStartError

#: Headers of one connection, not of the message (RFC 9110 §7.6.1): the proxy neither forwards nor returns them.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect"})  # fmt: skip


class LatencyProxy(ManagedServer):
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
