"""``sadp-data bench score --zoo``: where its results go, its table and its figure (``bench.score_zoo``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The Spearman correlation a score variant should reach with the exact gradient norm.
TARGET_SPEARMAN = 0.9


def zoo_outputs(
    suites: list[str], json_target: str | None, plot: str | None, results_dir: Path
) -> tuple[str, str | None]:
    """``(JSON target, plot)`` of a ``--zoo`` run: ``results_dir/score-zoo.json`` and the PNG beside a
    ``.json`` target unless named; ``--zoo`` with any suite but ``score`` alone is an error."""
    if suites != ["score"]:
        raise ValueError(f"--zoo belongs to the score suite alone, not {', '.join(suites)}: bench score --zoo")
    target = json_target or str(results_dir / "score-zoo.json")
    if plot is None and target.endswith(".json"):
        plot = target[: -len(".json")] + ".png"
    return target, plot


def zoo_suite(
    quick: bool, command: str | None, progress: bool, plot: str | None, json_dir: Path | None, machine: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run the zoo bench (``quick``: ``ZooConfig.quick()``), print its table, write its plot (``plot``, or
    ``score-zoo.png`` in ``json_dir``), yield its result."""
    from sadp_data.bench.score_zoo import ZooConfig, run_zoo_bench

    config = ZooConfig.quick() if quick else ZooConfig()
    result = run_zoo_bench(config, command=command, show_progress=progress, machine=machine)
    print(format_zoo_table(result))
    plot = plot or (json_dir / "score-zoo.png" if json_dir is not None else None)
    if plot:
        plot_zoo(result, plot)
        print(f"plot written to {plot}")
    yield "score-zoo", result


def _cell(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "constant"
    return f"{value:.2f}" if ci is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def format_zoo_table(result: dict[str, Any]) -> str:
    """Spearman per model, stage and variant (with its interval), the readout share, and the step share."""
    variants = result["variants"]
    lines = [
        "| model | stage | readout share | " + " | ".join(variants) + " |",
        "|---" * (len(variants) + 3) + "|",
    ]
    shares = []
    for model in result["models"]:
        if "stages" not in model:
            reason = model.get("skipped") or model.get("failed")
            lines.append(f"| {model['name']} | — | {reason} |" + " |" * len(variants))
            continue
        for stage, figures in model["stages"].items():
            share = figures["readout_share"]
            cells = " | ".join(
                _cell(figures["variants"][v]["spearman"], figures["variants"][v]["spearman_ci"]) for v in variants
            )
            share_text = "—" if share is None else f"{share['median']:.2f}"
            lines.append(f"| {model['name']} | {stage} | {share_text} | {cells} |")
            timed = {v: f["step_share"] for v, f in figures["variants"].items() if f["step_share"] is not None}
            if timed:
                text = ", ".join(f"{v} {100 * s:+.1f} %" for v, s in timed.items())
                shares.append(f"{model['name']} ({stage}): {text}")
    if shares:
        lines += ["", "scorer's share of a training step (scored / plain − 1, medians):", *shares]
    return "\n".join(lines)


def _timed_share(model: dict[str, Any], variant: str) -> float:
    """The variant's step share at the (first) timed stage; NaN when no stage was timed."""
    timed = [f["variants"][variant]["step_share"] for f in model["stages"].values()]
    return next((share for share in timed if share is not None), float("nan"))


def plot_zoo(result: dict[str, Any], path: str | Path) -> None:
    """Per model, Spearman of each variant at init and trained (bars, 95 % intervals, the 0.9 target line);
    in the last panel, each variant's share of a training step per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = result["variants"]
    models = [m for m in result["models"] if "stages" in m]
    columns = 4
    rows = -(-(len(models) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    x = np.arange(len(variants))
    for axis, model in zip(axes.flat, models, strict=False):
        for offset, (stage, figures) in zip((-0.2, 0.2), model["stages"].items(), strict=False):
            values = [figures["variants"][v]["spearman"] for v in variants]
            intervals = [figures["variants"][v]["spearman_ci"] or [np.nan, np.nan] for v in variants]
            heights = np.array([np.nan if v is None else v for v in values])
            errors = np.abs(np.array(intervals, dtype=float).T - heights)
            axis.bar(x + offset, np.nan_to_num(heights), 0.4, yerr=np.nan_to_num(errors), label=stage, capsize=2)
        axis.axhline(TARGET_SPEARMAN, color="k", linestyle="--", linewidth=0.8)
        axis.set_ylim(-1, 1.05)
        axis.set_xticks(x, variants, fontsize=7, rotation=20)
        axis.set_title(f"{model['name']} ({model['library']})", fontsize=8)
        axis.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    axes.flat[0].set_ylabel("Spearman with exact ‖∂ℓ_i/∂θ‖")
    cost = axes.flat[len(models)]
    for number, variant in enumerate(variants):
        shares = [_timed_share(model, variant) for model in models]
        cost.plot(np.asarray(shares, dtype=float) * 100, np.arange(len(models)) + 0.12 * number, "o", label=variant)
    cost.axvline(0, color="k", linewidth=0.8)
    cost.set_yticks(np.arange(len(models)), [m["name"] for m in models], fontsize=6)
    cost.set_xlabel("step time with scorer − without (%)", fontsize=7)
    cost.set_title("scorer's share of a training step", fontsize=8)
    cost.legend(fontsize=6)
    for axis in axes.flat[len(models) + 1 :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
