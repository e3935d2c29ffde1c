"""The frontier study's report: ``FRONTIER.md`` (tables, targets, diagnostics per epoch) and one PNG per part."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from sadp_data.bench.frontier_summary import ALL_METHODS, PLATEAU_TOLERANCE


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


def _difference_text(paired: dict[str, Any], sadp_keep: float | None) -> str:
    """``"+0.05 ± 0.10 (10)"``: SADP's paired difference, its 95 % interval ("—" from one pair) and the pairs;
    prefixed ``"@k: "`` with SADP's keep ratio when the row is full data's (one difference per k)."""
    label = "" if sadp_keep is None else f"@{sadp_keep:g}: "
    interval = f"{paired['ci95_pt']:.2f}" if paired["pairs"] > 1 else "—"
    return f"{label}{paired['difference_pt']:+.2f} ± {interval} ({paired['pairs']})"


def format_frontier_table(result: dict[str, Any]) -> str:
    """The summary as Markdown: one table per part, SADP's paired difference beside every other row."""
    blocks = []
    parts = list(dict.fromkeys(r["part"] for r in result["summary"]["rows"]))
    for part in parts:
        lines = [
            f"**{part}**",
            "",
            "| method | keep | realised keep | examples (M) | accuracy (%) ± 95 % CI "
            "| SADP − this (pt) ± 95 % CI (pairs) | train time (s) | speedup ÷ theoretical (load-adjusted) "
            "| time to full − 0.3 pt (s) |",
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
                        cells.append(_difference_text(p, keep if r["keep_ratio"] == 1.0 else None))
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


def _seed_ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 4, 10, 11]`` as ``"0–2, 4, 10–11"``."""
    spans: list[list[int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


def _more_seeds_section(folder: Path) -> list[str]:
    """Lines for the seed studies (``frontier-seeds*.json``, ``sadp_data.bench.frontier_seeds``) beside the study."""
    rows = []
    for path in sorted(folder.glob("frontier-seeds*.json")):
        if path.name.endswith(".partial.json"):
            continue
        result = json.loads(path.read_text())
        paired = result.get("paired") or {}
        by_keep = {"0.5": paired} if "seeds" in paired else paired  # files before --keep hold one keep ratio
        for keep, cell in by_keep.items():
            seeds = cell["seeds"]
            cells = []
            for name in ("sadp_minus_epsilon_greedy", "sadp_minus_full"):
                d = cell[name]
                text = f"{d['mean']:+.3f} ± {d['ci95_half_width']:.3f}"
                if "ci90" in d:
                    text += f" (90 %: {d['ci90'][0]:+.3f} to {d['ci90'][1]:+.3f})"
                cells.append(text)
            rows.append(
                f"| `{path.name}` | {keep} | {len(seeds)} ({_seed_ranges(seeds)}) | {cell['sadp_mean']:.2f} | "
                f"{cell['epsilon_greedy_mean']:.2f} | {cell['full_mean']:.2f} | {cells[0]} | {cells[1]} |"
            )
    if not rows:
        return []
    return [
        "## More seeds for the contested cells (fashion-mnist/mlp)",
        "",
        "Separate runs of `sadp_data/bench/frontier_seeds.py` (the MLP part's settings, which reproduce this study's "
        "runs to the digit): full data, SADP and ε-greedy for further seeds, pooled with the seeds of the "
        "earlier files (this study's included). They do not change the figures above, which come from one "
        "run; they add seeds beyond the study's to the cells where the difference to resolve is smallest "
        "(training is deterministic, so a seed that both ran gives the same figure). Each file's command is in it. "
        "Accuracy in %, differences in points with 95 % t-intervals over the pooled seeds (and the 90 % "
        "interval an equivalence test at ±0.1 pt reads).",
        "",
        "| file | keep | paired seeds | SADP | ε-greedy | full | SADP − ε-greedy | SADP − full |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _contested_table(result: dict[str, Any], part: str, contested: dict[str, Any]) -> list[str]:
    """Lines for the contested cells over every seed they ran: mean accuracy and SADP's paired difference."""
    from sadp_data.bench.frontier_summary import t_interval

    cells = [("full", 1.0)] + [(m, k) for k in contested["keep_ratios"] for m in contested["methods"]]
    lines = [
        "The contested cells over every seed they ran (the rows above average seeds the whole grid shares):",
        "",
        "| method | keep | seeds | accuracy (%) ± 95 % CI | SADP − this (pt) ± 95 % CI (pairs) |",
        "|---|---|---|---|---|",
    ]
    for variant, keep in cells:
        runs = [r for r in result["runs"] if r["part"] == part and r["variant"] == variant and r["keep_ratio"] == keep]
        if not runs:
            continue
        mean, half = t_interval([100 * r["test_accuracy"] for r in runs])
        versus = []
        for sadp_keep in contested["keep_ratios"] if keep == 1.0 else [keep]:
            p = None if variant == "sadp" else _paired_of(result, part, sadp_keep, variant, keep)
            if p is not None:
                versus.append(_difference_text(p, sadp_keep if keep == 1.0 else None))
        seeds = _seed_ranges(sorted(r["seed"] for r in runs))
        lines.append(f"| {variant} | {keep:g} | {seeds} | {mean:.2f} ± {half:.2f} | {'; '.join(versus) or '—'} |")
    return [*lines, ""]


def _seed_design(settings: dict[str, Any]) -> str:
    """The part's ablation seeds and contested cells, as a clause of its settings line ("" when neither)."""
    text = ""
    if settings.get("variants") and settings.get("variant_seeds") not in (None, settings["seeds"]):
        text += f"; the ablation variants on seeds {settings['variant_seeds']}"
    contested = settings.get("contested")
    if contested:
        cells = (
            ", ".join(contested["methods"])
            + " and full data at k = "
            + ", ".join(f"{k:g}" for k in contested["keep_ratios"])
        )
        text += (
            f"; the contested cells ({cells}) on seeds {contested['seeds']} too (fixed before the run): their "
            "paired differences pool every seed both sides ran (pairs in brackets), while every row's mean, time "
            "and speedup average the grid's seeds, which every method shares"
        )
    return text


def write_frontier_report(json_path: str | Path, out: str | Path | None = None) -> Path:
    """``FRONTIER.md`` (or ``out``) and the PNGs, in the folder of ``json_path``, from one frontier JSON."""
    from sadp_data.bench.targets import format_targets

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
        "How the study is built: `sadp_data/bench/frontier.py`; the method and its levers: `docs/method.md`."
        + (
            f" Summary and targets re-derived from the same runs on {result['resummarised']} "
            "by the summary code of that date (`sadp-data bench frontier --resummarise`; the runs are as measured)."
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
            f"seeds {settings['seeds']}{_seed_design(settings)}.",
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
        lines += [block.split("\n", 2)[2], ""]
        if settings.get("contested"):
            lines += _contested_table(result, part, settings["contested"])
        lines += [f"![{part}](frontier-{part.replace('/', '-')}.png)", ""]
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
    lines += _more_seeds_section(folder)
    out_path = Path(out) if out is not None else folder / "FRONTIER.md"
    out_path.write_text("\n".join(lines) + "\n")
    return out_path
