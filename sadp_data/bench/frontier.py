"""Frontier bench: accuracy against cost for every pruning method, paired over seeds (``docs/method.md`` §5).

``sadp-data bench frontier --json bench/results/frontier.json`` trains, for each *part* of the study
(a dataset and an SNN) and each seed of its grid, one full-data run and one run per (method, keep
ratio), plus SADP ablation variants on the first seeds, and on the contested cells' extra seeds full
data and those cells only; all from the same initial weights per seed (paired), with the same optimizer,
cosine learning-rate schedule and epochs, through the library's three lines (``wrap`` +
``SpikeAwareScorer``). Runs of one (part, seed) train interleaved in one process (``harness.train_runs``)
so machine load hits them alike; (part, seed) groups are spread over ``workers`` processes.

Parts: ``FrontierConfig.default`` (``frontier_config``).

Cost is the number of examples forwarded and back-propagated over the whole run (warm-up and anneal
included); every method plans exactly ``round(k·N)`` examples per pruned epoch, so runs at one keep
ratio have equal cost and are compared pairwise. Per run the JSON holds ``dataset, model, method,
variant, options, keep_ratio, realized_keep_ratio, seed, examples_processed, train_time_s,
test_accuracy, accuracy_per_epoch`` and more: the sampler's ``stats()`` per epoch and, for the SADP
runs of the Fashion-MNIST parts, probe diagnostics every ``probe_every`` epochs
(``sadp_data.diagnostics.probe``). The summary gives mean accuracy with 95 % t-intervals, paired
differences SADP − each method at the same cost, speedups, time to full-data accuracy − 0.3 pt, the
plateau check of full data, and the study's targets. ``write_frontier_report`` turns the JSON into
``FRONTIER.md`` and PNGs beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from sadp_data.bench.frontier_config import ContestedCells, FrontierConfig, Part, Variant, events_config
from sadp_data.bench.frontier_report import format_frontier_table, write_frontier_report
from sadp_data.bench.frontier_summary import (
    ALL_METHODS,
    PLATEAU_TOLERANCE,
    TIME_TO_ACCURACY_MARGIN,
    frontier_targets,
    summarise,
)
from sadp_data.bench.harness import RunSpec
from sadp_data.bench.training_data import DemoConfig

__all__ = [
    "ALL_METHODS",
    "ContestedCells",
    "FrontierConfig",
    "Part",
    "Variant",
    "events_config",
    "format_frontier_table",
    "frontier_targets",
    "resummarise",
    "run_frontier_bench",
    "summarise",
    "write_frontier_report",
]


def _fresh_scores(kind: str):
    """``fresh(model, x, y)``: scores of ``x`` now, with a throwaway scorer of the ``kind`` variant."""

    def fresh(model, inputs, targets) -> np.ndarray:
        import torch.nn.functional as F

        from sadp_data.adapters.spikingjelly import reset
        from sadp_data.scoring.scorer import SpikeAwareScorer

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
    specs = part.specs(seed)
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
            from sadp_data.sources.datasets import FashionMNIST

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
                "variant_seeds": list(part.variant_seeds),
                "contested": None if part.contested is None else dataclasses.asdict(part.contested),
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
    them; the parts' own seeds start first, in part order (the largest first), and the contested cells'
    small groups fill the gaps at the end. With ``partial_json``, the runs finished so far are written
    there after every group, so a study cut short keeps what it measured.
    """
    from tqdm.auto import tqdm

    if any(p.config.dataset == "nmnist" for p in config.parts) and (
        nmnist_dir is None or not Path(nmnist_dir).is_dir()
    ):
        raise FileNotFoundError(f"the frontier bench's nmnist part needs an N-MNIST folder; {nmnist_dir} is not one")
    tasks = [(part, seed) for part in config.parts for seed in part.seeds]
    tasks += [(part, seed) for part in config.parts for seed in part.extra_seeds]
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
