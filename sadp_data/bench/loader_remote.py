"""Loader bench, remote backend: scored shards over S3 and HTTP, against webdataset streaming them whole.

``sadp-data bench loader --backend remote --nmnist PATH --json bench/results/loader-remote.json``.
The N-MNIST recordings (raw events, about 47 KiB a sample), repeated ``repeat`` times (default 5:
5,000 samples, 284 MB, so an epoch is not all start-up), are converted to scored shards (100 samples
each), uploaded to moto's S3 server and served from local disk by nginx. Each storage is read
through an nginx on 127.0.0.1 that waits ``latency_ms`` (0, 5, 20) inside nginx before serving each
request (``echo_sleep``: a round trip that costs the client no CPU) — for S3 as a reverse proxy in
front of moto — and whose access log counts the requests and response bytes at the server side.
Per storage (``s3``, ``http``) and latency, one epoch of each pipeline, through a ``DataLoader``
(batch ``BATCH``, ``workers`` workers):

* ``stream``: webdataset streaming every shard whole (``DataPipeline`` of the shard list, split by
  worker, each shard opened as one fsspec stream, ``tar_file_expander`` / ``group_by_keys``) — what
  a webdataset user gets, reading every byte;
* ``sadp``: ``ScoredShards`` at keep 1.0, 0.7 and 0.5 with the default ``FetchOptions``, each built
  once (index loaded, shards checked) before the rounds, as a training run builds it once; a timed
  epoch is ``set_epoch`` (the plan) and the iteration;
* ``sadp-obstore``: the same at keep 0.5 with ``FetchOptions(client="obstore")`` (the same requests,
  sent by obstore instead of fsspec);
* ``sadp-adaptive``: the same at keep 0.5 with ``FetchOptions(adaptive=True)`` (reads planned from the
  measured cost of requests; DataLoader workers start afresh each epoch, so each epoch probes again).

Samples are delivered as bytes (no decode), so the figures are the loading itself. Configurations
run in rounds in shuffled order (``loader_common.measure_rounds``); the median epoch time of the
rounds is reported, with bytes and requests of the last round (they do not vary: the plan of a
round is fixed by its epoch number, the same for every configuration; except ``sadp-adaptive``'s,
which follow the request times measured in that round).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sadp_data.bench.loader_common import BATCH, KEEP_RATIOS, fill_scores, measure_rounds, ratio_interval
from sadp_data.bench.remote_clients import measure_clients

LATENCIES_MS = (0.0, 5.0, 20.0)
SHARD_SIZE = 100
#: pipeline → its FetchOptions
PIPELINE_FETCH: dict[str, dict[str, Any]] = {
    "sadp": {},
    "sadp-obstore": {"client": "obstore"},
    "sadp-adaptive": {"adaptive": True},
}
SADP_PIPELINES = [("sadp", keep) for keep in KEEP_RATIOS] + [("sadp-obstore", 0.5), ("sadp-adaptive", 0.5)]


class _Repeated:
    """The items of ``data`` repeated ``times`` times (a larger dataset of the same samples)."""

    def __init__(self, data, times: int) -> None:
        self.data, self.times = data, times

    def __len__(self) -> int:
        return len(self.data) * self.times

    def __getitem__(self, index: int):
        return self.data[index % len(self.data)]


def _served(server) -> dict[str, int]:
    """Requests and response body bytes nginx logged since its last reset, once its log stops growing."""
    records = server.requests()
    while True:
        time.sleep(0.05)
        again = server.requests()
        if len(again) == len(records):
            return {"requests": len(again), "bytes_sent": sum(r["body_bytes_sent"] for r in again)}
        records = again


def _stream_epoch(urls: list[str], options: dict | None, workers: int) -> int:
    """One epoch of webdataset streaming ``urls`` whole (fsspec streams); the samples delivered."""
    import fsspec
    import webdataset as wds
    from torch.utils.data import DataLoader

    def open_streams(source):
        for sample in source:
            url = sample["url"]
            protocol = url.split("://", 1)[0]
            stream = fsspec.filesystem(protocol, **(options or {})).open(url, "rb", block_size=1 << 22)
            yield {**sample, "stream": stream}

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        open_streams,
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
        wds.to_tuple("events.npy", "y.cls"),
    )
    loader = DataLoader(pipeline, batch_size=BATCH, num_workers=workers)
    return sum(len(batch[0]) for batch in loader)


def _sadp_loader(url: str, options: dict | None, store, keep: float, workers: int, fetch: dict[str, Any]):
    """``ScoredShards`` at ``keep`` over ``url``, built once per configuration (as a training run builds it),
    reading shard bytes with ``FetchOptions(**fetch)``."""
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.remote.fetch import FetchOptions

    sampler = ScoredShards.sampler_for(
        url, store=store, storage_options=options, keep_ratio=keep, warmup_epochs=0, anneal_fraction=0.0
    )
    dataset = ScoredShards(url, sampler, storage_options=options, fetch=FetchOptions(**fetch))
    dataset = dataset.to_tuple("events.npy", "y.cls")
    return dataset.loader(BATCH, num_workers=workers)


def run_remote_bench(
    nmnist_dir: str | Path,
    rounds: int = 3,
    workers: int = 2,
    latencies_ms: tuple[float, ...] = LATENCIES_MS,
    limit: int | None = None,
    progress: bool = True,
    repeat: int = 5,
) -> dict[str, Any]:
    """Returns ``{"backend": "remote", "results": [...], "summary": {...}, "settings": {...}}``.

    Each result: ``storage, keep_ratio, latency_ms, pipeline, bytes_fetched, requests, epoch_s``
    (median over ``rounds``), ``epoch_s_rounds``, ``samples``, ``samples_per_s``. The summary gives,
    per storage, the keep-0.5 ratios to whole-shard streaming: bytes, and epoch time at every latency
    with a 95 % bootstrap interval. ``clients``, per ``"storage latency"``: the keep-0.5 plan's byte
    ranges read through fsspec and through obstore alone (``remote_clients.measure_clients``).
    """
    from contextlib import ExitStack

    from sadp_data.bench.servers import NginxServer, S3Server
    from sadp_data.shards.publish import publish_shards
    from sadp_data.shards.writer import write_shards
    from sadp_data.sources import Source, open_source
    from sadp_data.store import ScoreStore

    source = open_source(f"nmnist:{nmnist_dir}")
    source = source if limit is None else source.head(limit)
    if repeat > 1:
        source = Source(f"{source.name}×{repeat}", _Repeated(source, repeat))
    with tempfile.TemporaryDirectory() as scratch, S3Server() as s3:
        www = Path(scratch) / "www"
        index = write_shards(source, www / "nmnist", shard_size=SHARD_SIZE, progress=progress, workers=2)
        s3.create_bucket("bench")
        publish_shards(source, "s3://bench/nmnist", shard_size=SHARD_SIZE, progress=progress,
                       storage_options=s3.storage_options())  # fmt: skip
        store = ScoreStore.create(Path(scratch) / "scores.zarr", index.num_examples, fingerprint=index.fingerprint)
        fill_scores(store, index.num_examples)
        with ExitStack() as servers:
            front = {}
            for latency in latencies_ms:
                front["http", latency] = servers.enter_context(NginxServer(www, latency_ms=latency))
                front["s3", latency] = servers.enter_context(NginxServer(upstream=s3.endpoint_url, latency_ms=latency))
            names = [entry["url"] for entry in index.shards]
            counters: dict[tuple, dict[str, int]] = {}
            loaders = {
                (storage, latency, pipeline, keep): _sadp_loader(
                    *_target(storage, server, s3), store, keep, workers, PIPELINE_FETCH[pipeline]
                )
                for (storage, latency), server in front.items()
                for pipeline, keep in SADP_PIPELINES
            }

            def measure(config: tuple, round_number: int) -> tuple[int, float]:
                storage, latency, pipeline, _ = config
                server = front[storage, latency]
                url, options = _target(storage, server, s3)
                server.reset()
                start = time.perf_counter()
                if pipeline == "stream":
                    count = _stream_epoch([f"{url}/{name}" for name in names], options, workers)
                else:
                    loader = loaders[config]
                    loader.set_epoch(round_number + 1)
                    count = sum(len(batch[0]) for batch in loader)
                seconds = time.perf_counter() - start
                counters[config] = _served(server)
                return count, seconds

            measure(("http", latencies_ms[0], "sadp", 0.5), -1)  # warm-up: compiled kernels, connections, page cache
            configs = [
                (storage, latency, pipeline, keep)
                for storage in ("http", "s3")
                for latency in latencies_ms
                for pipeline, keep in [("stream", 1.0), *SADP_PIPELINES]
            ]
            times, counts = measure_rounds(configs, rounds, measure, "bench loader remote", progress)
            clients = {
                f"{storage} {latency:g}": measure_clients(loaders[(storage, latency, "sadp", 0.5)], rounds)
                for storage, latency in front
            }
        store.close()
    results = [
        {
            "storage": storage,
            "keep_ratio": keep,
            "latency_ms": latency,
            "pipeline": pipeline,
            "bytes_fetched": counters[config]["bytes_sent"],
            "requests": counters[config]["requests"],
            "epoch_s": statistics.median(times[config]),
            "epoch_s_rounds": times[config],
            "samples": counts[config],
            "samples_per_s": counts[config] / statistics.median(times[config]),
        }
        for config in configs
        for storage, latency, pipeline, keep in [config]
    ]
    settings = {
        "dataset": f"N-MNIST raw events ({index.num_examples} samples: the recordings repeated {repeat}×)",
        "latency": "nginx echo_sleep before serving each request (S3: nginx reverse proxy in front of moto)",
        "bytes_per_sample_mean": sum(e["bytes"] for e in index.shards) / index.num_examples,
        "shard_size": SHARD_SIZE,
        "shards": len(index.shards),
        "batch_size": BATCH,
        "num_workers": workers,
        "rounds": rounds,
    }
    summary = _summary(results, times)
    return {
        "backend": "remote",
        "results": results,
        "summary": summary,
        "targets": remote_targets(summary),
        "settings": settings,
        "clients": clients,
    }


def remote_targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The remote-read targets per storage: at keep 0.5, bytes ≤ 0.6× and (at 5 ms latency) epoch ≤ 0.6× streaming's."""
    from sadp_data.bench.targets import target

    targets = {}
    for storage, per_latency in summary.items():
        at5 = per_latency.get("5")
        if at5 is None:
            continue
        targets[f"{storage}_bytes"] = target(
            f"{storage}: bytes fetched at keep 0.5 ÷ whole-shard streaming", at5["bytes_vs_stream"], 0.6, "<="
        )
        targets[f"{storage}_epoch_5ms"] = target(
            f"{storage}: epoch time at keep 0.5, 5 ms latency ÷ streaming", at5["epoch_s_vs_stream"], 0.6, "<="
        )
        if "adaptive_epoch_s_vs_stream" in at5:
            targets[f"{storage}_epoch_5ms_adaptive"] = target(
                f"{storage}: epoch time at keep 0.5, 5 ms latency ÷ streaming, FetchOptions(adaptive=True)",
                at5["adaptive_epoch_s_vs_stream"],
                0.6,
                "<=",
            )
    return targets


def _target(storage: str, server, s3) -> tuple[str, dict | None]:
    """The dataset's URL and fsspec options through the delaying nginx ``server`` in front of ``storage``."""
    if storage == "http":
        return f"{server.url}/nmnist", None
    return "s3://bench/nmnist", s3.storage_options(server.url)


def _summary(results: list[dict[str, Any]], times: dict[tuple, list[float]]) -> dict[str, Any]:
    """Per storage: keep-0.5 bytes and epoch time over whole-shard streaming's, per latency."""
    summary: dict[str, Any] = {}
    for storage in sorted({row["storage"] for row in results}):
        rows = [row for row in results if row["storage"] == storage]
        per_latency = {}
        for latency in sorted({row["latency_ms"] for row in rows}):
            stream = next(r for r in rows if r["latency_ms"] == latency and r["pipeline"] == "stream")
            half = next(
                r for r in rows if r["latency_ms"] == latency and r["pipeline"] == "sadp" and r["keep_ratio"] == 0.5
            )
            low, high = ratio_interval(
                times[(storage, latency, "sadp", 0.5)], times[(storage, latency, "stream", 1.0)], statistics.median
            )
            per_latency[f"{latency:g}"] = {
                "bytes_vs_stream": half["bytes_fetched"] / stream["bytes_fetched"],
                "requests": half["requests"],
                "stream_requests": stream["requests"],
                "epoch_s_vs_stream": half["epoch_s"] / stream["epoch_s"],
                "epoch_s_vs_stream_ci95": [low, high],
            }
            row = per_latency[f"{latency:g}"]
            for pipeline, prefix in (("sadp-obstore", "obstore"), ("sadp-adaptive", "adaptive")):
                if (storage, latency, pipeline, 0.5) not in times:
                    continue
                other = times[(storage, latency, pipeline, 0.5)]
                stream_times = times[(storage, latency, "stream", 1.0)]
                row[f"{prefix}_epoch_s_vs_stream"] = statistics.median(other) / stream["epoch_s"]
                row[f"{prefix}_epoch_s_vs_stream_ci95"] = list(ratio_interval(other, stream_times, statistics.median))
                if prefix == "adaptive":
                    served = next(r for r in rows if r["latency_ms"] == latency and r["pipeline"] == pipeline)
                    row["adaptive_bytes_vs_stream"] = served["bytes_fetched"] / stream["bytes_fetched"]
                    row["adaptive_requests"] = served["requests"]
        summary[storage] = per_latency
    return summary


def format_remote_table(result: dict[str, Any]) -> str:
    lines = [
        "| storage | latency (ms) | pipeline | keep | MB fetched | requests | epoch (s) | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(
        result["results"], key=lambda r: (r["storage"], r["latency_ms"], r["pipeline"] != "stream", -r["keep_ratio"])
    ):
        lines.append(
            f"| {row['storage']} | {row['latency_ms']:g} | {row['pipeline']} | {row['keep_ratio']:g} | "
            f"{row['bytes_fetched'] / 1e6:.1f} | {row['requests']} | {row['epoch_s']:.3f} | "
            f"{row['samples_per_s']:.0f} |"
        )
    for where, row in result.get("clients", {}).items():
        lines.append(
            f"\n{where} ms, the keep-0.5 plan's {row['ranges']} byte ranges read alone: fsspec "
            f"{row['fsspec']['read_s']:.3f} s, obstore {row['obstore']['read_s']:.3f} s"
        )
    for storage, per_latency in result["summary"].items():
        for latency, row in per_latency.items():
            low, high = row["epoch_s_vs_stream_ci95"]
            others = ""
            if "obstore_epoch_s_vs_stream" in row:
                o_low, o_high = row["obstore_epoch_s_vs_stream_ci95"]
                others += f"; through obstore {row['obstore_epoch_s_vs_stream']:.3f}× [{o_low:.3f}, {o_high:.3f}]"
            if "adaptive_epoch_s_vs_stream" in row:
                a_low, a_high = row["adaptive_epoch_s_vs_stream_ci95"]
                others += (
                    f"; adaptive: bytes {row['adaptive_bytes_vs_stream']:.3f}×, epoch "
                    f"{row['adaptive_epoch_s_vs_stream']:.3f}× [{a_low:.3f}, {a_high:.3f}]"
                )
            lines.append(
                f"\n{storage}, {latency} ms, keep 0.5 vs whole-shard streaming: bytes {row['bytes_vs_stream']:.3f}×, "
                f"epoch {row['epoch_s_vs_stream']:.3f}× [{low:.3f}, {high:.3f}]{others}"
            )
    return "\n".join(lines)
