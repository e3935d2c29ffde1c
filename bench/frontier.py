"""Frontier bench: accuracy against cost for every pruning method, paired over seeds (DESIGN §5).

``sadp-data bench frontier --json bench/results/frontier.json`` trains, for each *part* of the study
(a dataset and an SNN) and each seed, one full-data run and one run per (method, keep ratio), plus
SADP ablation variants, all from the same initial weights (paired seeds), with the same optimizer,
cosine learning-rate schedule and epochs, through the library's three lines (``wrap`` +
``SpikeAwareScorer``). Runs of one (part, seed) train interleaved in one process (``harness.train_runs``)
so machine load hits them alike; (part, seed) groups are spread over ``workers`` processes.

Parts (``FrontierConfig.default``):

* ``fashion-mnist/mlp``: all 60,000 training and 10,000 test images, an MLP SNN (784–256–10, T=4);
  every method at keep ratios 0.3, 0.5, 0.7, and the SADP ablation at 0.5;
* ``fashion-mnist/conv``: the conv SNN (8 and 16 channels) on a 6,000-image subset, all 10,000 test
  images, SADP, random and the two strongest baselines (InfoBatch, ε-greedy) at 0.5;
* ``nmnist/conv``: the N-MNIST subset pooled with its test recordings (1,100) in 5 folds, one fold
  per seed, so every recording is tested once (1,100 test points instead of 100).

Cost is the number of examples forwarded and back-propagated over the whole run (warm-up and anneal
included); every method plans exactly ``round(k·N)`` examples per pruned epoch, so runs at one keep
ratio have equal cost and are compared pairwise. Per run the JSON holds ``dataset, model, method,
variant, options, keep_ratio, realized_keep_ratio, seed, examples_processed, train_time_s,
test_accuracy, accuracy_per_epoch`` and more: the sampler's ``stats()`` per epoch and, for the SADP
runs of the Fashion-MNIST parts, probe diagnostics every ``probe_every`` epochs
(``sadp_data.diagnostics.probe``). The summary gives mean accuracy with 95 % t-intervals, paired
differences SADP − each method at the same cost, speedups, time to full-data accuracy − 0.3 pt, the
plateau check of full data, and the issue's targets. ``write_frontier_report`` turns the JSON into
``FRONTIER.md`` and PNGs beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from sadp_data.bench.harness import RunSpec
from sadp_data.bench.report import target
from sadp_data.bench.train import time_to
from sadp_data.bench.training_data import DemoConfig

#: Points below full data's final mean accuracy that count as reaching it (time-to-accuracy).
TIME_TO_ACCURACY_MARGIN = 0.003
#: Full data has plateaued when its mean accuracy at epoch E−2 is within this of epoch E.
PLATEAU_TOLERANCE = 0.002
#: Every method the study compares (``full`` runs once per seed).
ALL_METHODS = (
    "random",
    "random_static",
    "sadp",
    "infobatch",
    "ucb",
    "epsilon_greedy",
    "loss_proportional",
)


@dataclass(frozen=True)
class Variant:
    """An ablation run: ``method`` with ``options`` (and ``SADPSampler`` settings ``sampler_options``) at
    ``keep_ratio``, labelled ``label``."""

    label: str
    keep_ratio: float
    options: tuple[tuple[str, Any], ...]
    method: str = "sadp"
    sampler_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Part:
    """One block of the study: a dataset and model (``config``), the methods, keep ratios and seeds."""

    name: str
    config: DemoConfig
    methods: tuple[str, ...]
    keep_ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...] = ()
    probe_every: int = 0
    probe_size: int = 256

    def specs(self) -> list[tuple[RunSpec, str]]:
        """``(RunSpec, variant label)`` of every run of one seed; ``full`` first."""
        from sadp_data.methods import METHODS

        runs = [(RunSpec("full", "full", 1.0), "full")]
        for method in self.methods:
            for keep in self.keep_ratios:
                runs.append((RunSpec(f"{method}@{keep:g}", method, keep, METHODS[method].score), method))
        for variant in self.variants:
            score = METHODS[variant.method].score
            name = f"{variant.label}@{variant.keep_ratio:g}"
            spec = RunSpec(name, variant.method, variant.keep_ratio, score, variant.options, variant.sampler_options)
            runs.append((spec, variant.label))
        return runs


def _ablation(keep: float) -> tuple[Variant, ...]:
    """One lever changed at a time from the default ``sadp`` (α = 0, decreasing schedule; ``docs/method.md``),
    and the best baseline given SADP's schedule, so a win can be traced to the score or to the schedule."""
    decreasing = (("schedule", "decreasing"),)
    return (
        Variant("sadp α=1 (Horvitz–Thompson)", keep, (("weight_power", 1.0),)),
        Variant("sadp α=0.5, normalised", keep, (("weight_power", 0.5), ("normalize", True))),
        Variant("sadp constant schedule", keep, (), sampler_options=(("schedule", "constant"),)),
        Variant("sadp staleness 0.2", keep, (("staleness", 0.2),)),
        Variant("sadp α=0.5, target ESS 0.8", keep, (("weight_power", 0.5), ("target_ess", 0.8))),
        Variant("sadp gate 0.25", keep, (("gate", 0.25),)),
        Variant("sadp levers, loss score", keep, (("weight_power", 0.0),), "loss_proportional", decreasing),
        Variant("epsilon_greedy, decreasing schedule", keep, (), "epsilon_greedy", decreasing),
    )


def events_config(
    train_size: int, test_size: int, epochs: int, time_steps: int, channels: tuple[int, int], batch_size: int = 32
) -> DemoConfig:
    """An N-MNIST part's settings: the pooled recordings in 5 folds (fold = seed), every test recording
    evaluated after every epoch."""
    return DemoConfig(
        train_size=train_size,
        test_size=test_size,
        eval_size=test_size,
        epochs=epochs,
        batch_size=batch_size,
        time_steps=time_steps,
        channels=channels,
        dataset="nmnist",
        folds=5,
    )


@dataclass
class FrontierConfig:
    """What the frontier bench runs (``default()``: the study, about 90–100 min on 2 idle CPU cores)."""

    parts: tuple[Part, ...] = field(default_factory=tuple)
    workers: int = 2

    @classmethod
    def default(cls, nmnist: bool = True) -> FrontierConfig:
        seeds = (0, 1, 2, 3, 4)
        mlp = DemoConfig(
            train_size=60000, test_size=10000, eval_size=10000, epochs=14, model="mlp", hidden=(256,), time_steps=4
        )
        conv = DemoConfig(train_size=6000, test_size=10000, eval_size=2000, epochs=12, channels=(8, 16))
        events = events_config(1100, 1100, epochs=12, time_steps=8, channels=(8, 16))
        strongest = ("sadp", "random", "infobatch", "epsilon_greedy")
        parts = [
            Part("fashion-mnist/mlp", mlp, ALL_METHODS, (0.3, 0.5, 0.7), seeds, _ablation(0.5), probe_every=3),
            Part("fashion-mnist/conv", conv, strongest, (0.5,), seeds, probe_every=4, probe_size=128),
        ]
        if nmnist:
            parts.append(Part("nmnist/conv", events, strongest, (0.5,), seeds))
        return cls(tuple(parts))

    @classmethod
    def quick(cls, nmnist: bool = True) -> FrontierConfig:
        """Two seeds on tiny subsets (a few minutes): a smoke test of the whole pipeline."""
        mlp = DemoConfig(train_size=1024, test_size=500, eval_size=500, epochs=4, model="mlp", hidden=(64,))
        events = events_config(160, 40, epochs=3, time_steps=4, channels=(4, 8))
        parts = [
            Part(
                "fashion-mnist/mlp",
                mlp,
                ("random", "sadp", "infobatch", "epsilon_greedy"),
                (0.5,),
                (0, 1),
                _ablation(0.5)[:1],
                probe_every=2,
                probe_size=32,
            )
        ]
        if nmnist:
            parts.append(Part("nmnist/conv", events, ("sadp", "random"), (0.5,), (0, 1)))
        return cls(tuple(parts), workers=2)


def _fresh_scores(kind: str):
    """``fresh(model, x, y)``: scores of ``x`` now, with a throwaway scorer of the ``kind`` variant."""

    def fresh(model, inputs, targets) -> np.ndarray:
        import torch.nn.functional as F
        from sadp_data.adapters.spikingjelly import reset

        from sadp_data.scorer import SpikeAwareScorer

        scorer = SpikeAwareScorer(model, score=kind)
        try:
            outputs = model(inputs)
            scores = scorer.scores(F.cross_entropy(outputs, targets, reduction="none"), outputs, targets)
        finally:
            scorer.remove()
            reset(model)
        return scores.numpy()

    return fresh


def _probe_run(run, spec: RunSpec, probe_x, probe_y, probe_index: np.ndarray, config: DemoConfig) -> dict[str, Any]:
    """``diagnostics.probe`` of one SADP-family run at its current state, with its own λ and α."""
    import torch.nn.functional as F
    from sadp_data.adapters.spikingjelly import reset

    from sadp_data.diagnostics import probe
    from sadp_data.methods import get_method

    method = get_method(spec.method, **spec.method_options)
    stored = np.asarray(run.store.scores())[probe_index].astype(np.float64)
    try:
        return probe(
            run.model,
            probe_x,
            probe_y,
            stored,
            fresh_scores=_fresh_scores(spec.score),
            loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
            batch_size=config.batch_size,
            smoothing=run.sampler.smoothing,
            weight_power=getattr(method, "weight_power", 1.0),
            reset=reset,
        )
    finally:
        run.scorer.discard_pending()  # the probe's forwards are not a training batch


def train_group(part: Part, seed: int, data_dir: str | None, nmnist_dir: str | None, threads: int) -> list[dict]:
    """Train every run of ``part`` for ``seed`` interleaved; returns their JSON entries (runs in a worker)."""
    import torch
    from sadp_data.bench.harness import build_run, train_runs
    from sadp_data.bench.training_data import prepare_data

    torch.set_num_threads(threads)
    config = dataclasses.replace(part.config, seed=seed, fold=seed % part.config.folds if part.config.folds else 0)
    folder = nmnist_dir if config.dataset == "nmnist" else data_dir
    specs = part.specs()
    probes: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = prepare_data(config, folder, Path(scratch))
        runs = [build_run(spec, data, config) for spec, _ in specs]
        for run in runs:
            if run.store is not None:
                run.store.flush_interval *= len(runs)  # one write per interval of the run's own time (train bench)
        probed = [
            (run, spec)
            for run, (spec, _) in zip(runs, specs, strict=True)
            if part.probe_every and spec.method == "sadp"
        ]
        probe_index = probe_x = probe_y = None
        if probed:
            from sadp_data.datasets import FashionMNIST

            rng = np.random.default_rng([seed, 7])
            probe_index = np.sort(rng.choice(data.train_size, part.probe_size, replace=False))
            train = FashionMNIST(folder, "train", limit=config.train_size)
            probe_x = train.images[probe_index].unsqueeze(1).float().div(255.0)
            probe_y = train.labels[probe_index]

        def after_epoch(epoch: int) -> None:
            due = (epoch + 1) % max(1, part.probe_every) == 0 and epoch + 1 < config.epochs
            for run, spec in probed if due else ():
                entry = _probe_run(run, spec, probe_x, probe_y, probe_index, config)
                probes.setdefault(run.name, []).append({"epoch": epoch, **entry})

        final = train_runs(
            runs, data, config, desc=f"{part.name} seed {seed}", show_progress=False, after_epoch=after_epoch
        )
        for run in runs:
            if run.store is not None:
                run.store.close()
    full_time = runs[0].train_time_s
    entries = []
    for run, (spec, label) in zip(runs, specs, strict=True):
        full_examples = config.epochs * data.train_size
        entries.append(
            {
                "dataset": config.dataset,
                "model": config.model,
                "part": part.name,
                "method": spec.method,
                "variant": label,
                "options": spec.method_options,
                "keep_ratio": spec.keep_ratio,
                "realized_keep_ratio": run.examples_seen / full_examples,
                "seed": seed,
                "fold": config.fold if config.folds else None,
                "train_size": data.train_size,
                "test_size": len(data.test_labels),
                "examples_processed": run.examples_seen,
                "train_time_s": run.train_time_s,
                "time_per_epoch_s": run.time_per_epoch,
                "speedup": full_time / run.train_time_s,
                "theoretical_speedup": 1.0 if run.sampler is None else run.sampler.theoretical_speedup(),
                "test_accuracy": final[run.name],
                "accuracy_per_epoch": run.accuracy_per_epoch,
                "stats": [] if run.sampler is None else run.sampler.stats(),
                "probes": probes.get(run.name, []),
            }
        )
    return entries


def _t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    from scipy import stats

    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def _load_adjusted_efficiency(run: dict[str, Any], full: dict[str, Any]) -> float:
    """``Σ_e k_e·t_full(e) / Σ_e t_run(e)``: measured ÷ theoretical speedup, corrected for load that varies by epoch.

    Interleaving makes a load burst hit every run of an epoch in proportion to its work in that
    epoch, but a run whose keep ratio changes over epochs (the ``decreasing`` schedule) does more of
    its work in some epochs than a constant one: the plain ratio then depends on when the machine
    was busy. Weighting full data's time of each epoch by the run's keep ratio of that epoch gives
    the time the run's examples would have taken in the plain loop under the same load; divided by
    the run's time it is the efficiency at constant load (1 = no overhead).
    """
    stats = run.get("stats") or []
    keeps = [s["keep_ratio"] for s in stats] if stats else [1.0] * len(run["time_per_epoch_s"])
    expected = sum(k * t for k, t in zip(keeps, full["time_per_epoch_s"], strict=True))
    return expected / sum(run["time_per_epoch_s"])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per (part, variant, keep ratio), paired differences, plateau checks (see the module docstring)."""
    by_part: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_part.setdefault(run["part"], []).append(run)
    rows, paired, plateau = [], [], {}
    for part, members in by_part.items():
        full = [r for r in members if r["method"] == "full"]
        full_final = statistics.fmean(r["test_accuracy"] for r in full) if full else None
        if full and len(full[0]["accuracy_per_epoch"]) >= 3:
            curve = np.mean([r["accuracy_per_epoch"] for r in full], axis=0)
            change = float(abs(curve[-1] - curve[-3]))
            plateau[part] = {
                "epochs": len(curve),
                "change_last_2_epochs": change,
                "plateaued": change <= PLATEAU_TOLERANCE,
            }
        full_by_seed = {r["seed"]: r for r in full}
        groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for run in members:
            groups.setdefault((run["variant"], run["keep_ratio"]), []).append(run)
        for (variant, keep), group in groups.items():
            accuracy, half = _t_interval([r["test_accuracy"] for r in group])
            theoretical = statistics.fmean(r["theoretical_speedup"] for r in group)
            speedup = statistics.fmean(r["speedup"] for r in group)
            reached = []
            if full_final is not None:
                goal = full_final - TIME_TO_ACCURACY_MARGIN
                times = [time_to(r["accuracy_per_epoch"], r["time_per_epoch_s"], goal) for r in group]
                reached = [t for t in times if t is not None]
            rows.append(
                {
                    "part": part,
                    "variant": variant,
                    "method": group[0]["method"],
                    "keep_ratio": keep,
                    "seeds": len(group),
                    "realized_keep_ratio": statistics.fmean(r["realized_keep_ratio"] for r in group),
                    "examples_processed": statistics.fmean(r["examples_processed"] for r in group),
                    "accuracy_mean": accuracy,
                    "accuracy_ci95": half,
                    "train_time_s_mean": statistics.fmean(r["train_time_s"] for r in group),
                    "speedup_mean": speedup,
                    "theoretical_speedup": theoretical,
                    "speedup_ratio": speedup / theoretical,
                    "load_adjusted_speedup_ratio": statistics.fmean(
                        _load_adjusted_efficiency(r, full_by_seed[r["seed"]]) for r in group
                    )
                    if all(r["seed"] in full_by_seed for r in group)
                    else None,
                    "time_to_accuracy_s": statistics.fmean(reached) if reached else None,
                    "time_to_accuracy_reached": len(reached),
                }
            )
        paired += _paired(members)
    return {"rows": rows, "paired": paired, "plateau": plateau}


def _paired(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SADP − every other variant at SADP's keep ratio (equal cost) and − full data, paired by seed."""
    index = {(r["variant"], r["keep_ratio"], r["seed"]): r for r in members}
    keeps = sorted({r["keep_ratio"] for r in members if r["variant"] == "sadp"})
    others = sorted({(r["variant"], r["keep_ratio"]) for r in members if r["variant"] != "sadp"})
    result = []
    for keep in keeps:
        for variant, other_keep in others:
            if other_keep not in (keep, 1.0):
                continue
            pairs = [
                (index[("sadp", keep, seed)]["test_accuracy"], index[(variant, other_keep, seed)]["test_accuracy"])
                for (v, k, seed) in index
                if v == "sadp" and k == keep and (variant, other_keep, seed) in index
            ]
            if not pairs:
                continue
            mean, half = _t_interval([100 * (a - b) for a, b in pairs])
            result.append(
                {
                    "part": members[0]["part"],
                    "keep_ratio": keep,
                    "versus": variant,
                    "versus_keep_ratio": other_keep,
                    "pairs": len(pairs),
                    "difference_pt": mean,
                    "ci95_pt": half,
                }
            )
    return result


def frontier_targets(summary: dict[str, Any], part: str = "fashion-mnist/mlp") -> dict[str, dict[str, Any]]:
    """The issue's targets on ``part``: SADP ≥ every baseline at k = 0.5 and 0.7, within 0.2 pt of full at
    0.7, measured speedup ≥ 0.95 × theoretical; plus the plateau of full data."""
    targets: dict[str, dict[str, Any]] = {}
    baselines = set(ALL_METHODS) - {"sadp"}
    for keep in (0.5, 0.7):
        diffs = [
            p
            for p in summary["paired"]
            if p["part"] == part
            and p["keep_ratio"] == keep
            and p["versus"] in baselines
            and p["versus_keep_ratio"] == keep
        ]
        if diffs:
            worst = min(diffs, key=lambda p: p["difference_pt"])
            targets[f"{part}: sadp@{keep:g} vs every baseline"] = target(
                f"{part}: SADP − best baseline ({worst['versus']}) at k = {keep:g}, points",
                worst["difference_pt"],
                0.0,
                ">=",
            )
    versus_full = [
        p for p in summary["paired"] if p["part"] == part and p["keep_ratio"] == 0.7 and p["versus"] == "full"
    ]
    if versus_full:
        targets[f"{part}: full − sadp@0.7"] = target(
            f"{part}: full − SADP at k = 0.7, points", -versus_full[0]["difference_pt"], 0.2, "<="
        )
    for row in summary["rows"]:
        if row["part"] == part and row["variant"] == "sadp":
            targets[f"{part}: sadp@{row['keep_ratio']:g} speedup ratio"] = target(
                f"{part}: SADP measured ÷ theoretical speedup at k = {row['keep_ratio']:g}",
                row["speedup_ratio"],
                0.95,
                ">=",
            )
            if row.get("load_adjusted_speedup_ratio") is not None:
                targets[f"{part}: sadp@{row['keep_ratio']:g} load-adjusted speedup ratio"] = target(
                    f"{part}: SADP measured ÷ theoretical speedup at k = {row['keep_ratio']:g}, load-adjusted",
                    row["load_adjusted_speedup_ratio"],
                    0.95,
                    ">=",
                )
    if part in summary["plateau"]:
        targets[f"{part}: full data plateaued"] = target(
            f"{part}: full data's accuracy change from epoch E−2 to E, points",
            100 * summary["plateau"][part]["change_last_2_epochs"],
            100 * PLATEAU_TOLERANCE,
            "<=",
        )
    return targets


def resummarise(json_path: str | Path) -> dict[str, Any]:
    """Recompute the summary and targets of a frontier JSON from its runs with this code; write it back.

    Trains nothing: for a study whose runs were measured by an earlier version of the summary (the
    runs, their settings and the ``run`` record stay as measured; ``resummarised`` records when).
    """
    from datetime import datetime, timezone

    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    if "runs" not in result or "config" not in result:
        raise ValueError(f"{json_path}: not a frontier JSON (no 'runs' and 'config')")
    result["summary"] = summarise(result["runs"])
    result["targets"] = {}
    for part in result["config"]["parts"]:
        result["targets"].update(frontier_targets(result["summary"], part["name"]))
    result["resummarised"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _config_json(config: FrontierConfig) -> dict[str, Any]:
    return {
        "workers": config.workers,
        "parts": [
            {
                "name": part.name,
                "settings": {
                    k: v for k, v in dataclasses.asdict(part.config).items() if k not in ("seed", "keep_ratio")
                },
                "methods": ["full", *part.methods],
                "keep_ratios": list(part.keep_ratios),
                "seeds": list(part.seeds),
                "variants": [dataclasses.asdict(v) for v in part.variants],
                "probe_every": part.probe_every,
                "probe_size": part.probe_size,
            }
            for part in config.parts
        ],
        "time_to_accuracy_margin": TIME_TO_ACCURACY_MARGIN,
        "plateau_tolerance": PLATEAU_TOLERANCE,
    }


def run_frontier_bench(
    config: FrontierConfig,
    data_dir: str | Path | None = None,
    nmnist_dir: str | Path | None = None,
    show_progress: bool = True,
    partial_json: str | Path | None = None,
) -> dict[str, Any]:
    """Run the study; returns ``{"runs", "summary", "targets", "config"}``.

    (part, seed) groups run in ``config.workers`` spawned processes, the CPUs shared evenly between
    them; the largest groups start first. With ``partial_json``, the runs finished so far are written
    there after every group, so a study cut short keeps what it measured.
    """
    from tqdm.auto import tqdm

    if any(p.config.dataset == "nmnist" for p in config.parts) and (
        nmnist_dir is None or not Path(nmnist_dir).is_dir()
    ):
        raise FileNotFoundError(f"the frontier bench's nmnist part needs an N-MNIST folder; {nmnist_dir} is not one")
    tasks = [(part, seed) for part in config.parts for seed in part.seeds]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(config.workers, len(tasks)))
    threads = max(1, cpus // workers)
    data = None if data_dir is None else str(data_dir)
    events = None if nmnist_dir is None else str(nmnist_dir)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool,
        tqdm(total=len(tasks), unit="group", desc="frontier", disable=not show_progress) as progress,
    ):
        futures = {
            pool.submit(train_group, part, seed, data, events, threads): (part.name, seed) for part, seed in tasks
        }
        for future in as_completed(futures):
            name, seed = futures[future]
            entries = future.result()
            runs += entries
            progress.update(1)
            full = next(e for e in entries if e["method"] == "full")
            sadp = [e for e in entries if e["variant"] == "sadp"]
            progress.write(
                f"{name} seed {seed} done after {(time.perf_counter() - started) / 60:.1f} min: full "
                f"{100 * full['test_accuracy']:.2f} %, "
                + ", ".join(f"sadp@{e['keep_ratio']:g} {100 * e['test_accuracy']:.2f} %" for e in sadp)
            )
            if partial_json is not None:
                Path(partial_json).write_text(json.dumps({"runs": runs, "partial": True}) + "\n")
    runs.sort(key=lambda r: (r["part"], r["seed"], r["variant"] != "full", r["variant"], r["keep_ratio"]))
    summary = summarise(runs)
    targets: dict[str, dict[str, Any]] = {}
    for part in config.parts:
        targets.update(frontier_targets(summary, part.name))
    return {"runs": runs, "summary": summary, "targets": targets, "config": _config_json(config)}


def _rows_of(result: dict[str, Any], part: str) -> list[dict[str, Any]]:
    rows = [r for r in result["summary"]["rows"] if r["part"] == part]
    return sorted(rows, key=lambda r: (r["keep_ratio"] != 1.0, r["keep_ratio"], r["variant"] != "sadp", r["variant"]))


def _paired_of(result: dict[str, Any], part: str, keep: float, variant: str, variant_keep: float):
    for p in result["summary"]["paired"]:
        if (
            p["part"] == part
            and p["keep_ratio"] == keep
            and p["versus"] == variant
            and p["versus_keep_ratio"] == variant_keep
        ):
            return p
    return None


def _ratio_text(row: dict[str, Any]) -> str:
    value = row.get("load_adjusted_speedup_ratio")
    return "—" if value is None else f"{value:.3f}"


def format_frontier_table(result: dict[str, Any]) -> str:
    """The summary as Markdown: one table per part, SADP's paired difference beside every other row."""
    blocks = []
    parts = list(dict.fromkeys(r["part"] for r in result["summary"]["rows"]))
    for part in parts:
        lines = [
            f"**{part}**",
            "",
            "| method | keep | realised keep | examples (M) | accuracy (%) ± 95 % CI | SADP − this (pt) ± 95 % CI "
            "| train time (s) | speedup ÷ theoretical (load-adjusted) | time to full − 0.3 pt (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in _rows_of(result, part):
            if r["variant"] == "sadp":
                versus = "—"
            else:
                keeps = (
                    [r["keep_ratio"]]
                    if r["keep_ratio"] != 1.0
                    else sorted({p["keep_ratio"] for p in result["summary"]["paired"] if p["part"] == part})
                )
                cells = []
                for keep in keeps:
                    p = _paired_of(result, part, keep, r["variant"], r["keep_ratio"])
                    if p is not None:
                        label = f"@{keep:g}: " if r["keep_ratio"] == 1.0 else ""
                        cells.append(f"{label}{p['difference_pt']:+.2f} ± {p['ci95_pt']:.2f}")
                versus = "; ".join(cells) or "—"
            reached = (
                "—"
                if r["time_to_accuracy_s"] is None
                else f"{r['time_to_accuracy_s']:.0f} ({r['time_to_accuracy_reached']}/{r['seeds']})"
            )
            lines.append(
                f"| {r['variant']} | {r['keep_ratio']:g} | {r['realized_keep_ratio']:.3f} | "
                f"{r['examples_processed'] / 1e6:.3f} | "
                f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_ci95']:.2f} | {versus} | "
                f"{r['train_time_s_mean']:.0f} | {r['speedup_ratio']:.3f} ({_ratio_text(r)}) | {reached} |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _mean_text(values: list[Any], fmt: str) -> str:
    """The mean of the finite ``values`` formatted with ``fmt``, or a dash when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return format(statistics.fmean(finite), fmt) if finite else "—"


def _diagnostics_row(keep: float, epoch: int, stats: list[dict[str, Any]], probes: list[dict[str, Any]]) -> str:
    def stat(key: str, fmt: str) -> str:
        return _mean_text([s.get(key) for s in stats], fmt)

    def mse_ratio(key: str) -> str:
        ratios = [
            p["estimator"][key]["mse"] / p["estimator"]["uniform"]["mse"] for p in probes if key in p["estimator"]
        ]
        return _mean_text(ratios, ".3f")

    bias = [p["estimator"]["stored"]["bias_sq"] / p["estimator"]["stored"]["mse"] for p in probes]
    cells = [
        f"{keep:g}",
        str(epoch + 1),
        stat("keep_ratio", ".2f"),
        stat("ess_fraction", ".3f"),
        stat("capped_fraction", ".4f"),
        stat("staleness_mean", ".2f"),
        stat("score_ratio", ".2f"),
        _mean_text([p["spearman_stored_fresh"] for p in probes], ".3f"),
        _mean_text([p["spearman_fresh_true"] for p in probes], ".3f"),
        mse_ratio("stored"),
        mse_ratio("fresh"),
        mse_ratio("stored_unbiased"),
        mse_ratio("optimal"),
        _mean_text(bias, ".3f"),
    ]
    return "| " + " | ".join(cells) + " |"


def _diagnostics_table(result: dict[str, Any], part: str) -> str:
    """Per epoch, mean over seeds, of the default SADP runs' sampler stats and probe figures."""
    runs = [r for r in result["runs"] if r["part"] == part and r["variant"] == "sadp"]
    if not runs:
        return ""
    header = (
        "keep",
        "epoch",
        "k(e)",
        "ESS / K",
        "capped",
        "staleness (epochs)",
        "ρ",
        "Spearman stored↔fresh",
        "Spearman fresh↔true",
        "MSE ÷ uniform: stored",
        "fresh",
        "stored, α = 1",
        "optimal",
        "bias² share (stored)",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for keep in sorted({r["keep_ratio"] for r in runs}):
        members = [r for r in runs if r["keep_ratio"] == keep]
        for epoch in sorted({s["epoch"] for r in members for s in r["stats"]}):
            stats = [s for r in members for s in r["stats"] if s["epoch"] == epoch]
            probes = [p for r in members for p in r["probes"] if p["epoch"] == epoch]
            lines.append(_diagnostics_row(keep, epoch, stats, probes))
    return "\n".join(lines)


def plot_frontier(result: dict[str, Any], folder: Path) -> list[Path]:
    """PNGs beside the JSON: accuracy against cost per part, and accuracy per epoch of the strongest methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    parts = list(dict.fromkeys(r["part"] for r in result["summary"]["rows"]))
    for part in parts:
        rows = [r for r in result["summary"]["rows"] if r["part"] == part]
        figure, axis = plt.subplots(figsize=(7, 4.5))
        methods = ["full", *ALL_METHODS]
        for variant in [v for v in methods if any(r["variant"] == v for r in rows)]:
            points = sorted(
                (r["realized_keep_ratio"], r["accuracy_mean"], r["accuracy_ci95"])
                for r in rows
                if r["variant"] == variant
            )
            xs, ys, es = zip(*points, strict=True)
            style = {"linewidth": 2.5, "color": "black"} if variant == "sadp" else {"linewidth": 1}
            axis.errorbar(
                xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3, label=variant, **style
            )
        axis.set_xlabel("cost: examples processed ÷ full data's")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{part}: accuracy against cost (mean ± 95 % CI over seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"frontier-{part.replace('/', '-')}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_frontier_report(json_path: str | Path, out: str | Path | None = None) -> Path:
    """``FRONTIER.md`` (or ``out``) and the PNGs, in the folder of ``json_path``, from one frontier JSON."""
    from sadp_data.bench.report import format_targets

    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    folder = json_path.parent
    plot_frontier(result, folder)
    run = result.get("run", {})
    machine = run.get("machine", {})
    parts = [p["name"] for p in result["config"]["parts"]]
    lines = [
        "# Accuracy against cost: SADP and the baselines",
        "",
        f"Produced by `{run.get('command', 'sadp-data bench frontier')}` "
        f"({run.get('wall_s', 0) / 60:.0f} min, started {run.get('started', '?')}, "
        f"{'quick' if run.get('quick') else 'full'} study) on {machine.get('cpu', '?')} "
        f"({machine.get('cpus_usable', '?')} CPUs usable, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in run.get('load_average') or [])}). Raw runs: `{json_path.name}`. "
        "How the study is built: `bench/frontier.py`; the method and its levers: `docs/method.md`."
        + (
            f" Summary and targets re-derived from the same runs on {result['resummarised']} "
            "(`sadp-data bench frontier --resummarise`), which added the load-adjusted speedup ratio."
            if result.get("resummarised")
            else ""
        ),
        "",
        "Cost = examples forwarded and back-propagated over the whole run, warm-up and anneal epochs "
        "included, as a fraction of full data's (the *realised keep*). Every method at one keep ratio has "
        "the same cost. Paired differences are per seed (the same initial weights for every method), "
        "with 95 % t-intervals over seeds; a difference whose interval contains 0 is not resolved.",
        "",
        "## Targets",
        "",
        format_targets(result["targets"]) if result.get("targets") else "(none)",
        "",
    ]
    for part in parts:
        settings = next(p for p in result["config"]["parts"] if p["name"] == part)
        s = settings["settings"]
        plateau = result["summary"]["plateau"].get(part)
        first = next((r for r in result["runs"] if r["part"] == part), {})
        train_size, test_size = first.get("train_size", s["train_size"]), first.get("test_size", s["test_size"])
        lines += [
            f"## {part}",
            "",
            f"{train_size} training examples, {test_size} test examples"
            + (f" per fold ({s['folds']} folds over the pooled recordings, fold = seed)" if s.get("folds") else "")
            + f", {s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['learning_rate']} (cosine), "
            f"T = {s['time_steps']}, model {s['model']}"
            + (f" {s['hidden']}" if s["model"] == "mlp" else f" {s['channels']}")
            + f", warm-up {s['warmup_epochs']}, anneal {s['anneal_fraction']}, λ = {s['smoothing']}, "
            f"seeds {settings['seeds']}.",
            "",
        ]
        if plateau:
            lines += [
                f"Full data's mean accuracy changed by {100 * plateau['change_last_2_epochs']:.2f} pt over its last "
                f"two epochs ({'plateaued' if plateau['plateaued'] else 'not plateaued'}; tolerance "
                f"{100 * PLATEAU_TOLERANCE:.1f} pt).",
                "",
            ]
        block = format_frontier_table({"summary": {**result["summary"], "rows": _rows_of(result, part)}})
        lines += [block.split("\n", 2)[2], "", f"![{part}](frontier-{part.replace('/', '-')}.png)", ""]
        diagnostics = _diagnostics_table(result, part)
        if diagnostics:
            lines += [
                f"### Diagnostics of the default SADP runs ({part})",
                "",
                "`sampler.stats()` per epoch (ESS of the weights over K, fraction of inclusion probabilities "
                "capped at 1, mean staleness of the drawn examples' scores, ρ = mean(s²)/mean(s)²) and the "
                "probe (`sadp_data.diagnostics.probe`: exact per-example gradients of a fixed probe set at the "
                "same model state): rank correlations, and the mean squared error of the batch gradient "
                "estimate under SADP's draw (from the stored and from fresh scores) and under the optimal "
                "draw (∝ true gradient norms), each divided by uniform sampling's. Means over seeds.",
                "",
                diagnostics,
                "",
            ]
    out_path = Path(out) if out is not None else folder / "FRONTIER.md"
    out_path.write_text("\n".join(lines) + "\n")
    return out_path
