"""The requests a remote read sends: each one bounded in time, retried when the failure is transient, counted.

A store is outside this library's control: it may stall, drop a connection, answer 503 while it
scales, cut a body short of its Content-Length, or ignore a Range header. Every remote request
(``Location``'s sizes, ETags, index files and byte ranges, through fsspec or obstore) goes through
``attempt``, under a ``RequestPolicy``:

- **Timeout.** Each attempt of one request gets ``timeout_s`` seconds (default 60 s), connecting
  and reading its whole body included; then it is cancelled and counts as a timeout.
- **Retries.** Timeouts, connection errors, cut bodies and HTTP 5xx (also 408 and 429) are retried,
  up to ``attempts`` attempts in all, after exponential backoff with jitter
  (``backoff_s``·2^k·U(0.5, 1), at most ``backoff_max_s``). Other answers are final at once: a
  missing object (404), a refusal (401, 403), a bad request.
- **Whole answers to a range.** A server that answers a Range request with 200 and the whole
  object is accepted when the caller knows the object's size and the body has exactly that size:
  the range is cut from it (and the body reused for the batch's other ranges of that object).
  Counted in ``FetchStats.full_responses``; any other length is refused.
- **Failure.** The last error is raised as ``FetchError`` naming the URL, the byte range, the
  attempts and the timeout, with the client's error chained.

Trade-off: a request that fails for good costs up to ``attempts × (timeout_s + backoff)`` before
the error; s3fs and botocore also retry inside one attempt. The timeout is enforced on fsspec's
async filesystems (HTTP, S3, GCS, Azure) and on obstore; a synchronous fsspec filesystem keeps
its own timeouts (its call cannot be cancelled from outside).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..shards.errors import ShardError

T = TypeVar("T")

#: Range requests of one batch in flight at once (fsspec's own default batch size).
CONCURRENT_REQUESTS = 128
#: HTTP statuses worth a retry besides 5xx: request timeout, too many requests.
RETRY_STATUSES = (408, 429)
_STATUS_TEXT = re.compile(r"status code: (\d{3})")


class FetchError(ShardError, OSError):
    """A remote request failed for good (after its retries, or at once for a final answer such as 403).

    A ``ShardError`` (this library's error for shard data it cannot deliver) and an ``OSError`` (a
    failed read, for code that handles I/O errors). The message names the URL, the byte range, the
    attempts and the timeout; the client's own error is chained.
    """


@dataclass(frozen=True)
class RequestPolicy:
    """How long one request may take and how often it is tried (see the module docstring).

    Args:
        attempts: tries per request, the first included (≥ 1).
        timeout_s: seconds one attempt may take, connecting and reading the whole body included.
        backoff_s: the wait before the first retry; doubled for each later one, times a random
            factor in [0.5, 1) so that many readers do not retry in step.
        backoff_max_s: the longest wait between two attempts.
    """

    attempts: int = 3
    timeout_s: float = 60.0
    backoff_s: float = 0.2
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an integer ≥ 1, got {self.attempts!r}")
        for name in ("timeout_s", "backoff_s", "backoff_max_s"):
            value = getattr(self, name)
            least = 0.0 if name != "timeout_s" else 1e-9
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= least:
                raise ValueError(f"{name} must be a number {'> 0' if least else '≥ 0'}, got {value!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0: the first), jittered."""
        return min(self.backoff_max_s, self.backoff_s * 2**retry) * random.uniform(0.5, 1.0)


@dataclass
class FetchStats:
    """What this process's remote reads cost (tests and the bench count at the server too).

    ``requests`` and ``bytes_fetched``: ranges delivered and their bytes; ``cache_hits``: shards read
    from the local cache; ``retries``: attempts sent again after a transient failure; ``timeouts``:
    attempts cancelled at ``timeout_s``; ``full_responses``: range requests answered with the whole
    object (a server that ignores ranges).
    """

    requests: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    retries: int = 0
    timeouts: int = 0
    full_responses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, int]:
        """The counts by name (JSON-ready)."""
        return {key: value for key, value in self.__dict__.items() if key != "lock"}

    def __getstate__(self) -> dict[str, int]:  # a spawned DataLoader worker gets the counts, not the lock
        return self.as_dict()

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def add(self, requests: int = 0, size: int = 0, cache_hits: int = 0, **counts: int) -> None:
        """Add to the counts (``counts``: ``retries``, ``timeouts``, ``full_responses``)."""
        with self.lock:
            self.requests += requests
            self.bytes_fetched += size
            self.cache_hits += cache_hits
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _status(error: BaseException) -> int | None:
    """The HTTP status behind a client error (aiohttp, botocore via s3fs, obstore), if it says one."""
    for cause in _chain(error):
        status = getattr(cause, "status", None)
        if isinstance(status, int):
            return status
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
        if type(cause).__module__.startswith("obstore"):
            found = _STATUS_TEXT.search(str(cause))
            if found:
                return int(found[1])
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass on retrying: a timeout, a lost connection or cut body, HTTP 5xx/408/429."""
    status = _status(error)
    if status is not None:
        return status >= 500 or status in RETRY_STATUSES
    for cause in _chain(error):
        if isinstance(cause, TimeoutError | asyncio.TimeoutError | ConnectionError):
            return True
        module, name = type(cause).__module__, type(cause).__name__
        if module.startswith("aiohttp") and name in ("ClientPayloadError", "ServerTimeoutError", "ContentLengthError"):
            return True
        if module.startswith("aiohttp") and any(kind.__name__ == "ClientConnectionError" for kind in type(cause).mro()):
            return True
        if module.startswith("botocore") and any(kind.__name__ == "HTTPClientError" for kind in type(cause).mro()):
            return True
        if module.startswith("obstore") and name == "GenericError":  # a body, connection or timeout error
            return True
    return False


async def attempt(
    action: Callable[[], Awaitable[T]], where: str, policy: RequestPolicy, stats: FetchStats | None = None
) -> T:
    """``await action()`` under ``policy``: each try cancelled after ``timeout_s``, transient failures
    retried after a jittered backoff; ``FetchError`` naming ``where`` when it fails for good."""
    for tried in range(1, policy.attempts + 1):
        try:
            return await asyncio.wait_for(action(), policy.timeout_s)
        except (asyncio.TimeoutError, TimeoutError) as error:
            if stats is not None:
                stats.add(timeouts=1)
            failure: BaseException = error
            reason = f"no answer within {policy.timeout_s:g} s"
        except (FileNotFoundError, IsADirectoryError, FetchError):  # callers name the first two themselves
            raise
        except Exception as error:  # every client error is classified, then named
            if not is_transient(error):
                raise FetchError(f"{where}: {_describe(error)} (a final answer, not retried)") from error
            failure, reason = error, _describe(error)
        if tried == policy.attempts:
            raise FetchError(
                f"{where}: {reason} after {tried} attempts (timeout {policy.timeout_s:g} s each); the server "
                "stalls or fails: check it, or raise FetchOptions(retries=…, timeout_s=…)"
            ) from failure
        if stats is not None:
            stats.add(retries=1)
        await asyncio.sleep(policy.delay(tried - 1))
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def read_all(
    get: Callable[[str, int, int], Awaitable[bytes | memoryview]],
    urls: Sequence[str],
    starts: Sequence[int],
    stops: Sequence[int],
    sizes: Sequence[int] | None,
    policy: RequestPolicy,
    stats: FetchStats | None = None,
) -> list[bytes | memoryview]:
    """Bytes ``[starts[j], stops[j])`` of ``urls[j]`` for every j, ``get``-ing each range under ``policy``,
    at most ``CONCURRENT_REQUESTS`` at once; the first range that fails for good cancels the rest and
    raises. ``sizes[j]``: the object's size, which lets a whole-object answer stand for the range."""
    semaphore = asyncio.Semaphore(CONCURRENT_REQUESTS)
    bodies: dict[str, bytes | memoryview] = {}

    async def ranged(url: str, start: int, stop: int, size: int | None) -> bytes | memoryview:
        if url in bodies:
            return memoryview(bodies[url])[start:stop]
        part = await get(url, start, stop)
        if len(part) == stop - start:
            return part
        if size is not None and len(part) == size:
            if stats is not None:
                stats.add(full_responses=1)
            bodies[url] = part
            return memoryview(part)[start:stop]
        whole = "" if size is None else f" (the object has {size})"
        raise FetchError(f"{url}: bytes {start}–{stop} came back as {len(part)} bytes{whole}: object truncated?")

    async def one(url: str, start: int, stop: int, size: int | None) -> bytes | memoryview:
        async with semaphore:
            where = f"GET {url} bytes {start}–{stop}"
            return await attempt(lambda: ranged(url, start, stop, size), where, policy, stats)

    every = sizes if sizes is not None else [None] * len(urls)
    tasks = [asyncio.ensure_future(one(*request)) for request in zip(urls, starts, stops, every, strict=True)]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()


def run(fs: Any, make: Callable[[], Awaitable[T]]) -> T:
    """Run coroutine ``make()`` to its end: on the event loop of fsspec filesystem ``fs`` when it is async
    (its sessions live there), else (``fs`` ``None``: obstore; a synchronous filesystem) on a new loop."""
    if fs is not None and getattr(fs, "async_impl", False):
        from fsspec.asyn import sync

        return sync(fs.loop, make)
    return asyncio.run(make())  # type: ignore[arg-type]


def fs_call(fs: Any, method: str, *args: Any, **kwargs: Any) -> Callable[[], Awaitable[Any]]:
    """A factory of the coroutine ``fs.<method>(*args, **kwargs)`` (the async ``_method`` where ``fs`` has one)."""
    if getattr(fs, "async_impl", False) and hasattr(fs, f"_{method}"):
        return lambda: getattr(fs, f"_{method}")(*args, **kwargs)

    async def call() -> Any:
        return getattr(fs, method)(*args, **kwargs)

    return call


def call(fs: Any, method: str, where: str, policy: RequestPolicy, *args: Any, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)`` under ``policy`` (one request: ``info``, ``cat_file``, ``ls``, …)."""
    action = fs_call(fs, method, *args, **kwargs)
    return run(fs, lambda: attempt(action, where, policy))
