"""What the loader bench's backends share: configurations, interleaved rounds, ratio intervals, the JSON shape."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

KEEP_RATIOS = (1.0, 0.7, 0.5)
BATCH = 128
#: ffcv bench: loaders per configuration, turns per configuration per round, epochs timed per
#: turn, and the share of the fastest and of the slowest turns left out of the mean.
INSTANCES = 3
TURNS_PER_ROUND = 40
EPOCHS_PER_TURN = 5
TRIM = 0.2


def load_source(data_dir: str | Path | None, limit: int | None):
    from sadp_data.sources import open_source
    from sadp_data.sources.datasets import default_data_dir

    source = open_source(str(data_dir or default_data_dir()))
    return source if limit is None else source.head(limit)


def configurations(workers: tuple[int, ...]) -> list[tuple[str, float, int]]:
    """``(pipeline, keep ratio, workers)``: the raw pipeline, then ours at every keep ratio, per worker count."""
    return [("raw", 1.0, w) for w in workers] + [("ours", k, w) for w in workers for k in KEEP_RATIOS]


def measure_rounds(configs: list[tuple], rounds: int, measure, desc: str, progress: bool) -> tuple[dict, dict]:
    """Run every configuration once per round (``measure(config, round) -> (count, seconds)``).

    The order of the configurations is shuffled every round (seeded), so no configuration always
    runs right after the same other one (whose after-effects — threads winding down, caches — would
    otherwise land on it every time).
    """
    from tqdm.auto import tqdm

    times: dict[tuple, list[float]] = {config: [] for config in configs}
    counts: dict[tuple, int] = {}
    rng = np.random.default_rng(0)
    with tqdm(total=rounds * len(configs), desc=desc, disable=not progress) as bar:
        for round_number in range(rounds):
            for position in rng.permutation(len(configs)):
                config = configs[position]
                counts[config], seconds = measure(config, round_number)
                times[config].append(seconds)
                bar.update(1)
    return times, counts


def fill_scores(store, count: int) -> None:
    """Give every example a positive score (uniform in [0.01, 1.01)), so plans carry unequal weights."""
    store.update(np.arange(count), np.random.default_rng(0).random(count, dtype=np.float32) + 0.01)


def ratio_interval(ours: list[float], raw: list[float], statistic, draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of ``statistic(ours) / statistic(raw)`` (epoch times; seeded, so repeatable).

    Resamples each configuration's measurements independently, with replacement: how far the ratio
    could move if the same bench ran again on an equally loaded machine. With the WebDataset and
    torch benches' three rounds it is coarse; with ffcv's dozens of turns it is the ratio's precision.
    """
    rng = np.random.default_rng(0)
    ours_times, raw_times = np.asarray(ours, dtype=np.float64), np.asarray(raw, dtype=np.float64)
    ratios = [
        statistic(rng.choice(ours_times, ours_times.size)) / statistic(rng.choice(raw_times, raw_times.size))
        for _ in range(draws)
    ]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def result_record(
    backend: str, configs, times, counts, workers, settings, statistic=statistics.median
) -> dict[str, Any]:
    """The loader bench's JSON from per-configuration times and counts.

    ``statistic`` (median, or ``trimmed_mean`` for ffcv's many short turns) turns each configuration's epoch
    times into the reported one; the median is always kept as ``epoch_time_median_s``.
    """

    def figures(config: tuple) -> dict[str, float]:
        seconds = statistic(times[config])
        return {
            "samples_per_s": counts[config] / seconds,
            "epoch_time_s": seconds,
            "epoch_time_median_s": statistics.median(times[config]),
        }

    raw = {w: figures(("raw", 1.0, w)) for w in workers}
    results = []
    for w in workers:
        for keep in KEEP_RATIOS:
            config, raw_config = ("ours", keep, w), ("raw", 1.0, w)
            row = {"keep_ratio": keep, "num_workers": w, **figures(config)}
            row["samples_per_s_vs_raw"] = row["samples_per_s"] / raw[w]["samples_per_s"]
            row["epoch_time_vs_raw"] = row["epoch_time_s"] / raw[w]["epoch_time_s"]
            low, high = ratio_interval(times[config], times[raw_config], statistic)
            row["epoch_time_vs_raw_ci95"] = [low, high]
            share = counts[config] / counts[raw_config]  # samples per epoch, ours vs raw
            row["samples_per_s_vs_raw_ci95"] = [share / high, share / low]
            results.append(row)
    return {
        "backend": backend,
        "raw": raw[workers[0]],
        "raw_by_workers": [{"num_workers": w, **raw[w]} for w in workers],
        "results": results,
        "settings": settings,
    }
