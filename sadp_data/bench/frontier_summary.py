"""The frontier study's statistics: per-variant means with t-intervals, paired differences, targets.

``summarise(runs)`` turns the run list of ``frontier.json`` into rows (mean accuracy ± 95 % t-interval,
realised cost, plain and load-adjusted speedup ÷ theoretical, time to full − 0.3 pt), paired
differences SADP − each baseline over seeds, and the plateau check of full data;
``frontier_targets`` marks the study's targets PASS/MISS. Pure functions of the runs: rerunning them
on a committed JSON (``--resummarise``) reproduces the report.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from sadp_data.bench.targets import target
from sadp_data.bench.train import time_to

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

#: Points below full data's final mean accuracy that count as reaching it (time-to-accuracy).
TIME_TO_ACCURACY_MARGIN = 0.003
#: Full data has plateaued when its mean accuracy at epoch E−2 is within this of epoch E.
PLATEAU_TOLERANCE = 0.002


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and two-sided t-interval half-width at ``confidence`` (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    from scipy import stats

    quantile = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1))
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


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


def _by_cell(members: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """The runs of one part per (variant, keep ratio)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in members:
        groups.setdefault((run["variant"], run["keep_ratio"]), []).append(run)
    return groups


def _grid_seeds(groups: dict[tuple[str, float], list[dict[str, Any]]]) -> set[int]:
    """The seeds every method's cell of a part ran (ablation variants, whose label is not a method, aside)."""
    methods = [{r["seed"] for r in group} for (variant, _), group in groups.items() if variant == group[0]["method"]]
    return set.intersection(*methods) if methods else set()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per (part, variant, keep ratio), paired differences, plateau checks (see the module docstring).

    A row averages the part's grid seeds (those every method ran; an ablation variant's own subset of
    them), so rows compare on the same seeds; a contested cell's extra seeds count in its paired
    differences (every seed both sides ran) and in the plateau check, not in its row.
    """
    by_part: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_part.setdefault(run["part"], []).append(run)
    rows, paired, plateau = [], [], {}
    for part, members in by_part.items():
        groups = _by_cell(members)
        grid = _grid_seeds(groups)
        full = [r for r in members if r["method"] == "full"]
        grid_full = [r for r in full if r["seed"] in grid] or full
        full_final = statistics.fmean(r["test_accuracy"] for r in grid_full) if full else None
        if full and len(full[0]["accuracy_per_epoch"]) >= 3:
            curve = np.mean([r["accuracy_per_epoch"] for r in full], axis=0)
            change = float(abs(curve[-1] - curve[-3]))
            plateau[part] = {
                "epochs": len(curve),
                "change_last_2_epochs": change,
                "plateaued": change <= PLATEAU_TOLERANCE,
            }
        full_by_seed = {r["seed"]: r for r in full}
        for (variant, keep), every_seed in groups.items():
            group = [r for r in every_seed if r["seed"] in grid] or every_seed
            accuracy, half = t_interval([r["test_accuracy"] for r in group])
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
            mean, half = t_interval([100 * (a - b) for a, b in pairs])
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
    """The study's targets on ``part``: SADP ≥ every baseline at k = 0.5 and 0.7, within 0.2 pt of full at
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
