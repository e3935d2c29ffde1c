"""The datasets and models of the training harness: Fashion-MNIST and N-MNIST (with k-fold pooling).

``prepare_data(config, data_dir, scratch)`` returns a ``TrainingData``: sizes, test tensors, and per
run a fresh score store, a data path (``wrap`` over a ``DataLoader`` for Fashion-MNIST, scored
WebDataset shards for N-MNIST) and a model. ``data_dir`` is an argument: ``None`` means the
Fashion-MNIST copy shipped in the repository (``sadp_data.sources.datasets.default_data_dir``); N-MNIST has
no shipped copy and needs a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sadp_data.loader import wrap
from sadp_data.sampler import SADPSampler
from sadp_data.sources.datasets import FashionMNIST
from sadp_data.store import ScoreStore, dataset_fingerprint


@dataclass
class DemoConfig:
    """Settings of a demo run (the defaults are the documented run, about 7 min on an idle 2-core CPU)."""

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
        """A smaller subset and fewer epochs (``QUICK_DURATION``; accuracy is not the point here)."""
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


#: How long ``sadp-data demo --quick`` takes (the ``--quick`` help and the README state this figure).
QUICK_DURATION = "about 70 s on an idle 2-core CPU; longer when other processes compete for the CPUs"


def option_help() -> dict[str, str]:
    """Help of the ``sadp-data demo`` options, stating the defaults ``DemoConfig`` really has.

    Keyed by option (``quick``, ``epochs``, ``keep_ratio``, ``seed``, ``train_size``, ``batch_size``);
    the figures come from the configs themselves (Fashion-MNIST, ``--quick``, N-MNIST), so they cannot drift.
    """
    from sadp_data.schedule import KeepRatioSchedule

    full, quick = DemoConfig(), DemoConfig.quick()
    events, events_quick = DemoConfig.for_dataset("nmnist"), DemoConfig.for_dataset("nmnist", quick=True)
    schedule = KeepRatioSchedule(full.keep_ratio, full.epochs, full.warmup_epochs, full.anneal_fraction, "decreasing")
    pruned = [schedule(epoch) for epoch in range(full.epochs) if schedule.phase(epoch) == "prune"]
    return {
        "quick": f"a small run: {quick.epochs} epochs on {quick.train_size:,} images, tested on {quick.test_size:,} "
        f"({QUICK_DURATION}); with nmnist: {events_quick.epochs} epochs",
        "epochs": f"number of epochs (default {full.epochs}, --quick {quick.epochs}; nmnist: {events.epochs}, "
        f"--quick {events_quick.epochs})",
        "keep_ratio": "mean fraction of the training set per pruned epoch, the budget of both pruned methods "
        f"(default {full.keep_ratio}): random keeps it every pruned epoch, SADP's decreasing schedule goes from "
        f"{max(pruned):.1f} down to {min(pruned):.1f} (default run); {full.warmup_epochs} warm-up and "
        f"{schedule.anneal_epochs} anneal epoch(s) train on all data",
        "seed": f"seed of the initial weights and of the sampling (default {full.seed})",
        "train_size": f"number of training images used (default {full.train_size:,}, --quick {quick.train_size:,}; "
        f"nmnist: {events.train_size:,} recordings)",
        "batch_size": f"batch size (default {full.batch_size}; nmnist: {events.batch_size})",
    }


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
    from sadp_data.sources.events.frames import integrate
    from sadp_data.sources.events.nmnist import NMNIST, SENSOR_SIZE

    if data_dir is None:
        raise ValueError("--dataset nmnist needs --data PATH (an N-MNIST folder such as nmnist-small)")
    from sadp_data.shards.writer import write_shards
    from sadp_data.sources import open_source

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
    from sadp_data.sources import Source

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
