"""The demo: train a spiking CNN on Fashion-MNIST with full data, random pruning and SADP.

* ``full``: the user's plain loop — ``DataLoader(shuffle=True)`` and mean cross-entropy;
* ``random``: uniform dynamic pruning — a fresh random ``keep_ratio`` subset each pruned epoch;
* ``sadp``: importance sampling by the spike-aware score (the method's defaults: the draw trained on
  unweighted, the ``decreasing`` schedule), scores in a Zarr sidecar.

Both pruned methods spend the same budget (warm-up and anneal epochs on full data). The three runs
train interleaved through the harness (``sadp_data.bench.harness``), like the ``train`` bench.
"""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .harness import RunSpec, build_run, train_runs
from .training_data import DemoConfig, prepare_data

METHODS = ("full", "random", "sadp")


def run_demo(
    config: DemoConfig,
    data_dir: str | Path | None = None,
    workdir: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the three methods and return the figures (see ``README.md`` for the JSON shape)."""
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
        final = train_runs(runs, data, config, show_progress=show_progress)
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
    return {
        "config": asdict(config),
        "methods": methods,
        "scored_examples": scored,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }


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
    axis.set_ylabel(f"accuracy on {config['eval_size']} test examples (%)")
    axis.set_title(f"{config['dataset']}, conv SNN T={config['time_steps']}, keep ratio {config['keep_ratio']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
