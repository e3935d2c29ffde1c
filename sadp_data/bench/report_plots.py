"""The report's figures: accuracy against time, speedups, score histograms, loader throughput, kernel scaling."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

LOADER_ORDER = ("torch", "webdataset", "ffcv", "dvs", "remote")
#: Loader results with their own table, not in the throughput plot.
OWN_TABLE = ("dvs", "remote")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean cumulative training time and mean accuracy after each epoch, over seeds."""
    epochs = min(len(run["accuracy_per_epoch"]) for run in runs)
    times, accuracies, elapsed = [], [], 0.0
    for epoch in range(epochs):
        elapsed += statistics.fmean(run["time_per_epoch_s"][epoch] for run in runs)
        times.append(elapsed)
        accuracies.append(100 * statistics.fmean(run["accuracy_per_epoch"][epoch] for run in runs))
    return times, accuracies


def _groups(runs: list[dict[str, Any]], dataset: str) -> dict[tuple[str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        if run["dataset"] == dataset:
            groups.setdefault((run["method"], run["keep_ratio"]), []).append(run)
    return groups


def plot_accuracy_vs_time(train: dict[str, Any], dataset: str, path: Path) -> None:
    """Mean accuracy after each epoch against mean cumulative training time; one panel per keep ratio."""
    plt = _pyplot()
    groups = _groups(train["runs"], dataset)
    keeps = sorted({keep for method, keep in groups if method != "full"}) or [1.0]
    figure, axes = plt.subplots(1, len(keeps), figsize=(6 * len(keeps), 4.2), squeeze=False, sharey=True)
    for axis, keep in zip(axes[0], keeps, strict=True):
        for (method, ratio), members in sorted(groups.items()):
            if method == "full" or ratio == keep:
                times, accuracies = _mean_curve(members)
                style = {"color": "black", "linewidth": 2.2} if method == "full" else {}
                axis.plot(times, accuracies, marker="o", markersize=3, label=method, **style)
        axis.set_title(f"{dataset}: keep ratio {keep:g} (mean of seeds)")
        axis.set_xlabel("training time (s)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    config = train["config"]["datasets"][dataset]
    axes[0][0].set_ylabel(f"accuracy on {config['eval_size']} test examples (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_speedups(train: dict[str, Any], path: Path) -> None:
    """Measured speedup per method and keep ratio as bars, the theoretical one as a black tick on each."""
    plt = _pyplot()
    rows = [row for row in train["summary"] if row["method"] != "full"]
    datasets = sorted({row["dataset"] for row in rows})
    methods = sorted({row["method"] for row in rows})
    keeps = sorted({row["keep_ratio"] for row in rows})
    figure, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6.5 * max(1, len(datasets)), 4), squeeze=False)
    width = 0.8 / max(1, len(methods))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, dataset in zip(axes[0], datasets, strict=False):
        by_key = {(r["method"], r["keep_ratio"]): r for r in rows if r["dataset"] == dataset}
        for position, method in enumerate(methods):
            xs, measured, theoretical = [], [], []
            for group, keep in enumerate(keeps):
                if (method, keep) in by_key:
                    xs.append(group + (position - (len(methods) - 1) / 2) * width)
                    measured.append(by_key[(method, keep)]["speedup_mean"])
                    theoretical.append(by_key[(method, keep)]["theoretical_speedup"])
            axis.bar(xs, measured, width, label=method, color=colors[position % len(colors)])
            axis.plot(xs, theoretical, "_", color="black", markersize=14, markeredgewidth=2)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(keeps)), [f"keep {keep:g}" for keep in keeps])
        axis.set_ylabel("speedup over full data (bars measured, ticks theoretical)")
        axis.set_title(dataset)
        axis.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_score_histograms(train: dict[str, Any], path: Path) -> bool:
    """SADP's store scores after every epoch (first seed), one panel per dataset and keep ratio."""
    plt = _pyplot()
    panels = []
    for run in train["runs"]:
        if run["method"] == "sadp" and run.get("score_histograms"):
            first = min(r["seed"] for r in train["runs"] if r["dataset"] == run["dataset"] and r["method"] == "sadp")
            if run["seed"] == first:
                panels.append(run)
    if not panels:
        return False
    datasets = sorted({run["dataset"] for run in panels})
    keeps = sorted({run["keep_ratio"] for run in panels})
    figure, axes = plt.subplots(len(datasets), len(keeps), figsize=(5 * len(keeps), 3.6 * len(datasets)), squeeze=False)
    colormap = plt.get_cmap("viridis")
    for axis in axes.flat:
        axis.axis("off")
    for run in panels:
        axis = axes[datasets.index(run["dataset"])][keeps.index(run["keep_ratio"])]
        axis.axis("on")
        histograms = [h for h in run["score_histograms"] if h["counts"]]
        for number, histogram in enumerate(histograms):
            color = colormap(number / max(1, len(histograms) - 1))
            axis.stairs(histogram["counts"], histogram["edges"], color=color, label=f"epoch {histogram['epoch'] + 1}")
        axis.set_xscale("log")
        axis.set_xlabel("spike-aware score")
        axis.set_title(f"{run['dataset']}, SADP keep {run['keep_ratio']:g}, seed {run['seed']}", fontsize=9)
        axis.set_ylabel("examples")
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_loader_throughput(loaders: dict[str, dict[str, Any]], path: Path) -> None:
    """Samples/s of each backend's plain loader and of ours at every keep ratio, per worker count."""
    plt = _pyplot()
    backends = [name for name in LOADER_ORDER if name in loaders and name not in OWN_TABLE]
    figure, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.8), squeeze=False)
    for axis, backend in zip(axes[0], backends, strict=True):
        result = loaders[backend]
        labels, values, colors = [], [], []
        for raw in result["raw_by_workers"]:
            workers = raw["num_workers"]
            labels.append(f"raw\n{workers}w")
            values.append(raw["samples_per_s"])
            colors.append("grey")
            for row in result["results"]:
                if row["num_workers"] == workers:
                    labels.append(f"k={row['keep_ratio']:g}\n{workers}w")
                    values.append(row["samples_per_s"])
                    colors.append("tab:blue")
        axis.bar(range(len(values)), values, color=colors)
        axis.set_xticks(range(len(values)), labels, fontsize=7)
        axis.set_ylabel("samples/s")
        axis.set_title(backend)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_kernel_scaling(kernels: dict[str, Any], path: Path) -> None:
    """``plan_epoch`` seconds against N per backend (solid) and the baselines (dashed), log-log."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for backend in sorted({row["backend"] for row in kernels["results"]}):
        rows = sorted((r for r in kernels["results"] if r["backend"] == backend), key=lambda r: r["n"])
        label = f"plan_epoch {backend}"
        axis.loglog([r["n"] for r in rows], [r["plan_epoch_s"] for r in rows], marker="o", label=label)
    for name in sorted({row["name"] for row in kernels["baselines"]}):
        rows = sorted((r for r in kernels["baselines"] if r["name"] == name), key=lambda r: r["n"])
        axis.loglog([r["n"] for r in rows], [r["seconds"] for r in rows], linestyle="--", marker="x", label=name)
    axis.set_xlabel("examples N")
    axis.set_ylabel("seconds per epoch plan")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
