"""Loader bench, FFCV backend: ``importance_loader`` against ffcv's own ``RANDOM`` order on one ``.beton``."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sadp_data.bench.loader_common import (
    BATCH,
    EPOCHS_PER_TURN,
    INSTANCES,
    TRIM,
    TURNS_PER_ROUND,
    configurations,
    fill_scores,
    load_source,
    measure_rounds,
    result_record,
)


def trimmed_mean(values, proportion: float = TRIM) -> float:
    """Mean of ``values`` without the lowest and the highest ``proportion`` of them (robust to bursts of load)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(len(ordered) * proportion)
    return float(ordered[cut : len(ordered) - cut].mean())


def build_in_field_order(build: Callable[[], Any], attempts: int = 500) -> Any:
    """``build()`` an ffcv loader until its compiled pipeline processes the fields in declaration order.

    ffcv 1.0.2's ``Graph.group_operations`` pops the pipeline's nodes from a ``set``, so the order
    in which a loader's generated code handles its fields follows the memory addresses of Python
    objects: it changes from one identical loader to the next, and on this bench's pipeline it
    moves the epoch time by ~10 % (fields processed x-first are the slow ones). Both sides of the
    comparison get the same order this way; the order is read from the graph before anything is
    compiled, so a rejected build costs ~0.2 s. Each field order has probability 1/6 with three fields.
    """
    for _ in range(attempts):
        loader = build()
        if all(stage == sorted(stage) for stage in loader.graph.group_operations()):
            return loader
    raise RuntimeError(f"no loader with its fields in declaration order after {attempts} builds")


def run_ffcv_bench(
    data_dir: str | Path | None = None,
    rounds: int = 3,
    workers: tuple[int, ...] = (1, 2),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The loader bench for FFCV: raw ``Loader(order=RANDOM)`` vs ``importance_loader`` at each keep ratio.

    Same fields and pipelines for both, and the same field order in the compiled pipeline
    (``build_in_field_order``: without it, which loader happened to get the fast order decided the
    comparison). Each configuration gets ``INSTANCES`` loaders, each warmed up by one untimed epoch
    (compilation, page cache); then the configurations take turns in a shuffled order,
    ``rounds × TURNS_PER_ROUND`` turns each, a turn timing ``EPOCHS_PER_TURN`` epochs of the
    configuration's next loader. A configuration's epoch time is the ``TRIM``-trimmed mean of its
    turns (an ffcv epoch of Fashion-MNIST lasts ~30 ms, so bursts of load from other processes are
    large; they land in the cut top tail); medians are kept in the JSON too. Each of our epochs
    includes making its plan. Same JSON shape as the WebDataset bench, with ``"backend": "ffcv"``,
    plus ``targets`` (``ffcv_targets``).
    """
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.loader import Loader, OrderOption

    from sadp_data.adapters.ffcv import importance_loader, open_sidecar, write_beton
    from sadp_data.sampler import SADPSampler

    source = load_source(data_dir, limit)
    with tempfile.TemporaryDirectory() as scratch:
        path = write_beton(source, Path(scratch) / "data.beton")
        store = open_sidecar(path)
        fill_scores(store, len(source))

        def build(config: tuple):
            kind, keep, count_workers = config
            options = {
                "batch_size": BATCH,
                "num_workers": count_workers,
                "pipelines": {"x": [NDArrayDecoder()], "y": [IntDecoder()], "index": [IntDecoder()]},
            }
            if kind == "raw":
                return Loader(str(path), order=OrderOption.RANDOM, drop_last=False, **options)
            sampler = SADPSampler(store, keep_ratio=keep, warmup_epochs=0, anneal_fraction=0.0)
            return importance_loader(path, sampler, **options)

        configs = configurations(workers)
        loaders = {
            config: [build_in_field_order(partial(build, config)) for _ in range(INSTANCES)] for config in configs
        }
        for instances in loaders.values():
            for loader in instances:
                for _ in loader:
                    pass

        def measure(config: tuple, turn: int) -> tuple[int, float]:
            loader = loaders[config][turn % INSTANCES]
            start = time.perf_counter()
            for _ in range(EPOCHS_PER_TURN):
                count = sum(int(batch[1].shape[0]) for batch in loader)
            return count, (time.perf_counter() - start) / EPOCHS_PER_TURN

        turns = rounds * TURNS_PER_ROUND
        times, counts = measure_rounds(configs, turns, measure, "bench loader ffcv", progress)
        loaders.clear()
        store.close()
    settings = {
        "samples": len(source),
        "batch_size": BATCH,
        "rounds": rounds,
        "timed": f"{TRIM:.0%}-trimmed mean over {turns} interleaved turns of {EPOCHS_PER_TURN} epochs per "
        f"configuration, rotating over {INSTANCES} loaders per configuration, all with their fields in "
        "declaration order",
    }
    result = result_record("ffcv", configs, times, counts, workers, settings, statistic=trimmed_mean)
    result["targets"] = ffcv_targets(result)
    return result


def ffcv_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The FFCV targets, per worker count: samples/s at keep 1.0 ≥ 0.98 × raw; epoch at keep 0.5 ≤ 0.55 × raw."""
    from sadp_data.bench.targets import target

    targets = {}
    for row in result["results"]:
        workers = row["num_workers"]
        if row["keep_ratio"] == 1.0:
            targets[f"ffcv_keep1_samples_per_s_vs_raw_w{workers}"] = target(
                f"ffcv, {workers} worker(s): samples/s at keep 1.0 vs raw Loader",
                row["samples_per_s_vs_raw"],
                0.98,
                ">=",
            )
        elif row["keep_ratio"] == 0.5:
            targets[f"ffcv_keep05_epoch_time_vs_raw_w{workers}"] = target(
                f"ffcv, {workers} worker(s): epoch time at keep 0.5 vs raw Loader", row["epoch_time_vs_raw"], 0.55, "<="
            )
    return targets
