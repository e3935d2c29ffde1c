"""Byte-range reads through obstore (Rust's ``object_store``), an alternative client for planned samples.

``FetchOptions(client="obstore")`` sends a block's byte ranges through obstore instead of fsspec: one
``get_range_async`` per range, all of a block's ranges awaited together. The requests are the same as
fsspec's (obstore's own ``get_ranges`` would merge ranges up to 1 MiB apart and fetch pruned bytes,
so it is not used). Measured on 127.0.0.1 (the ``clients`` part of the remote loader bench, README),
a plan's ranges took about as long as with fsspec over nginx and 0.78× fsspec's time on moto's S3
server, which bounds both.

Only the reads of shard bytes go through obstore; listing, sizes, ETags and uploads stay with fsspec.
The fsspec ``storage_options`` of the common keys are translated to obstore's configuration
(:func:`obstore_config`); any other key is refused by name rather than dropped, and a user can pass
obstore's own settings with ``FetchOptions(client_options={...})`` (keyword arguments of
``obstore.store.from_url``) instead. Timeouts and retries are this library's (``fetch_requests``), as
for fsspec: obstore's own retries are turned off and its request timeout is a backstop at twice the
policy's (so the policy's timeout, which names itself in the error, always fires first), unless
``client_options`` set ``retry_config`` or ``client_options["timeout"]`` themselves. A server that
ignores a Range header (obstore refuses its answer) is asked for the whole object instead.

obstore is not fork-safe: a process forked after it read through obstore (DataLoader workers forked
from a main process that read first) would hang, so such a read raises ``RuntimeError`` at once
(``check_not_forked``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .fetch_requests import FetchStats, RequestPolicy, read_all, run

#: URL schemes obstore reads here.
SCHEMES = ("s3", "gs", "gcs", "http", "https")

_S3_KEYS = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
#: obstore's words for a 200 answer to a Range request (HTTP store; S3 and other stores).
_RANGE_IGNORED = re.compile(r"Range request not supported|non-partial response when range requested")
_stores: dict[tuple[str, int, str], Any] = {}
#: The process that first read through obstore here: its tokio runtime does not survive ``fork``.
_used_in: int | None = None


def check_not_forked() -> None:
    """Raise ``RuntimeError`` in a process forked from one that already read through obstore.

    obstore's tokio runtime loses its threads in a forked child, so a read there would hang forever
    (obstore is not fork-safe). The usual case: reading in the main process, then DataLoader workers
    (forked by default on Linux) reading too. Fail fast instead, saying what to do.
    """
    global _used_in
    if _used_in is None:
        _used_in = os.getpid()
    elif _used_in != os.getpid():
        raise RuntimeError(
            f"FetchOptions(client='obstore') in process {os.getpid()}, forked from process {_used_in} after it "
            "read through obstore: obstore's runtime does not survive fork and the read would hang. Read only "
            "in the DataLoader workers (not in the main process first), start them with "
            "multiprocessing_context='spawn', or use client='fsspec'"
        )


def split_url(url: str) -> tuple[str, str]:
    """``(root, path)``: the bucket or host URL an obstore store is made for, and the object's path in it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"obstore reads {', '.join(SCHEMES)} URLs, not {url!r}")
    host, _, path = rest.partition("/")
    return f"{'gs' if scheme == 'gcs' else scheme}://{host}", path  # obstore knows gcs:// as gs://


def obstore_config(url: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``obstore.store.from_url`` equivalent to fsspec ``storage_options`` for ``url``.

    S3: ``key``/``secret``/``token``, ``endpoint_url`` (also inside ``client_kwargs``), ``region_name``
    (in ``client_kwargs``), ``anon``, and ``config_kwargs={"s3": {"addressing_style": "path"}}``.
    HTTP(S) and GCS: no options. Anything else raises ``ValueError`` naming the key.
    """
    scheme = url.partition("://")[0]
    options = dict(storage_options)
    config: dict[str, Any] = {}
    if scheme == "s3":
        for fsspec_key, obstore_key in _S3_KEYS.items():
            if fsspec_key in options:
                config[obstore_key] = options.pop(fsspec_key)
        client = dict(options.pop("client_kwargs", {}) or {})
        endpoint = options.pop("endpoint_url", None) or client.pop("endpoint_url", None)
        if endpoint:
            config["endpoint"] = endpoint
        if "region_name" in client:
            config["region"] = client.pop("region_name")
        if options.pop("anon", False):
            config["skip_signature"] = True
        botocore = {key: dict(value) for key, value in (options.pop("config_kwargs", {}) or {}).items()}
        addressing = botocore.get("s3", {}).pop("addressing_style", None)
        if addressing == "path":
            config["virtual_hosted_style_request"] = False
        elif addressing is not None:
            botocore.setdefault("s3", {})["addressing_style"] = addressing
        leftover = sorted(options) + [f"client_kwargs.{key}" for key in sorted(client)]
        leftover += [f"config_kwargs.{key}.{inner}" for key, value in botocore.items() for inner in sorted(value)]
    else:
        leftover = sorted(options)
    if leftover:
        raise ValueError(
            f"FetchOptions(client='obstore') cannot translate storage_options {leftover} for {url}: pass "
            "obstore's settings as FetchOptions(client_options={...}) (obstore.store.from_url keywords)"
        )
    plain_http = scheme == "http" or str(config.get("endpoint", "")).startswith("http://")
    return {"config": config, "client_options": {"allow_http": True} if plain_http else {}}


def check_settings(url: str, storage_options: dict[str, Any], client_options: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` now (not at the first read) if obstore cannot read ``url`` with these settings."""
    root, _ = split_url(url)
    if client_options is None:
        obstore_config(root, storage_options)


def _store(
    root: str, storage_options: dict[str, Any], client_options: dict[str, Any] | None, policy: RequestPolicy
) -> Any:
    """obstore's store for ``root`` in this process (stores are not fork-safe: one per process)."""
    from obstore.store import from_url

    key = (root, os.getpid(), repr((sorted(storage_options.items()), client_options, policy)))
    if key not in _stores:
        settings = dict(client_options) if client_options is not None else obstore_config(root, storage_options)
        settings.setdefault("retry_config", {"max_retries": 0})  # retried by ``fetch_requests.attempt``
        client = dict(settings.get("client_options") or {})
        client.setdefault("timeout", timedelta(seconds=2 * policy.timeout_s))  # a backstop: the policy's fires first
        settings["client_options"] = client
        _stores[key] = from_url(root, **settings)
    return _stores[key]


def read_ranges(
    urls: Sequence[str],
    starts: Sequence[int],
    stops: Sequence[int],
    storage_options: dict[str, Any],
    client_options: dict[str, Any] | None = None,
    policy: RequestPolicy | None = None,
    sizes: Sequence[int] | None = None,
    stats: FetchStats | None = None,
) -> list[bytes | memoryview]:
    """Bytes ``[starts[j], stops[j])`` of object ``urls[j]``, one request per range, under ``policy`` as
    ``_requests.read_all`` says (``sizes``, ``stats``: as there); ``FetchError`` names the first
    range that fails for good, obstore's error chained."""
    try:
        import obstore
        from obstore.exceptions import GenericError, NotSupportedError
    except ImportError as error:
        raise ImportError("FetchOptions(client='obstore') needs obstore: pip install 'sadp-data[remote]'") from error
    check_not_forked()
    policy = policy if policy is not None else RequestPolicy()
    targets = {url: split_url(url) for url in set(urls)}
    roots = {root for root, _ in targets.values()}
    stores = {root: _store(root, storage_options, client_options, policy) for root in roots}

    async def get(url: str, start: int, stop: int) -> memoryview:
        root, path = targets[url]
        try:
            return memoryview(await obstore.get_range_async(stores[root], path, start=int(start), end=int(stop)))
        except (NotSupportedError, GenericError) as error:  # the server answered the range with the whole object
            if not _RANGE_IGNORED.search(str(error)):
                raise
        whole = await obstore.get_async(stores[root], path)
        return memoryview(await whole.bytes_async())

    return run(None, lambda: read_all(get, urls, starts, stops, sizes, policy, stats))
