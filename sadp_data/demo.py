"""The demo: train a spiking CNN on Fashion-MNIST with full data, random pruning and SADP.

All three methods train the same model from the same initial weights with the same optimizer,
learning-rate schedule and epochs. Their training steps are *interleaved* so that all methods move
through each epoch together (see ``_train_interleaved``): load from other processes on a shared
machine then slows all methods alike and the measured speedups stay honest. Each method's training
time is the sum of its own steps (data loading, forward, scoring, backward, optimizer), planning
included; evaluation is excluded.

* ``full``: the user's plain loop — ``DataLoader(shuffle=True)`` and mean cross-entropy;
* ``random``: uniform dynamic pruning — a fresh random ``keep_ratio`` subset each pruned epoch;
* ``sadp``: importance sampling by the spike-aware score (the method's defaults: the draw trained on
  unweighted, the ``decreasing`` schedule), scores in a Zarr sidecar.

Both pruned methods spend the same budget (warm-up and anneal epochs on full data).

The pieces are shared with the ``train`` bench (``sadp_data.bench.train``), which trains every
pruning method at several keep ratios the same way: ``prepare_data`` loads a dataset,
``build_run`` makes one method's model, optimizer, sampler, store and scorer from a ``RunSpec``, and
``train_runs`` trains any list of runs interleaved and evaluates them after every epoch.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .datasets import FashionMNIST
from .kernels import sample_size
from .loader import wrap
from .sampler import SADPSampler
from .scorer import SpikeAwareScorer
from .store import ScoreStore, dataset_fingerprint

METHODS = ("full", "random", "sadp")


@dataclass
class DemoConfig:
    """Settings of a demo run (the defaults are the documented ≤ 10 min run on 2 CPU cores)."""

    train_size: int = 15000
    test_size: int = 10000
    eval_size: int = 2000
    epochs: int = 8
    keep_ratio: float = 0.7
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_epochs: int = 1
    anneal_fraction: float = 0.125
    smoothing: float = 0.1
    time_steps: int = 4
    seed: int = 0
    dataset: str = "fashion-mnist"
    channels: tuple[int, int] = (16, 32)
    model: str = "conv"
    hidden: tuple[int, ...] = (256,)
    folds: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        if self.model not in ("conv", "mlp"):
            raise ValueError(f"model must be 'conv' or 'mlp', got {self.model!r}")
        if self.folds < 0 or (self.folds and not 0 <= self.fold < self.folds):
            raise ValueError(f"fold must be in [0, folds) when folds > 0, got fold={self.fold}, folds={self.folds}")

    @classmethod
    def quick(cls) -> DemoConfig:
        """A ≤ 2 min run: a smaller subset and fewer epochs (accuracy is not the point here)."""
        return cls(train_size=4000, test_size=2000, eval_size=1000, epochs=4)

    @classmethod
    def for_dataset(cls, dataset: str, quick: bool = False) -> DemoConfig:
        """Defaults per dataset: Fashion-MNIST (above) or the N-MNIST subset (1,000 recordings, 8 frames)."""
        if dataset == "fashion-mnist":
            return cls.quick() if quick else cls()
        if dataset == "nmnist":
            return cls(
                train_size=1000,
                test_size=100,
                eval_size=100,
                epochs=6 if quick else 12,
                batch_size=32,
                time_steps=8,
                dataset="nmnist",
            )
        raise ValueError(f"unknown demo dataset {dataset!r}; choose fashion-mnist or nmnist")


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


def _epoch_steps(run: Run, epoch: int, config: DemoConfig) -> Iterator[int]:
    """Train ``run`` for one epoch, one optimizer step per ``next()``; yields the batch size."""
    from sadp_data.adapters.spikingjelly import reset

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
        steps[run.name], totals[run.name] = _epoch_steps(run, epoch, config), len(run.loader)
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
    from sadp_data.adapters.spikingjelly import reset

    model.eval()
    count = len(labels) if limit is None else min(limit, len(labels))
    correct = 0
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        correct += int((model(inputs[start:stop]).argmax(1) == labels[start:stop]).sum())
        reset(model)
    return correct / count


@dataclass
class TrainingData:
    """What a dataset contributes to training runs: sizes, test tensors, and per-run stores and loaders.

    ``make_store(name)`` creates a fresh, empty score sidecar for the run called ``name`` (each run
    scores into its own store, so no method sees another's scores); ``make_loader(sampler)`` the
    run's data path (``None``: the plain shuffled loop).
    """

    train_size: int
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    make_store: Callable[[str], ScoreStore]
    make_loader: Callable[[SADPSampler | None], Any]
    make_model: Callable[[], torch.nn.Module]
    shard_size: int | None = None


def _image_model(config: DemoConfig) -> torch.nn.Module:
    """The SNN for 28×28 images: the conv SNN (``config.channels``) or the MLP SNN (``config.hidden``)."""
    from sadp_data.adapters.spikingjelly import ConvSNN, MlpSNN

    if config.model == "mlp":
        return MlpSNN(hidden=config.hidden, time_steps=config.time_steps)
    return ConvSNN(channels=config.channels, time_steps=config.time_steps)


def _fashion_data(config: DemoConfig, data_dir: str | Path | None, scratch: Path) -> TrainingData:
    train = FashionMNIST(data_dir, "train", limit=config.train_size)
    test = FashionMNIST(data_dir, "test", limit=config.test_size)
    fingerprint = dataset_fingerprint(train)

    def make_store(name: str) -> ScoreStore:
        return ScoreStore.create(scratch / f"{name}-scores.zarr", len(train), fingerprint=fingerprint)

    def make_loader(sampler: SADPSampler | None) -> Any:
        if sampler is None:
            generator = torch.Generator().manual_seed(config.seed)
            return DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator)
        return wrap(DataLoader(train, batch_size=config.batch_size), sampler)

    return TrainingData(
        len(train),
        test.images.unsqueeze(1).float().div(255.0),
        test.labels,
        make_store,
        make_loader,
        lambda: _image_model(config),
    )


def _nmnist_data(config: DemoConfig, data_dir: str | Path | None, scratch: Path) -> TrainingData:
    """N-MNIST through scored shards and the WebDataset adapter; events integrated at load time."""
    from sadp_data.adapters.spikingjelly import ConvSNN
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.events.frames import integrate
    from sadp_data.events.nmnist import NMNIST, SENSOR_SIZE

    if data_dir is None:
        raise ValueError("--dataset nmnist needs --data PATH (an N-MNIST folder such as nmnist-small)")
    from .shards import write_shards
    from .sources import open_source

    source = open_source(f"nmnist:{data_dir}", "train")
    if config.folds:
        source, test_items = _nmnist_fold(source, open_source(f"nmnist:{data_dir}", "test"), config)
    else:
        test = NMNIST(data_dir, "test")
        test_items = [{"events.npy": events, "y.cls": label} for events, label in (test[i] for i in range(len(test)))]
    if config.train_size < len(source):
        source = source.head(config.train_size)
    shard_size = 250
    index = write_shards(source, scratch / "shards", shard_size=shard_size, progress=False)
    steps = config.time_steps

    def to_frames(sample: dict) -> dict:
        frames = integrate(sample["events.npy"], SENSOR_SIZE, steps).astype(np.float32)
        return {**sample, "x": torch.from_numpy(frames)}

    def make_store(name: str) -> ScoreStore:
        return ScoreStore.create(scratch / f"{name}-scores.zarr", index.num_examples, fingerprint=index.fingerprint)

    def make_loader(sampler: SADPSampler | None) -> Any:
        dataset = ScoredShards(index.root, sampler).decode().map(to_frames).to_tuple("x", "y.cls")
        return dataset.loader(config.batch_size)

    count = min(config.test_size, len(test_items))
    inputs = torch.stack([to_frames(item)["x"] for item in test_items[:count]])
    labels = torch.tensor([int(item["y.cls"]) for item in test_items[:count]])
    return TrainingData(
        index.num_examples,
        inputs,
        labels,
        make_store,
        make_loader,
        lambda: ConvSNN(in_channels=2, channels=config.channels, image_size=34, time_steps=steps, sequence_input=True),
        shard_size,
    )


class _Pooled:
    """The items of several map-style datasets, in the order of a list of (dataset, index) pairs."""

    def __init__(self, parts: list[Any], pairs: list[tuple[int, int]]) -> None:
        self.parts, self.pairs = parts, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Any:
        part, position = self.pairs[index]
        return self.parts[part][position]


def _nmnist_fold(train: Any, test: Any, config: DemoConfig) -> tuple[Any, list[dict[str, Any]]]:
    """Fold ``config.fold`` of ``config.folds`` over the pooled training and test recordings.

    The pool is shuffled once with a fixed generator (the same folds for every seed and method);
    the fold's share is the test set, the rest (in pool order) the training source. Over all folds
    every recording is tested once, so k folds give ``len(train) + len(test)`` test points.
    """
    from .sources import Source

    pairs = [(0, i) for i in range(len(train))] + [(1, i) for i in range(len(test))]
    order = np.random.default_rng(20261201).permutation(len(pairs))
    bounds = np.linspace(0, len(pairs), config.folds + 1).round().astype(int)
    held = set(order[bounds[config.fold] : bounds[config.fold + 1]].tolist())
    parts = [train.data, test.data]
    kept = [pairs[i] for i in order if i not in held]
    tested = [pairs[i] for i in order if i in held]
    source = Source(f"{train.name}+test:fold{config.fold}/{config.folds}", _Pooled(parts, kept))
    return source, [parts[p][i] for p, i in tested]


def prepare_data(config: DemoConfig, data_dir: str | Path | None, scratch: Path) -> TrainingData:
    """Load ``config.dataset`` (Fashion-MNIST, or N-MNIST converted to scored shards under ``scratch``)."""
    return (_nmnist_data if config.dataset == "nmnist" else _fashion_data)(config, data_dir, scratch)


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
    from sadp_data.adapters.spikingjelly import reset

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
) -> dict[str, float]:
    """Train ``runs`` for ``config.epochs`` epochs, interleaved; returns each run's final test accuracy.

    One-off costs of the process are paid first, untimed (``_warm_up``). After every epoch each run
    is evaluated on the first ``config.eval_size`` test examples (``run.accuracy_per_epoch``) and
    ``after_epoch(epoch)`` is called. The final accuracy is on the whole test set (the last epoch's
    figure when ``eval_size`` already covers it). Stores are left open: the caller closes them.
    """
    _warm_up(runs, data, config)
    total = sum(run.examples_in(epoch, data.train_size) for run in runs for epoch in range(config.epochs))
    with tqdm(total=total, unit="ex", desc=desc, disable=not show_progress, smoothing=0.05) as progress:
        for epoch in range(config.epochs):
            progress.set_postfix_str(f"epoch {epoch + 1}/{config.epochs}")
            _train_interleaved(runs, epoch, config, progress)
            for run in runs:
                run.accuracy_per_epoch.append(evaluate(run.model, data.test_inputs, data.test_labels, config.eval_size))
            if after_epoch is not None:
                after_epoch(epoch)
            progress.write(
                f"{desc} epoch {epoch + 1}/{config.epochs}: "
                + ", ".join(
                    f"{run.name} {run.time_per_epoch[-1]:.1f} s {100 * run.accuracy_per_epoch[-1]:.2f} %"
                    for run in runs
                )
            )
    if config.eval_size >= len(data.test_labels):
        return {run.name: run.accuracy_per_epoch[-1] for run in runs}
    return {run.name: evaluate(run.model, data.test_inputs, data.test_labels) for run in runs}


def run_demo(
    config: DemoConfig,
    data_dir: str | Path | None = None,
    workdir: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the three methods and return the figures (see ``README.md`` for the JSON shape)."""
    specs = [
        RunSpec("full", "full", 1.0),
        RunSpec("random", "random", config.keep_ratio),
        RunSpec("sadp", "sadp", config.keep_ratio, "spike_aware"),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data = prepare_data(config, data_dir, folder)
        runs = [build_run(spec, data, config) for spec in specs]
        final = train_runs(runs, data, config, show_progress=show_progress)
        store = runs[-1].store
        store.close()
        scored = int((store.seen() > 0).sum())
    full = runs[0]
    methods = {}
    for run in runs:
        theoretical = 1.0 if run.sampler is None else run.sampler.theoretical_speedup()
        speedup = full.train_time_s / run.train_time_s
        methods[run.name] = {
            "test_accuracy": final[run.name],
            "train_time_s": run.train_time_s,
            "speedup": speedup,
            "theoretical_speedup": theoretical,
            "speedup_ratio": speedup / theoretical,
            "examples_seen": run.examples_seen,
            "accuracy_per_epoch": run.accuracy_per_epoch,
            "time_per_epoch_s": run.time_per_epoch,
        }
    return {
        "config": asdict(config),
        "methods": methods,
        "scored_examples": scored,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """The demo's result table (plain text, Markdown-compatible)."""
    lines = [
        "| method | test acc | train time (s) | speedup | theoretical | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["methods"].items():
        lines.append(
            f"| {name} | {100 * figures['test_accuracy']:.2f} % | {figures['train_time_s']:.1f} | "
            f"{figures['speedup']:.3f} | {figures['theoretical_speedup']:.3f} | {figures['speedup_ratio']:.3f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """PNG of evaluation accuracy against cumulative training time, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, figures in result["methods"].items():
        times, elapsed = [], 0.0
        for seconds in figures["time_per_epoch_s"]:
            elapsed += seconds
            times.append(elapsed)
        axis.plot(times, [100 * a for a in figures["accuracy_per_epoch"]], marker="o", label=name)
    config = result["config"]
    axis.set_xlabel("training time (s)")
    axis.set_ylabel(f"accuracy on {config['eval_size']} test examples (%)")
    axis.set_title(f"{config['dataset']}, conv SNN T={config['time_steps']}, keep ratio {config['keep_ratio']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
