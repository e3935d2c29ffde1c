"""The frontier's contested cells rerun with the full-gradient score: does scoring every layer beat the readout?

``python -m sadp_data.bench.frontier_score OUT.json [--seeds A-B] [--parts mlp conv]`` trains, per seed and
interleaved in one group (paired: same initial weights, same data order for every run of a seed),
full data, SADP with its default score (``spike_aware``, the readout layer's exact gradient norm) and
SADP with ``score="full_gradient"`` (the exact per-example gradient norm over every linear and
convolutional layer, from the training's own backward pass), at keep ratios 0.5 and 0.7, on the
frontier study's two Fashion-MNIST parts with their settings unchanged:

* ``fashion-mnist/mlp``: all 60,000 training and 10,000 test images, the MLP SNN (784–256–10, T = 4),
  14 epochs;
* ``fashion-mnist/conv``: the conv SNN (8 and 16 channels) on 6,000 training images, all 10,000 test
  images, 12 epochs.

Both SADP runs of a seed and keep ratio process the same number of examples (one schedule), so the
comparison is at equal cost. Per part and keep ratio it reports the mean accuracies and the paired
differences full-gradient − spike-aware, full-gradient − full and spike-aware − full with 95 %
t-intervals over the seeds, and the training time of each score. About 50–60 minutes on 2 idle cores
for the default five seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sadp_data.bench import frontier_levers
from sadp_data.bench.frontier_config import FrontierConfig, Part, Variant
from sadp_data.bench.frontier_seeds import seed_range
from sadp_data.bench.frontier_summary import t_interval

KEEP_RATIOS = (0.5, 0.7)
#: The run label of each score, as the JSON's ``variant`` field holds it.
LABELS = {"spike_aware": "sadp", "full_gradient": "sadp full-gradient score"}


def score_config(seeds: tuple[int, ...], parts: tuple[str, ...] = ("mlp", "conv")) -> FrontierConfig:
    """The frontier's Fashion-MNIST parts, each with SADP (its default score) and SADP scored by
    ``full_gradient`` at ``KEEP_RATIOS`` on ``seeds``; full data is always trained."""
    variants = tuple(Variant(LABELS["full_gradient"], keep, (), score="full_gradient") for keep in KEEP_RATIOS)
    chosen = [
        Part(part.name, part.config, ("sadp",), KEEP_RATIOS, seeds, variants)
        for part in FrontierConfig.default(nmnist=False).parts
        if part.config.model in parts
    ]
    return FrontierConfig(tuple(sorted(chosen, key=lambda part: part.config.model)), workers=1)  # conv first


def paired_scores(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ``part@keep``: mean accuracy (percent) of each score and of full data, the paired differences
    with 95 % t-intervals over the seeds that have all three runs, and each score's mean training time."""
    result: dict[str, dict[str, Any]] = {}
    for part in sorted({r["part"] for r in runs}):
        of_part = [r for r in runs if r["part"] == part]
        full = {int(r["seed"]): 100.0 * r["test_accuracy"] for r in of_part if r["variant"] == "full"}
        for keep in KEEP_RATIOS:
            by_score = {
                score: {int(r["seed"]): r for r in of_part if r["variant"] == label and float(r["keep_ratio"]) == keep}
                for score, label in LABELS.items()
            }
            seeds = sorted(set(full).intersection(*by_score.values()))
            if not seeds:
                continue
            accuracy = {s: {i: 100.0 * by_score[s][i]["test_accuracy"] for i in seeds} for s in by_score}
            accuracy["full"] = {i: full[i] for i in seeds}
            cell: dict[str, Any] = {"seeds": seeds}
            for name, values in accuracy.items():
                cell[f"{name}_mean"] = sum(values.values()) / len(seeds)
            for a, b in (("full_gradient", "spike_aware"), ("full_gradient", "full"), ("spike_aware", "full")):
                differences = [accuracy[a][i] - accuracy[b][i] for i in seeds]
                mean, half_width = t_interval(differences)  # one seed: no interval (None), not a zero-width one
                cell[f"{a}_minus_{b}"] = {
                    "per_seed": differences,
                    "mean": mean,
                    "ci95_half_width": half_width if len(seeds) > 1 else None,
                }
            for score, chosen in by_score.items():
                cell[f"{score}_train_time_s"] = sum(chosen[i]["train_time_s"] for i in seeds) / len(seeds)
                cell[f"{score}_examples_processed"] = sorted({chosen[i]["examples_processed"] for i in seeds})
            result[f"{part}@{keep:g}"] = cell
    return result


def main(argv: list[str] | None = None) -> int:
    prog = "python -m sadp_data.bench.frontier_score"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where the JSON goes (runs finished so far: OUT.partial.json)")
    parser.add_argument("--seeds", type=seed_range, default=(0, 1, 2, 3, 4), help="seeds, A-B (default 0-4)")
    parser.add_argument(
        "--parts", nargs="+", choices=("mlp", "conv"), default=["mlp", "conv"], help="which parts (default both)"
    )
    args = parser.parse_args(argv)
    command = f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    result = frontier_levers.run_study(score_config(args.seeds, tuple(args.parts)), args.out, command)
    result["paired"] = paired_scores(result["runs"])
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["paired"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
