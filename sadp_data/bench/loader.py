"""Loader bench (WebDataset): what pruning saves at the data-loading level.

On Fashion-MNIST converted to scored shards (60,000 samples, 5,000 per shard) it measures one epoch
of (a) a plain webdataset pipeline reading every sample (``WebDataset(...).decode().to_tuple(...)``,
the *raw* baseline) and (b) ``ScoredShards`` at keep ratios 1.0, 0.7 and 0.5, all through a
``DataLoader`` with batch size 128, for 0 and 2 workers. Configurations are run in rounds
(every configuration once per round) and the median of the rounds is reported, so load from other
processes spreads over all of them; files are read once beforehand so every configuration sees the
same warm page cache, and one untimed epoch loads the compiled planning kernels first.
``run_torch_bench`` and ``run_ffcv_bench`` measure the same for a plain PyTorch ``DataLoader`` and for FFCV.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sadp_data.bench.loader_common import (
    BATCH,
    configurations,
    fill_scores,
    load_source,
    measure_rounds,
    ratio_interval,
    result_record,
)
from sadp_data.bench.loader_dvs import run_dvs_bench
from sadp_data.bench.loader_ffcv import build_in_field_order, ffcv_targets, run_ffcv_bench, trimmed_mean

__all__ = [
    "build_in_field_order",
    "ffcv_targets",
    "format_loader_table",
    "ratio_interval",
    "run_dvs_bench",
    "run_ffcv_bench",
    "run_loader_bench",
    "run_torch_bench",
    "trimmed_mean",
]


def _raw_epoch(index, workers: int) -> tuple[int, float]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    urls = [str(index.shard_path(shard)) for shard in range(len(index.shards))]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode().to_tuple("x.npy", "y.cls")
    start = time.perf_counter()
    count = sum(int(labels.shape[0]) for _, labels in DataLoader(dataset, batch_size=BATCH, num_workers=workers))
    return count, time.perf_counter() - start


def _our_epoch(root: Path, store, keep: float, workers: int, epoch: int, verify: bool = True) -> tuple[int, float]:
    from sadp_data.adapters.webdataset import ScoredShards

    sampler = ScoredShards.sampler_for(root, store=store, keep_ratio=keep, warmup_epochs=0, anneal_fraction=0.0)
    start = time.perf_counter()
    sampler.set_epoch(epoch)
    shards = ScoredShards(root, sampler, verify=verify)
    loader = shards.decode().to_tuple("x.npy", "y.cls").loader(BATCH, num_workers=workers)
    count = sum(int(batch[1].shape[0]) for batch in loader)
    return count, time.perf_counter() - start


def run_loader_bench(
    data_dir: str | Path | None = None,
    rounds: int = 3,
    workers: tuple[int, ...] = (0, 2),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Returns ``{"backend": "webdataset", "raw": {...}, "results": [...]}`` (see the README)."""
    from sadp_data.shards.writer import write_shards

    source = load_source(data_dir, limit)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "shards"
        shard_size = -(-len(source) // 12)  # 12 shards: 5,000 samples each for Fashion-MNIST
        index = write_shards(source, root, shard_size=shard_size, progress=progress)
        for shard in range(len(index.shards)):
            index.shard_path(shard).read_bytes()
        store = index.open_store()
        _our_epoch(root, store, 0.5, 0, 0)  # warm-up: loads the compiled planning kernels once

        def measure(config: tuple, round_number: int) -> tuple[int, float]:
            kind, keep, count_workers = config
            if kind == "raw":
                return _raw_epoch(index, count_workers)
            return _our_epoch(root, store, keep, count_workers, round_number + 1, verify=kind == "ours")

        configs = configurations(workers) + [("unverified", 1.0, w) for w in workers]
        times, counts = measure_rounds(configs, rounds, measure, "bench loader", progress)
        store.close()

    settings = {"samples": counts[configs[0]], "batch_size": BATCH, "rounds": rounds, "shard_size": shard_size}
    result = result_record("webdataset", configs, times, counts, workers, settings)
    result["checksum"] = [_checksum_cost(times, w) for w in workers]
    return result


def _checksum_cost(times: dict, workers: int) -> dict[str, Any]:
    """Epoch time at keep 1.0 with the per-sample crc32c checked vs not: what verification costs."""
    verified, unverified = times[("ours", 1.0, workers)], times[("unverified", 1.0, workers)]
    low, high = ratio_interval(verified, unverified, statistics.median)
    return {
        "num_workers": workers,
        "epoch_time_s_verified": statistics.median(verified),
        "epoch_time_s_unverified": statistics.median(unverified),
        "epoch_time_ratio": statistics.median(verified) / statistics.median(unverified),
        "epoch_time_ratio_ci95": [low, high],
    }


def run_torch_bench(
    data_dir: str | Path | None = None,
    rounds: int = 3,
    workers: tuple[int, ...] = (0, 2),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The loader bench for plain PyTorch: ``DataLoader(shuffle=True)`` vs ``sadp_data.wrap`` at each keep ratio.

    Both read the same map-style Fashion-MNIST dataset (``sadp_data.sources.datasets.FashionMNIST``: one
    uint8 → float image per item) with batch size ``BATCH``; ours is ``wrap(DataLoader(dataset), sampler)``
    over an ``SADPSampler`` whose store holds a score for every example. Each timed epoch includes
    building the loader and, for ours, making the epoch's plan and looking up the weights. Rounds and
    medians as for the WebDataset bench; same JSON shape, with ``"backend": "torch"``.
    """
    from torch.utils.data import DataLoader

    from sadp_data.loader import wrap
    from sadp_data.sampler import SADPSampler
    from sadp_data.sources.datasets import FashionMNIST
    from sadp_data.store import ScoreStore

    dataset = FashionMNIST(data_dir, "train", limit=limit)
    with tempfile.TemporaryDirectory() as scratch:
        store = ScoreStore.create(Path(scratch) / "scores.zarr", len(dataset))
        fill_scores(store, len(dataset))

        def measure(config: tuple, round_number: int) -> tuple[int, float]:
            kind, keep, count_workers = config
            start = time.perf_counter()
            if kind == "raw":
                loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=count_workers)
            else:
                sampler = SADPSampler(store, keep_ratio=keep, warmup_epochs=0, anneal_fraction=0.0)
                sampler.set_epoch(round_number + 1)
                loader = wrap(DataLoader(dataset, batch_size=BATCH, num_workers=count_workers), sampler)
            count = sum(int(batch[1].shape[0]) for batch in loader)
            return count, time.perf_counter() - start

        measure(("ours", 0.5, 0), -1)  # warm-up: loads the compiled planning kernels once
        configs = configurations(workers)
        times, counts = measure_rounds(configs, rounds, measure, "bench loader torch", progress)
        store.close()
    settings = {"samples": len(dataset), "batch_size": BATCH, "rounds": rounds, "dataset": "FashionMNIST (map-style)"}
    return result_record("torch", configs, times, counts, workers, settings)


def format_loader_table(result: dict[str, Any]) -> str:
    raw_name, ours_name = {
        "webdataset": ("raw webdataset", "ScoredShards"),
        "ffcv": ("ffcv Loader RANDOM", "importance_loader"),
        "torch": ("DataLoader(shuffle=True)", "wrap(SADPSampler)"),
    }[result["backend"]]
    lines = [
        "| workers | pipeline | keep | samples/s | epoch (ms) | samples/s vs raw | epoch vs raw |",
        "|---|---|---|---|---|---|---|",
    ]

    def ratio(row: dict[str, Any], name: str) -> str:
        interval = row.get(f"{name}_ci95")  # absent from results written before it was recorded
        bounds = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        return f"{row[name]:.3f}{bounds}"

    for raw in result["raw_by_workers"]:
        lines.append(
            f"| {raw['num_workers']} | {raw_name} | 1.0 | {raw['samples_per_s']:.0f} | "
            f"{raw['epoch_time_s'] * 1e3:.1f} | 1 | 1 |"
        )
        for row in result["results"]:
            if row["num_workers"] == raw["num_workers"]:
                lines.append(
                    f"| {row['num_workers']} | {ours_name} | {row['keep_ratio']} | {row['samples_per_s']:.0f} | "
                    f"{row['epoch_time_s'] * 1e3:.1f} | {ratio(row, 'samples_per_s_vs_raw')} | "
                    f"{ratio(row, 'epoch_time_vs_raw')} |"
                )
    table = "\n".join(lines)
    if any("epoch_time_vs_raw_ci95" in row for row in result["results"]):
        table += "\n\nRatios: [95 % bootstrap interval over the timed rounds/turns]."
    for row in result.get("checksum", []):
        low, high = row["epoch_time_ratio_ci95"]
        table += (
            f"\nPer-sample crc32c check, {row['num_workers']} workers: keep-1.0 epoch "
            f"{row['epoch_time_ratio']:.3f}× [{low:.3f}, {high:.3f}] the unverified one"
        )
    return table
