"""The training harness of the demo and the bench suites: runs, the interleaved loop, evaluation.

All runs train the same model from the same initial weights with the same optimizer,
learning-rate schedule and epochs. Their training steps are *interleaved* so that all methods move
through each epoch together (see ``_train_interleaved``): load from other processes on a shared
machine then slows all methods alike and the measured speedups stay honest. Each run's training
time is the sum of its own steps (data loading, forward, scoring, backward, optimizer), planning
included; evaluation is excluded.

``build_run`` makes one method's model, optimizer, sampler, store and scorer from a ``RunSpec`` and
the ``TrainingData`` of ``sadp_data.bench.training_data``; ``train_runs`` trains any list of runs
interleaved and evaluates them after every epoch. The demo (``sadp_data.bench.demo``), the
``train`` bench and the ``frontier`` study all train through these two functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sadp_data.adapters.spikingjelly import reset
from sadp_data.kernels import sample_size
from sadp_data.sampler import SADPSampler
from sadp_data.scoring.scorer import SpikeAwareScorer
from sadp_data.store import ScoreStore

from .training_data import DemoConfig, TrainingData


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``method`` at ``keep_ratio``, with the scorer variant that feeds its store.

    ``method`` is a name in ``sadp_data.methods`` and ``options`` its ``method_options`` as (name, value)
    pairs; ``sampler_options`` override ``SADPSampler`` settings of the run (``schedule``,
    ``smoothing``, ...); ``"full"`` over a plain dataset is the user's plain
    loop (``DataLoader(shuffle=True)``, mean loss), through scored shards the ``full`` sampler. ``score`` is the
    ``SpikeAwareScorer`` variant recording scores into the run's own store (``None``: no store, no
    scorer). ``name`` labels the run and must be unique among runs trained together.
    """

    name: str
    method: str
    keep_ratio: float
    score: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    sampler_options: tuple[tuple[str, Any], ...] = ()

    @property
    def method_options(self) -> dict[str, Any]:
        """``options`` as the ``method_options`` dict of ``SADPSampler``."""
        return dict(self.options)


@dataclass
class Run:
    """One method's model, optimiser and data path, trained an epoch at a time."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any
    sampler: SADPSampler | None = None
    scorer: SpikeAwareScorer | None = None
    store: ScoreStore | None = None
    train_time_s: float = 0.0
    examples_seen: int = 0
    accuracy_per_epoch: list[float] = field(default_factory=list)
    time_per_epoch: list[float] = field(default_factory=list)

    def examples_in(self, epoch: int, train_size: int) -> int:
        """Examples this run trains on in ``epoch`` (known before the epoch starts)."""
        return train_size if self.sampler is None else sample_size(train_size, self.sampler.keep_ratio(epoch))


def _learning_rate(config: DemoConfig, epoch: int) -> float:
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))


def epoch_steps(run: Run, epoch: int, config: DemoConfig) -> Iterator[int]:
    """Train ``run`` for one epoch, one optimizer step per ``next()``; yields the batch size."""

    for group in run.optimizer.param_groups:
        group["lr"] = _learning_rate(config, epoch)
    run.model.train()
    for batch in run.loader:
        if run.sampler is None:
            images, labels = batch
            loss = F.cross_entropy(run.model(images), labels)
        else:
            images, labels, indices, weights = batch
            outputs = run.model(images)
            per_example = F.cross_entropy(outputs, labels, reduction="none")
            if run.scorer is not None:
                loss = run.scorer.step(indices, outputs, labels, per_example, weights)
            else:
                loss = (per_example * weights).mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        reset(run.model)
        yield int(labels.shape[0])


def _train_interleaved(runs: list[Run], epoch: int, config: DemoConfig, progress: tqdm) -> None:
    """One epoch of every run, steps interleaved so all runs advance through the epoch together.

    The next step always goes to the run with the smallest fraction of its epoch done, so a burst
    of load from elsewhere on the machine slows every method in proportion to its work, and each
    run's time (the sum of its own steps) stays comparable.
    """
    steps: dict[str, Iterator[int]] = {}
    totals: dict[str, int] = {}
    done = dict.fromkeys((run.name for run in runs), 0)
    elapsed = dict.fromkeys(done, 0.0)
    for run in runs:
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        steps[run.name], totals[run.name] = epoch_steps(run, epoch, config), len(run.loader)
    by_name = {run.name: run for run in runs}
    active = [run.name for run in runs]
    while active:
        name = min(active, key=lambda n: done[n] / totals[n])
        start = time.perf_counter()
        try:
            count = next(steps[name])
        except StopIteration:
            active.remove(name)
            count = 0
        elapsed[name] += time.perf_counter() - start
        done[name] += 1
        by_name[name].examples_seen += count
        progress.update(count)
    for run in runs:
        run.train_time_s += elapsed[run.name]
        run.time_per_epoch.append(elapsed[run.name])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, limit: int | None = None, batch_size: int = 500
) -> float:
    """Top-1 accuracy (a fraction) on the first ``limit`` of ``inputs``/``labels``."""

    model.eval()
    count = len(labels) if limit is None else min(limit, len(labels))
    correct = 0
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        correct += int((model(inputs[start:stop]).argmax(1) == labels[start:stop]).sum())
        reset(model)
    return correct / count


def build_run(spec: RunSpec, data: TrainingData, config: DemoConfig) -> Run:
    """A fresh model (initial weights from ``config.seed``: equal for every run), Adam, and the data path.

    ``full`` over a plain dataset trains on ``DataLoader(shuffle=True)``; every other run gets an
    ``SADPSampler`` with the shared schedule, over its own store when ``spec.score`` is set.
    """
    torch.manual_seed(config.seed)
    model = data.make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    sampler, store = None, None
    if spec.method != "full" or data.shard_size is not None:
        store = data.make_store(spec.name) if spec.score is not None else None
        sampler = SADPSampler(
            store,
            spec.keep_ratio,
            config.epochs,
            num_examples=data.train_size,
            batch_size=config.batch_size,
            seed=config.seed,
            warmup_epochs=config.warmup_epochs,
            anneal_fraction=config.anneal_fraction,
            method=spec.method,
            method_options=spec.method_options,
            shard_size=data.shard_size,
            **{"smoothing": config.smoothing, **dict(spec.sampler_options)},
        )
    scorer = SpikeAwareScorer(model, store, score=spec.score, loss="cross_entropy") if spec.score is not None else None
    return Run(spec.name, model, optimizer, data.make_loader(sampler), sampler, scorer, store)


def _warm_up(runs: list[Run], data: TrainingData, config: DemoConfig) -> None:
    """Pay the process's one-off costs before any run is timed, so they land on no run's clock.

    A throwaway model (global RNG state restored afterwards) takes a few training steps with a
    scorer on a batch of test inputs (the first steps of a process allocate and select kernels),
    and one pruned epoch is planned per sampling method in use (the first plan loads the method's
    compiled kernels, about 0.4 s). Nothing of the runs themselves is touched.
    """

    with torch.random.fork_rng():
        model = data.make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        scorer = SpikeAwareScorer(model)
        inputs, labels = data.test_inputs[: config.batch_size], data.test_labels[: config.batch_size]
        model.train()
        for _ in range(3):
            outputs = model(inputs)
            per_example = F.cross_entropy(outputs, labels, reduction="none")
            loss = scorer.step(torch.arange(labels.shape[0]), outputs, labels, per_example)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            reset(model)
        scorer.remove()
    methods = {run.sampler.method: run.store is not None for run in runs if run.sampler is not None}
    for method, scored in methods.items():
        store = data.make_store(f"warm-up-{method}") if scored else None
        if store is not None:
            store.update(np.arange(data.train_size), np.ones(data.train_size, dtype=np.float32))
        sampler = SADPSampler(
            store,
            0.5,
            num_examples=data.train_size,
            seed=config.seed,
            warmup_epochs=0,
            method=method,
            shard_size=data.shard_size,
        )
        _ = sampler.plan
        if store is not None:
            store.close()


def train_runs(
    runs: list[Run],
    data: TrainingData,
    config: DemoConfig,
    *,
    desc: str = "demo",
    show_progress: bool = True,
    after_epoch: Callable[[int], None] | None = None,
    last_on_full_test: bool = False,
) -> dict[str, float]:
    """Train ``runs`` for ``config.epochs`` epochs, interleaved; returns each run's final test accuracy.

    One-off costs of the process are paid first, untimed (``_warm_up``). After every epoch each run
    is evaluated on the first ``config.eval_size`` test examples (``run.accuracy_per_epoch``) and
    ``after_epoch(epoch)`` is called. The final accuracy is on the whole test set (the last epoch's
    figure when ``eval_size`` already covers it). ``last_on_full_test`` evaluates the last epoch on
    the whole test set instead of ``eval_size``, so the curve ends on the final accuracy (one
    evaluation fewer). Stores are left open: the caller closes them.
    """
    _warm_up(runs, data, config)
    total = sum(run.examples_in(epoch, data.train_size) for run in runs for epoch in range(config.epochs))
    with tqdm(total=total, unit="ex", desc=desc, disable=not show_progress, smoothing=0.05) as progress:
        for epoch in range(config.epochs):
            progress.set_postfix_str(f"epoch {epoch + 1}/{config.epochs}")
            _train_interleaved(runs, epoch, config, progress)
            limit = None if last_on_full_test and epoch == config.epochs - 1 else config.eval_size
            for run in runs:
                run.accuracy_per_epoch.append(evaluate(run.model, data.test_inputs, data.test_labels, limit))
            if after_epoch is not None:
                after_epoch(epoch)
            progress.write(
                f"{desc} epoch {epoch + 1}/{config.epochs}: "
                + ", ".join(
                    f"{run.name} {run.time_per_epoch[-1]:.1f} s {100 * run.accuracy_per_epoch[-1]:.2f} %"
                    for run in runs
                )
            )
    if last_on_full_test or config.eval_size >= len(data.test_labels):
        return {run.name: run.accuracy_per_epoch[-1] for run in runs}
    return {run.name: evaluate(run.model, data.test_inputs, data.test_labels) for run in runs}
