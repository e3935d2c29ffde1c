"""More seeds for the frontier's one unresolved cell: SADP against ε-greedy on the MLP at keep ratio 0.5.

``python -m sadp_data.bench.frontier_seeds bench/results/frontier-seeds.json`` trains, with the
frontier's MLP part settings (all of Fashion-MNIST, 14 epochs; the lever study's configuration,
which reproduces the frontier's runs to the digit), full data, ``sadp`` and ``epsilon_greedy`` at
keep 0.5 for seeds 5–9, and pairs them with seeds 0–4 of ``bench/results/frontier.json``: ten paired
seeds for the difference SADP − ε-greedy (and SADP − full), with 95 % t-intervals. It does not replace
the frontier study's own figures (which come from one run); it says whether the tie at k = 0.5 is a
tie. About 25 minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sadp_data.bench.frontier import FrontierConfig, run_frontier_bench
from sadp_data.bench.frontier_levers import lever_config
from sadp_data.bench.frontier_summary import _t_interval

NEW_SEEDS = (5, 6, 7, 8, 9)
KEEP = 0.5
PART = "fashion-mnist/mlp"


def seeds_config() -> FrontierConfig:
    """The lever study's MLP part with the two methods at keep 0.5 and seeds 5–9 (``full`` is always run)."""
    part = replace(lever_config().parts[0], methods=("sadp", "epsilon_greedy"), keep_ratios=(KEEP,),
                   seeds=NEW_SEEDS, variants=())  # fmt: skip
    return FrontierConfig((part,))


def _accuracy(runs: list[dict[str, Any]], variant: str, keep: float) -> dict[int, float]:
    """Test accuracy (percent) per seed of ``variant`` at ``keep`` in the MLP part."""
    return {
        int(r["seed"]): 100.0 * float(r["test_accuracy"])
        for r in runs
        if r["part"] == PART and r["variant"] == variant and float(r["keep_ratio"]) == keep
    }


def paired_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and over all seeds: SADP, ε-greedy and full accuracy and the paired differences."""
    sadp, greedy, full = (
        _accuracy(runs, "sadp", KEEP),
        _accuracy(runs, "epsilon_greedy", KEEP),
        _accuracy(runs, "full", 1.0),
    )
    seeds = sorted(set(sadp) & set(greedy) & set(full))
    summary: dict[str, Any] = {"seeds": seeds}
    for name, other in (("sadp_minus_epsilon_greedy", greedy), ("sadp_minus_full", full)):
        differences = [sadp[s] - other[s] for s in seeds]
        mean, half_width = _t_interval(differences)
        summary[name] = {"per_seed": differences, "mean": mean, "ci95_half_width": half_width}
    for name, values in (("sadp", sadp), ("epsilon_greedy", greedy), ("full", full)):
        summary[f"{name}_mean"] = sum(values[s] for s in seeds) / len(seeds)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m sadp_data.bench.frontier_seeds OUT.json [FRONTIER.json]", file=sys.stderr)
        return 2
    out = Path(args[0])
    earlier = Path(args[1] if len(args) == 2 else "bench/results/frontier.json")
    started = time.time()
    result = run_frontier_bench(seeds_config(), show_progress=False, partial_json=out.with_suffix(".partial.json"))
    result["wall_s"] = time.time() - started
    result["command"] = f"python -m sadp_data.bench.frontier_seeds {' '.join(args)}"
    previous = [r for r in json.loads(earlier.read_text())["runs"] if int(r["seed"]) not in NEW_SEEDS]
    result["paired"] = paired_summary(previous + result["runs"])
    result["paired"]["earlier_runs_from"] = str(earlier)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["paired"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
