"""The demo: train a spiking CNN on Fashion-MNIST with full data, random pruning and SADP.

* ``full``: the user's plain loop — ``DataLoader(shuffle=True)`` and mean cross-entropy;
* ``random``: uniform dynamic pruning — a fresh random ``keep_ratio`` subset each pruned epoch;
* ``sadp``: importance sampling by the spike-aware score (the method's defaults: the draw trained on
  unweighted, the ``decreasing`` schedule), scores in a Zarr sidecar.

Both pruned methods spend the same budget (warm-up and anneal epochs on full data). The three runs
train interleaved through the harness (``sadp_data.bench.harness``), like the ``train`` bench. The
result reports like a bench result: the ``run`` record of ``sadp_data.bench.suite`` (command, start,
wall time, load, machine), the load sampled after every epoch, and one line of conclusion.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .harness import RunSpec, build_run, train_runs
from .machine import machine_info
from .suite import run_record
from .training_data import DemoConfig, prepare_data

METHODS = ("full", "random", "sadp")


def run_demo(
    config: DemoConfig,
    data_dir: str | Path | None = None,
    workdir: str | Path | None = None,
    show_progress: bool = True,
    command: str = "sadp-data demo",
    quick: bool = False,
) -> dict[str, Any]:
    """Train the three methods and return the figures (see ``README.md`` for the JSON shape).

    Every run's last epoch is evaluated on the whole test set, so each accuracy curve ends on the
    method's ``test_accuracy``. ``command`` and ``quick`` go into the ``run`` record.
    """
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    loads: list[float] = []
    specs = [
        RunSpec("full", "full", 1.0),
        RunSpec("random", "random", config.keep_ratio),
        RunSpec("sadp", "sadp", config.keep_ratio, "spike_aware"),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data = prepare_data(config, data_dir, folder)
        runs = [build_run(spec, data, config) for spec in specs]
        final = train_runs(
            runs,
            data,
            config,
            show_progress=show_progress,
            after_epoch=lambda epoch: loads.append(_load()),
            last_on_full_test=True,
        )
        store = runs[-1].store
        store.close()
        scored = int((store.seen() > 0).sum())
    full = runs[0]
    methods = {}
    for run in runs:
        theoretical = 1.0 if run.sampler is None else run.sampler.theoretical_speedup()
        speedup = full.train_time_s / run.train_time_s
        methods[run.name] = {
            "test_accuracy": final[run.name],
            "train_time_s": run.train_time_s,
            "speedup": speedup,
            "theoretical_speedup": theoretical,
            "speedup_ratio": speedup / theoretical,
            "examples_seen": run.examples_seen,
            "accuracy_per_epoch": run.accuracy_per_epoch,
            "time_per_epoch_s": run.time_per_epoch,
        }
    run = run_record(command, "demo", quick, started, time.perf_counter() - clock, machine_info())
    return {
        "config": asdict(config),
        "methods": methods,
        "scored_examples": scored,
        "conclusion": conclusion(methods),
        "load_per_epoch": loads,
        "timings_distorted": load_warning(loads, run["machine"]["cpus_usable"]) is not None,
        "run": run,
    }


def _load() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def conclusion(methods: dict[str, dict[str, Any]]) -> str:
    """One line: SADP's accuracy against full data's (difference in points), its share of full data's
    training time, and random pruning's accuracy."""
    sadp, full, random = methods["sadp"], methods["full"], methods["random"]
    difference = 100 * (sadp["test_accuracy"] - full["test_accuracy"])
    return (
        f"SADP: {100 * sadp['test_accuracy']:.2f} % vs full {100 * full['test_accuracy']:.2f} % "
        f"({difference:+.2f} pt) at {sadp['train_time_s'] / full['train_time_s']:.2f}x the training time; "
        f"random {100 * random['test_accuracy']:.2f} %"
    )


def load_warning(loads: list[float], cpus: int) -> str | None:
    """A warning when the 1-minute load average, sampled after every epoch, averaged above ``cpus``.

    Then other processes competed for the cores: times and speedups are distorted (the interleaved
    training keeps the methods comparable, but not the absolute times). ``None`` otherwise.
    """
    if not loads or sum(loads) / len(loads) <= cpus:
        return None
    return (
        f"warning: timings distorted: the load average averaged {sum(loads) / len(loads):.1f} during the run, "
        f"above this machine's {cpus} usable CPU cores (other processes competed for them); rerun on an idle "
        "machine for representative times"
    )


def summary(result: dict[str, Any]) -> str:
    """What the demo prints: the table, the conclusion and, on a loaded machine, the load warning."""
    warning = load_warning(result["load_per_epoch"], result["run"]["machine"]["cpus_usable"])
    return "\n".join([format_table(result), result["conclusion"], *([warning] if warning else [])])


def format_table(result: dict[str, Any]) -> str:
    """The demo's result table (plain text, Markdown-compatible)."""
    lines = [
        "| method | test acc | train time (s) | speedup | theoretical | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["methods"].items():
        lines.append(
            f"| {name} | {100 * figures['test_accuracy']:.2f} % | {figures['train_time_s']:.1f} | "
            f"{figures['speedup']:.3f} | {figures['theoretical_speedup']:.3f} | {figures['speedup_ratio']:.3f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """PNG of evaluation accuracy against cumulative training time, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, figures in result["methods"].items():
        times, elapsed = [], 0.0
        for seconds in figures["time_per_epoch_s"]:
            elapsed += seconds
            times.append(elapsed)
        axis.plot(times, [100 * a for a in figures["accuracy_per_epoch"]], marker="o", label=name)
    config = result["config"]
    axis.set_xlabel("training time (s)")
    axis.set_ylabel(f"test accuracy (%), first {config['eval_size']:,}; last epoch all {config['test_size']:,}")
    axis.set_title(f"{config['dataset']}, conv SNN T={config['time_steps']}, keep ratio {config['keep_ratio']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
