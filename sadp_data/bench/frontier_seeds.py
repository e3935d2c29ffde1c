"""More paired seeds for the frontier's contested cells: SADP against ε-greedy on the MLP.

``python -m sadp_data.bench.frontier_seeds OUT.json [EARLIER.json ...] [--seeds A-B] [--keep K ...]``
trains, with the frontier's MLP part settings (all of Fashion-MNIST, 14 epochs; the lever study's
configuration, which reproduces the frontier's runs to the digit), full data, ``sadp`` and
``epsilon_greedy`` at each keep ratio (default 0.5) for the new seeds (default 5–9), and pools them
with the runs of the earlier result files (default ``bench/results/frontier.json``) that have other
seeds. Per keep ratio it reports the paired differences SADP − ε-greedy and SADP − full over every
pooled seed, with 95 % t-intervals, and the 90 % interval that an equivalence test (TOST) at a margin
of ±0.1 pt reads: inside it, the two are equivalent to within 0.1 pt. It does not replace the
frontier study's own figures (which come from one run); it says whether a tie is a tie. About 8
minutes per keep ratio and five seeds on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sadp_data.bench import frontier_levers
from sadp_data.bench.frontier import FrontierConfig
from sadp_data.bench.frontier_summary import t_interval

PART = "fashion-mnist/mlp"
EQUIVALENCE_MARGIN = 0.1


def seeds_config(seeds: tuple[int, ...] = (5, 6, 7, 8, 9), keep_ratios: tuple[float, ...] = (0.5,)) -> FrontierConfig:
    """The lever study's MLP part with SADP and ε-greedy at ``keep_ratios`` for ``seeds`` (``full`` is always run)."""
    part = replace(frontier_levers.lever_config().parts[0], methods=("sadp", "epsilon_greedy"), keep_ratios=keep_ratios,
                   seeds=seeds, variants=())  # fmt: skip
    return FrontierConfig((part,))


def _accuracy(runs: list[dict[str, Any]], variant: str, keep: float) -> dict[int, float]:
    """Test accuracy (percent) per seed of ``variant`` at ``keep`` in the MLP part."""
    return {
        int(r["seed"]): 100.0 * float(r["test_accuracy"])
        for r in runs
        if r["part"] == PART and r["variant"] == variant and float(r["keep_ratio"]) == keep
    }


def paired_summary(runs: list[dict[str, Any]], keep: float = 0.5) -> dict[str, Any]:
    """At ``keep``: SADP, ε-greedy and full accuracy per seed pooled over ``runs``, and the paired differences."""
    sadp, greedy, full = (
        _accuracy(runs, "sadp", keep),
        _accuracy(runs, "epsilon_greedy", keep),
        _accuracy(runs, "full", 1.0),
    )
    seeds = sorted(set(sadp) & set(greedy) & set(full))
    if not seeds:
        raise ValueError(f"no seed has full data, sadp and epsilon_greedy at keep {keep:g} in part {PART!r}")
    summary: dict[str, Any] = {"keep_ratio": keep, "seeds": seeds}
    for name, other in (("sadp_minus_epsilon_greedy", greedy), ("sadp_minus_full", full)):
        differences = [sadp[s] - other[s] for s in seeds]
        mean, half_width = t_interval(differences)
        _, tost_half_width = t_interval(differences, confidence=0.90)  # both one-sided 5 % tests of TOST
        low, high = mean - tost_half_width, mean + tost_half_width
        summary[name] = {
            "per_seed": differences,
            "mean": mean,
            "ci95_half_width": half_width,
            "ci90": [low, high],
            "equivalent_within_margin": bool(-EQUIVALENCE_MARGIN < low and high < EQUIVALENCE_MARGIN),
        }
    for name, values in (("sadp", sadp), ("epsilon_greedy", greedy), ("full", full)):
        summary[f"{name}_mean"] = sum(values[s] for s in seeds) / len(seeds)
    summary["equivalence_margin"] = EQUIVALENCE_MARGIN
    return summary


def seed_range(text: str) -> tuple[int, ...]:
    """``"10-19"`` or ``"3"`` as a tuple of seeds."""
    low, _, high = text.partition("-")
    try:
        seeds = tuple(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be A-B or A, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} is empty")
    return seeds


def main(argv: list[str] | None = None) -> int:
    prog = "python -m sadp_data.bench.frontier_seeds"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where the JSON goes")
    parser.add_argument(
        "earlier", type=Path, nargs="*", help="result files to pool (default: bench/results/frontier.json)"
    )
    parser.add_argument("--seeds", type=seed_range, default=(5, 6, 7, 8, 9), help="new seeds, A-B (default 5-9)")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5], help="keep ratios (default 0.5)")
    args = parser.parse_args(argv)
    earlier = args.earlier or [Path("bench/results/frontier.json")]
    for path in earlier:
        if not path.is_file():
            parser.error(f"earlier result file {path} does not exist")
    previous: dict[tuple[str, str, float, int], dict[str, Any]] = {}
    for path in earlier:  # read before the hours of training, so a bad file stops the study at once
        for run in json.loads(path.read_text())["runs"]:
            if int(run["seed"]) not in args.seeds:
                previous[(run["part"], run["variant"], float(run["keep_ratio"]), int(run["seed"]))] = run
    command = f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    result = frontier_levers.run_study(seeds_config(args.seeds, tuple(args.keep)), args.out, command)
    pooled = list(previous.values()) + result["runs"]
    result["paired"] = {f"{keep:g}": paired_summary(pooled, keep) for keep in args.keep}
    result["paired_earlier_runs_from"] = [str(path) for path in earlier]
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["paired"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
