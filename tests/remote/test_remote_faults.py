"""Remote reads against a misbehaving server on 127.0.0.1 (``sadp_data/bench/faulty_server.py``), over HTTP and as an S3
endpoint, through fsspec and obstore: a stalled request times out, transient failures are retried with backoff,
final ones are not, a whole-object answer to a Range request yields the right bytes, and what fails for good is a
``FetchError`` naming the URL, the byte range and the attempts (skipped with ``on_error="skip"``). Timeouts and
backoffs are tiny, so each test takes seconds.
"""

from __future__ import annotations

import io
import re
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from sadp_data.adapters.webdataset import ScoredShards
from sadp_data.bench.faulty_server import FaultyServer
from sadp_data.cli import main
from sadp_data.remote.fetch import FetchOptions
from sadp_data.shards import ShardError, ShardIndex

pytestmark = pytest.mark.remote

N, SHARD = 120, 40
SHARDS = [f"train-{shard:06d}.tar" for shard in range(N // SHARD)]
#: A tiny timeout and backoff: a stall costs 2 × 0.3 s per request.
QUICK = {"timeout_s": 0.3, "retries": 2, "backoff_s": 0.01}


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SADP_CACHE", str(tmp_path / "cache"))  # remote datasets' sidecars


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[dict[str, bytes], np.ndarray]:
    """A converted scored-shards folder as ``{name: bytes}`` (3 shards of 40 examples) and its source ``x``."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (N, 16, 16), dtype=np.uint8)
    source = tmp_path_factory.mktemp("source") / "data.npz"
    np.savez(source, x=x, y=rng.integers(0, 10, N))
    folder = tmp_path_factory.mktemp("converted") / "shards"
    assert main(["convert", str(source), str(folder), "--shard-size", str(SHARD), "--no-progress"]) == 0
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    return files, x


@pytest.fixture(params=["http", "s3"])
def server(request, data):
    """``(server, url, storage_options, name prefix)``: the folder over plain HTTP, or as bucket ``bkt`` of an S3
    endpoint (path-style requests: ``GET /bkt/name``)."""
    files, _ = data
    if request.param == "http":
        with FaultyServer(files) as faulty:
            yield faulty, faulty.url, None, ""
        return
    pytest.importorskip("s3fs")
    with FaultyServer({f"bkt/{name}": blob for name, blob in files.items()}) as faulty:
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": faulty.url, "region_name": "us-east-1"},
            "config_kwargs": {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 1}},
        }
        yield faulty, "s3://bkt", options, "bkt/"


def _sampler(url, options, keep_ratio=1.0):
    """Shards visited one after the other (``window=1``): a block is one shard, read whole when all is kept."""
    return ScoredShards.sampler_for(
        url, storage_options=options, keep_ratio=keep_ratio, epochs=4, warmup_epochs=0, seed=3, window=1
    )


def _dataset(url, options, fetch, on_error="raise"):
    return ScoredShards(url, _sampler(url, options), storage_options=options, fetch=fetch, on_error=on_error)


def _client_options(client, url, options):
    """obstore's settings for the S3 endpoint (botocore's retry config has no obstore twin)."""
    if client != "obstore" or options is None:
        return None
    endpoint = options["client_kwargs"]["endpoint_url"]
    config = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1", "endpoint": endpoint}
    return {"config": {**config, "virtual_hosted_style_request": False}, "client_options": {"allow_http": True}}


def _read(dataset) -> dict[int, bytes]:
    """Every delivered sample's ``x.npy`` bytes by example index."""
    return {sample["__index__"]: sample["x.npy"] for sample in dataset}


def _check(samples: dict[int, bytes], x: np.ndarray, expected: list[int]) -> None:
    assert sorted(samples) == expected
    for index, raw in samples.items():
        np.testing.assert_array_equal(np.load(io.BytesIO(raw)), x[index])


def _causes(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__
    return chain


@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_a_stalled_get_times_out_is_retried_then_fails_naming_url_range_and_attempts(server, client):
    faulty, url, options, prefix = server
    fetch = FetchOptions(readahead=0, client=client, client_options=_client_options(client, url, options), **QUICK)
    dataset = _dataset(url, options, fetch)
    faulty.fault(f"{prefix}{SHARDS[1]}", "stall")
    began = time.perf_counter()
    with pytest.raises(ShardError) as raised:
        _read(dataset)
    assert time.perf_counter() - began < 10
    from sadp_data.remote.fetch import FetchError

    message = str(raised.value)
    assert any(isinstance(cause, FetchError) for cause in _causes(raised.value))
    assert re.search(rf"{SHARDS[1]} bytes \d+–\d+: no answer within 0\.3 s after 2 attempts", message), message
    assert dataset.fetch_stats.timeouts == 2 and dataset.fetch_stats.retries == 1
    assert len([entry for entry in faulty.requests() if entry[1].endswith(SHARDS[1])]) == 2


@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_one_503_is_retried_and_the_epoch_delivers_every_sample(server, client, data):
    faulty, url, options, prefix = server
    fetch = FetchOptions(readahead=0, client=client, client_options=_client_options(client, url, options))
    dataset = _dataset(url, options, fetch)
    faulty.fault(f"{prefix}{SHARDS[0]}", 503, times=1)
    _check(_read(dataset), data[1], list(range(N)))
    assert dataset.fetch_stats.retries == 1 and dataset.fetch_stats.timeouts == 0


@pytest.mark.parametrize("fault", [500, "cut"])
@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_a_500_or_a_cut_body_fails_as_fetch_error_and_is_skipped_with_on_error_skip(data, client, fault):
    files, x = data
    with FaultyServer(files) as faulty:
        fetch = FetchOptions(readahead=0, client=client, retries=2, backoff_s=0.01)
        dataset = _dataset(faulty.url, None, fetch)
        skipping = ScoredShards(faulty.url, dataset.sampler, fetch=fetch, on_error="skip")
        faulty.fault(SHARDS[1], fault)
        with pytest.raises(ShardError, match=rf"{SHARDS[1]}.*after 2 attempts"):
            _read(dataset)
        faulty.log.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            samples = _read(skipping)
        _check(samples, x, [i for i in range(N) if not SHARD <= i < 2 * SHARD])
        assert len(skipping.skipped) == SHARD and any("skipped 40 unreadable" in str(w.message) for w in caught)
        assert len([entry for entry in faulty.requests() if entry[1] == SHARDS[1]]) == 2
        assert skipping.fetch_stats.retries == 1


@pytest.mark.parametrize("status", [403, 404])
def test_403_and_404_are_final_not_retried(data, status):
    files, _ = data
    with FaultyServer(files) as faulty:
        dataset = _dataset(faulty.url, None, FetchOptions(readahead=0, retries=3, backoff_s=0.01))
        faulty.fault(SHARDS[0], status)
        with pytest.raises(ShardError, match=SHARDS[0]):
            _read(dataset)
        assert len([entry for entry in faulty.requests() if entry[1] == SHARDS[0]]) == 1
        assert dataset.fetch_stats.retries == 0


@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_a_200_answer_to_a_range_request_yields_the_right_slice_and_is_counted(server, client, data):
    faulty, url, options, _ = server
    fetch = FetchOptions(readahead=1, client=client, client_options=_client_options(client, url, options))
    sampler = _sampler(url, options, keep_ratio=0.5)
    sampler.set_epoch(1)  # half of each shard: ranged reads, not whole shards
    dataset = ScoredShards(url, sampler, storage_options=options, fetch=fetch)
    faulty.fault("*", "full")
    _check(_read(dataset), data[1], sorted(sampler.plan.order.tolist()))
    ranged = [entry for entry in faulty.requests() if entry[2] is not None]
    assert ranged and all(entry[3] == "full" for entry in ranged)
    assert 1 <= dataset.fetch_stats.full_responses <= len(ranged)


@pytest.mark.slow
@pytest.mark.parametrize("stalled", ["index.json", "offsets.npy", SHARDS[2]])
def test_the_timeout_covers_the_index_files_and_the_shard_size_and_etag_requests(server, stalled):
    faulty, url, options, prefix = server
    from sadp_data.remote.fetch import FetchError
    from sadp_data.remote.fetch_requests import RequestPolicy

    index = ShardIndex.load(url, storage_options=options)
    sampler = ScoredShards.sampler_for(index, keep_ratio=1.0, epochs=2, warmup_epochs=0)
    faulty.fault(f"{prefix}{stalled}", "stall")
    began = time.perf_counter()
    with pytest.raises(FetchError, match=rf"{stalled}: no answer within 0\.3 s after 2 attempts"):
        ShardIndex.load(url, storage_options=options, policy=RequestPolicy(2, 0.3, 0.01))
    with pytest.raises(ShardError, match=rf"{stalled}.*no answer within 0\.3 s"):  # ScoredShards passes its policy
        ScoredShards(url, sampler, storage_options=options, fetch=FetchOptions(**QUICK))
    assert time.perf_counter() - began < 15


def test_fetch_stats_report_timeouts_retries_and_full_responses():
    from sadp_data.remote.fetch import FetchStats

    stats = FetchStats()
    stats.add(2, 100, retries=1, timeouts=1, full_responses=1)
    assert stats.as_dict() == {
        "requests": 2,
        "bytes_fetched": 100,
        "cache_hits": 0,
        "retries": 1,
        "timeouts": 1,
        "full_responses": 1,
    }
    assert "timeouts=1" in repr(stats) and "retries=1" in repr(stats)


@pytest.mark.parametrize(("name", "value"), [("timeout_s", 0), ("timeout_s", -1.0), ("backoff_s", -0.1)])
def test_bad_timeouts_and_backoffs_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"FetchOptions.{name}"):
        FetchOptions(**{name: value})
