"""Train bench: end-to-end accuracy and wall time of every pruning method against full data.

For each dataset and seed, one run per (method, keep ratio) plus one full-data run train the same
conv SNN from the same initial weights with the same optimizer, learning-rate schedule and epochs
(the harness's training loop, ``sadp_data.bench.harness``: ``build_run`` and ``train_runs``). All runs of a (dataset,
seed) are trained together with their steps interleaved, so load from other processes on a shared
machine slows every method alike and each run's time — the sum of its own steps (data, forward,
scoring, backward, update; evaluation excluded) — stays comparable. Every run that scores (SADP with
the spike-aware score, loss-based methods with the loss) writes into its own store: no method sees
another's scores; each store's writer persists once per ``flush_interval`` of its run's own training
time, as when the run trains alone. One-off costs of the process are paid before timing starts.

* Fashion-MNIST goes through ``sadp_data.wrap`` (full data: the plain ``DataLoader(shuffle=True)``
  loop); the N-MNIST subset (1,000 training recordings, 100 test recordings) through scored shards
  and the WebDataset adapter, events integrated into frames at load time.
* Per run: final test accuracy, accuracy after every epoch (on ``eval_size`` test examples), training
  time per epoch, theoretical speedup ``E / Σ_e k_e``, and for runs with a store a histogram of the
  store's scores after every epoch.
* Summary per (dataset, method, keep ratio) over seeds: accuracy mean ± std (sample std), measured
  speedup (the same seed's full-data time over the run's, averaged), its ratio to the theoretical
  one, and time-to-accuracy: training time until the per-epoch accuracy first reaches the full-data
  runs' mean final per-epoch accuracy minus 0.5 points (``None`` when never reached).

Trade-off: sizes are chosen for the 2-core CPU this project is developed on (``TrainBenchConfig``:
about 33 min on an otherwise idle machine — 7.4 min per Fashion-MNIST seed, 3.5 min per N-MNIST
seed, 15 runs each): a narrower conv SNN (8 and 16 channels), 6,000 Fashion-MNIST training images
and 8 epochs, so single runs reach about 84 % and differences of a few tenths of a point are within
seed-to-seed noise.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sadp_data.bench.harness import Run, RunSpec, build_run, train_runs
from sadp_data.bench.targets import target
from sadp_data.bench.training_data import DemoConfig, prepare_data

#: Points below full data's final accuracy that count as "reached" for time-to-accuracy.
TIME_TO_ACCURACY_MARGIN = 0.005
DATASETS = ("fashion-mnist", "nmnist")


def _fashion_config() -> DemoConfig:
    return DemoConfig(train_size=6000, test_size=10000, eval_size=2000, epochs=8, channels=(8, 16))


def _nmnist_config() -> DemoConfig:
    return DemoConfig(
        train_size=1000,
        test_size=100,
        eval_size=100,
        epochs=8,
        batch_size=32,
        time_steps=8,
        channels=(8, 16),
        dataset="nmnist",
    )


@dataclass
class TrainBenchConfig:
    """What the train bench runs (defaults: the full suite, about 33 min on 2 idle CPU cores).

    ``methods``: pruning methods to run at every keep ratio (``None``: every method registered in
    ``sadp_data.methods``); ``full`` always runs once per seed. ``fashion`` and ``nmnist`` hold
    each dataset's sizes, epochs, model width and schedule (``DemoConfig``; its ``seed`` and
    ``keep_ratio`` are set per run).
    """

    datasets: tuple[str, ...] = DATASETS
    seeds: tuple[int, ...] = (0, 1, 2)
    keep_ratios: tuple[float, ...] = (0.5, 0.7)
    methods: tuple[str, ...] | None = None
    fashion: DemoConfig = field(default_factory=_fashion_config)
    nmnist: DemoConfig = field(default_factory=_nmnist_config)
    histogram_bins: int = 40

    @classmethod
    def quick(cls) -> TrainBenchConfig:
        """One seed on tiny subsets (≤ 2 min): a smoke test, accuracy is not the point."""
        return cls(
            seeds=(0,),
            fashion=dataclasses.replace(_fashion_config(), train_size=1536, test_size=500, eval_size=500, epochs=3),
            nmnist=dataclasses.replace(_nmnist_config(), train_size=320, epochs=3),
        )

    def with_sizes(
        self, train_size: int | None = None, epochs: int | None = None, test_size: int | None = None
    ) -> TrainBenchConfig:
        """The same bench with every dataset's training size, epochs or test size overridden."""
        changes = {
            name: value
            for name, value in (("train_size", train_size), ("epochs", epochs), ("test_size", test_size))
            if value is not None
        }
        if test_size is not None:
            changes["eval_size"] = test_size
        return dataclasses.replace(
            self,
            fashion=dataclasses.replace(self.fashion, **changes),
            nmnist=dataclasses.replace(self.nmnist, **changes),
        )

    def dataset_config(self, dataset: str) -> DemoConfig:
        if dataset == "fashion-mnist":
            return self.fashion
        if dataset == "nmnist":
            return self.nmnist
        raise ValueError(f"unknown train-bench dataset {dataset!r}; choose from {', '.join(DATASETS)}")


def choose_methods(requested: tuple[str, ...] | None) -> dict[str, str | None]:
    """The pruning methods to run (``None``: every one in ``sadp_data.methods``), each with the score
    variant its store records (``None``: no store); ``full`` runs anyway and is left out here."""
    from sadp_data.methods import METHODS

    names = [name for name in (METHODS if requested is None else requested) if name != "full"]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return {name: METHODS[name].score for name in names}


def _run_specs(methods: dict[str, str | None], keep_ratios: tuple[float, ...]) -> list[RunSpec]:
    specs = [RunSpec("full", "full", 1.0)]
    specs += [RunSpec(f"{name}@{keep:g}", name, keep, score) for name, score in methods.items() for keep in keep_ratios]
    return specs


def score_histogram(scores: np.ndarray, seen: np.ndarray, bins: int) -> dict[str, Any]:
    """Counts of the scored examples' scores in ``bins`` log-spaced bins between their extremes."""
    values = scores[seen > 0]
    positive = values[values > 0]
    result: dict[str, Any] = {"scored": int(values.size), "zeros": int(values.size - positive.size)}
    if positive.size == 0:
        return {**result, "edges": [], "counts": []}
    low, high = float(positive.min()), float(positive.max())
    edges = np.geomspace(low, high, bins + 1) if high > low else np.array([low, high * (1 + 1e-6) + 1e-30])
    counts, edges = np.histogram(positive, bins=edges)
    return {**result, "edges": edges.tolist(), "counts": counts.tolist()}


def _train_group(
    dataset: str, seed: int, specs: list[RunSpec], config: TrainBenchConfig, data_dir, show_progress: bool
) -> list[dict[str, Any]]:
    """Train every run of one (dataset, seed) together; returns their JSON entries."""
    settings = dataclasses.replace(config.dataset_config(dataset), seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        data = prepare_data(settings, data_dir, Path(scratch))
        runs = [build_run(spec, data, settings) for spec in specs]
        for run in runs:
            if run.store is not None:
                # Interleaved, a run trains during 1/len(runs) of the wall time; its store's writer, which
                # persists every flush_interval seconds of wall time, would cost it len(runs) times what it
                # costs a run training alone (about 10 % instead of < 1 % here). Keep one write per
                # flush_interval seconds of the run's own training, as when it trains alone.
                run.store.flush_interval *= len(runs)
        histograms: dict[str, list[dict[str, Any]]] = {run.name: [] for run in runs if run.store is not None}

        def record_histograms(epoch: int) -> None:
            for run in runs:
                if run.store is not None:
                    entry = score_histogram(run.store.scores(), run.store.seen(), config.histogram_bins)
                    histograms[run.name].append({"epoch": epoch, **entry})

        final = train_runs(
            runs,
            data,
            settings,
            desc=f"train {dataset} seed {seed}",
            show_progress=show_progress,
            after_epoch=record_histograms,
        )
        for run in runs:
            if run.store is not None:
                run.store.close()
    full_time = runs[0].train_time_s
    return [
        _run_entry(dataset, seed, spec, run, final[run.name], full_time, histograms)
        for spec, run in zip(specs, runs, strict=True)
    ]


def _run_entry(
    dataset: str, seed: int, spec: RunSpec, run: Run, accuracy: float, full_time: float, histograms: dict
) -> dict[str, Any]:
    entry = {
        "dataset": dataset,
        "method": spec.method,
        "keep_ratio": spec.keep_ratio,
        "seed": seed,
        "test_accuracy": accuracy,
        "train_time_s": run.train_time_s,
        "theoretical_speedup": 1.0 if run.sampler is None else run.sampler.theoretical_speedup(),
        "speedup": full_time / run.train_time_s,
        "accuracy_per_epoch": run.accuracy_per_epoch,
        "time_per_epoch_s": run.time_per_epoch,
        "examples_seen": run.examples_seen,
        "score": spec.score,
    }
    if run.name in histograms:
        entry["score_histograms"] = histograms[run.name]
    return entry


def _settings(config: DemoConfig) -> dict[str, Any]:
    """A dataset's settings for the JSON, without the per-run ones (seed, keep ratio)."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in ("seed", "keep_ratio")}


def run_train_bench(
    config: TrainBenchConfig,
    data_dir: str | Path | None = None,
    nmnist_dir: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train everything; returns ``{"runs": [...], "summary": [...], "targets": {...}, "config": {...}}``.

    ``data_dir`` is the Fashion-MNIST IDX folder (default: the repository's copy), ``nmnist_dir`` the
    N-MNIST folder (required when ``"nmnist"`` is among ``config.datasets``).
    """
    methods = choose_methods(config.methods)
    for dataset in config.datasets:
        config.dataset_config(dataset)  # raises for an unknown name before anything is trained
    if "nmnist" in config.datasets and (nmnist_dir is None or not Path(nmnist_dir).is_dir()):
        raise FileNotFoundError(f"the train bench's nmnist dataset needs an N-MNIST folder; {nmnist_dir} is not one")
    specs = _run_specs(methods, config.keep_ratios)
    runs: list[dict[str, Any]] = []
    for dataset in config.datasets:
        folder = nmnist_dir if dataset == "nmnist" else data_dir
        for seed in config.seeds:
            runs += _train_group(dataset, seed, specs, config, folder, show_progress)
    summary = summarise(runs)
    return {
        "runs": runs,
        "summary": summary,
        "targets": train_targets(summary),
        "config": {
            "datasets": {name: _settings(config.dataset_config(name)) for name in config.datasets},
            "seeds": list(config.seeds),
            "keep_ratios": list(config.keep_ratios),
            "methods": ["full", *methods],
            "time_to_accuracy_margin": TIME_TO_ACCURACY_MARGIN,
        },
    }


def time_to(accuracies: list[float], times: list[float], target: float) -> float | None:
    """Cumulative training time at the end of the first epoch whose accuracy reaches ``target``."""
    elapsed = 0.0
    for accuracy, seconds in zip(accuracies, times, strict=True):
        elapsed += seconds
        if accuracy >= target:
            return elapsed
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method, keep ratio): means over seeds (see the module docstring)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["method"], run["keep_ratio"]), []).append(run)
    targets = {}
    for dataset in {run["dataset"] for run in runs}:
        full = [run for run in runs if run["dataset"] == dataset and run["method"] == "full"]
        if full:
            targets[dataset] = statistics.fmean(r["accuracy_per_epoch"][-1] for r in full) - TIME_TO_ACCURACY_MARGIN
    rows = []
    for (dataset, method, keep), members in groups.items():
        accuracy, accuracy_std = _mean_std([r["test_accuracy"] for r in members])
        speedup = statistics.fmean(r["speedup"] for r in members)
        theoretical = statistics.fmean(r["theoretical_speedup"] for r in members)
        reached = []
        if dataset in targets:
            times = [time_to(r["accuracy_per_epoch"], r["time_per_epoch_s"], targets[dataset]) for r in members]
            reached = [t for t in times if t is not None]
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "keep_ratio": keep,
                "seeds": len(members),
                "accuracy_mean": accuracy,
                "accuracy_std": accuracy_std,
                "train_time_s_mean": statistics.fmean(r["train_time_s"] for r in members),
                "speedup_mean": speedup,
                "theoretical_speedup": theoretical,
                "speedup_ratio": speedup / theoretical,
                "time_to_accuracy_target": targets.get(dataset),
                "time_to_accuracy_s": statistics.fmean(reached) if reached else None,
                "time_to_accuracy_reached": len(reached),
            }
        )
    return rows


def train_targets(summary: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The training targets per dataset, where the runs they compare exist (PASS/MISS in ``pass``).

    SADP at keep 0.7 within 0.3 points of full-data accuracy and measured speedup ≥ 0.95 × the
    theoretical one; at keep 0.5 SADP's accuracy ≥ random dynamic pruning's. Means over seeds.
    """
    row = {(r["dataset"], r["method"], r["keep_ratio"]): r for r in summary}
    targets: dict[str, dict[str, Any]] = {}
    for dataset in sorted({r["dataset"] for r in summary}):
        full, sadp7 = row.get((dataset, "full", 1.0)), row.get((dataset, "sadp", 0.7))
        sadp5, random5 = row.get((dataset, "sadp", 0.5)), row.get((dataset, "random", 0.5))
        if full and sadp7:
            gap = 100 * (full["accuracy_mean"] - sadp7["accuracy_mean"])
            targets[f"{dataset}: sadp@0.7 accuracy gap"] = target(
                f"{dataset}: full − SADP accuracy at k = 0.7 (points, mean of {sadp7['seeds']} seeds)", gap, 0.3, "<="
            )
            targets[f"{dataset}: sadp@0.7 speedup ratio"] = target(
                f"{dataset}: SADP measured ÷ theoretical speedup at k = 0.7", sadp7["speedup_ratio"], 0.95, ">="
            )
        if sadp5 and random5:
            margin = 100 * (sadp5["accuracy_mean"] - random5["accuracy_mean"])
            targets[f"{dataset}: sadp@0.5 vs random"] = target(
                f"{dataset}: SADP − random accuracy at k = 0.5 (points)", margin, 0.0, ">="
            )
    return targets


def _format_time(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def format_train_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table, one block per dataset, full data first."""
    lines = [
        "| dataset | method | keep | seeds | accuracy (%) | train time (s) | speedup | theoretical | ratio "
        "| time to acc. (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(
        result["summary"], key=lambda r: (r["dataset"], r["method"] != "full", r["method"], r["keep_ratio"])
    )
    for r in ordered:
        reached = f" ({r['time_to_accuracy_reached']}/{r['seeds']})" if r["time_to_accuracy_target"] is not None else ""
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['keep_ratio']:g} | {r['seeds']} | "
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} | {r['train_time_s_mean']:.1f} | "
            f"{r['speedup_mean']:.3f} | {r['theoretical_speedup']:.3f} | {r['speedup_ratio']:.3f} | "
            f"{_format_time(r['time_to_accuracy_s'])}{reached} |"
        )
    return "\n".join(lines)
