"""The lever study: SADP's draw-shaping levers against ε-greedy on the frontier's MLP part.

``python -m sadp_data.bench.frontier_levers bench/results/frontier-levers.json`` trains, on all of
Fashion-MNIST with the frontier's MLP SNN settings (14 epochs, 5 paired seeds), full data, ``sadp``
(the default) and ``epsilon_greedy`` at keep ratios 0.5 and 0.7, and three variants of ``sadp`` at
each: ``sharpness`` β = 2 and 3 (draw ∝ score^β) and a smaller smoothing λ = 0.02. It is the
frontier bench's runner (``run_frontier_bench``) with one part, so runs are paired and interleaved
the same way; ``FRONTIER.md``'s summary functions read its JSON. About 35–50 minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sadp_data.bench.frontier import FrontierConfig, Part, Variant, run_frontier_bench
from sadp_data.bench.suite import run_record
from sadp_data.bench.training_data import DemoConfig

KEEP_RATIOS = (0.5, 0.7)


def lever_config() -> FrontierConfig:
    """The study's one part: the frontier's MLP settings, SADP and ε-greedy, and the lever variants."""
    mlp = DemoConfig(
        train_size=60000, test_size=10000, eval_size=10000, epochs=14, model="mlp", hidden=(256,), time_steps=4
    )
    variants = []
    for keep in KEEP_RATIOS:
        variants += [
            Variant("sadp β=2", keep, (("sharpness", 2.0),)),
            Variant("sadp β=3", keep, (("sharpness", 3.0),)),
            Variant("sadp λ=0.02", keep, (), sampler_options=(("smoothing", 0.02),)),
        ]
    part = Part("fashion-mnist/mlp", mlp, ("sadp", "epsilon_greedy"), KEEP_RATIOS, (0, 1, 2, 3, 4), tuple(variants))
    return FrontierConfig((part,))


def run_study(config: FrontierConfig, out: Path, command: str) -> dict[str, Any]:
    """``run_frontier_bench`` of ``config`` (finished runs kept in ``out``'s ``.partial.json``), with its
    wall time, ``command`` and the ``run`` entry (machine, timing) that ``sadp_data/bench/report.py`` reads."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    result = run_frontier_bench(config, show_progress=False, partial_json=out.with_suffix(".partial.json"))
    result["wall_s"] = time.perf_counter() - clock
    result["command"] = command
    result["run"] = run_record(command, "frontier", False, started, result["wall_s"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sadp_data.bench.frontier_levers OUT.json", file=sys.stderr)
        return 2
    out = Path(args[0])
    result = run_study(lever_config(), out, f"python -m sadp_data.bench.frontier_levers {out}")
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
