"""Lightning integration: ``SADPCallback`` and ``train_dataloader``, for ``lightning.pytorch.Trainer``.

``train_dataloader(dataset, sampler, **loader_kwargs)`` returns a ``LightningLoader``: the
``sadp_data.wrap`` loader (batches end in ``(index, weight)``) behind an object that is *not* a
``torch.utils.data.DataLoader``, has no ``__len__`` and no ``state_dict``. Each of those is on purpose:

* **Not a DataLoader**, so Lightning never replaces its sampler. With ``use_distributed_sampler=True``
  (the default) Lightning wraps the sampler of every train ``DataLoader`` under DDP in a
  ``DistributedSamplerWrapper``; the ``SADPSampler`` already gives every rank its own slice of the
  plan, so that would split each slice again and train on ``1 / world`` of the planned data. The
  loader works with either setting; a plain ``DataLoader(sampler=SADPSampler(...))`` that Lightning
  did re-wrap is refused at ``on_train_start`` with an error naming ``use_distributed_sampler``.
* **No length.** Lightning fixes ``num_training_batches``, the epoch limit and the validation
  interval from the length it reads once at set-up, but pruned epochs are shorter than full ones and
  the anneal epochs longer: a sized loader would cut later epochs or skip their validation. Without a
  length every epoch ends exactly when its plan is exhausted (Lightning prefetches one batch to see
  the end), and validation runs after every epoch. Trade-offs: the progress bar shows no total,
  ``val_check_interval`` must be ``1.0``, an int or a time, and ``trainer.estimated_stepping_batches``
  is unknown — use ``SADPCallback.total_steps()`` for step-based LR schedules.
* **No state of its own.** Lightning saves the state of stateful train loaders itself, reading their
  position when it saves, one prefetched batch ahead of training. ``SADPCallback`` saves the
  sampler's state instead, with the position taken from Lightning's count of the batches trained.

``SADPCallback(sampler, scorer)`` sets the sampler's epoch at every train-epoch start, gives the
exact number of optimizer steps of the run (``total_steps()``), keeps the sampler's state in every
checkpoint and restores it, so a run resumed from a mid-epoch checkpoint visits the identical
remaining examples in the identical order, on every rank. It checks the set-up once training starts
(sampler and scorer built for this process's rank and world size, the train loader not re-split) and
pushes the last scores to the store when training ends.

Data-parallel runs: build the store, sampler and scorer once ``torch.distributed`` is initialised,
in ``LightningModule.setup()`` (or ``LightningDataModule.setup()``), and hand them to the callback
with ``attach``; objects built before ``Trainer.fit`` see one process and are refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sadp_data.adapters._wrapped import WrappedLoader
from sadp_data.loader import SADPLoader, wrap
from sadp_data.plan import batch_count
from sadp_data.resume import check_state, require_state
from sadp_data.sampler import SADPSampler
from sadp_data.scoring.scorer import SpikeAwareScorer

__all__ = ["LightningLoader", "SADPCallback", "find_train_loader", "train_dataloader"]


class LightningLoader(WrappedLoader):
    """A train loader Lightning iterates as is: ``sadp_data.wrap``'s batches, no length, no state.

    Iterating yields the wrapped loader's batches (``(*batch, index, weight)``, dict batches with
    ``"index"``/``"weight"`` keys) of the sampler's current epoch from its resume position. Lightning
    finds ``loader.sampler`` and calls its ``set_epoch`` every epoch. See the module docstring for
    why it has neither ``__len__`` nor ``state_dict``: ``num_batches(epoch)`` gives the length.
    """

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches this rank trains in ``epoch`` (default: the sampler's current one), resumed or not."""
        return batch_count(self.sampler.epoch_length(epoch), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)


def train_dataloader(
    dataset: Dataset | DataLoader, sampler: SADPSampler, batch_size: int | None = None, **loader_kwargs: Any
) -> LightningLoader:
    """The train loader to return from ``train_dataloader()`` (a ``LightningLoader``).

    ``dataset`` is a map-style dataset or a ``DataLoader`` whose settings are kept (``sadp_data.wrap``);
    ``batch_size`` defaults to the sampler's and must equal it when both are set, since
    ``SADPSampler.total_steps`` and ``SADPCallback.total_steps`` count batches of the sampler's size.
    ``loader_kwargs`` go to the ``DataLoader`` (``num_workers``, ``collate_fn``, ``drop_last``, ...).
    Safe with any ``Trainer(use_distributed_sampler=...)``: Lightning does not re-wrap it.
    """
    if not isinstance(sampler, SADPSampler):
        raise TypeError(f"sampler must be an SADPSampler, got {type(sampler).__name__}")
    if batch_size is None:
        batch_size = sampler.batch_size if not isinstance(dataset, DataLoader) else dataset.batch_size
    if batch_size is None:
        raise ValueError("pass batch_size=, or build the SADPSampler with batch_size=")
    if sampler.batch_size is not None and int(batch_size) != sampler.batch_size:
        raise ValueError(
            f"batch_size={batch_size} but the sampler was built with batch_size={sampler.batch_size}: "
            "total_steps() counts the sampler's batches, so they must agree"
        )
    return LightningLoader(wrap(dataset, sampler, batch_size=int(batch_size), **loader_kwargs))


def _leaves(iterables: Any) -> Iterator[Any]:
    """The loaders in Lightning's ``trainer.train_dataloader`` (one loader, or lists/dicts of them)."""
    if isinstance(iterables, dict):
        for value in iterables.values():
            yield from _leaves(value)
    elif isinstance(iterables, (list, tuple)):
        for value in iterables:
            yield from _leaves(value)
    elif iterables is not None:
        yield iterables


def _wraps(candidate: Any, sampler: SADPSampler, depth: int = 3) -> bool:
    """Whether ``candidate`` is ``sampler`` or holds it (a wrapping sampler's ``sampler``/``dataset``)."""
    if candidate is sampler:
        return True
    if depth == 0 or candidate is None:
        return False
    return any(_wraps(value, sampler, depth - 1) for value in _inner_objects(candidate))


def _split_again(loader: DataLoader, sampler: SADPSampler) -> bool:
    """Whether a ``DistributedSampler`` (Lightning's ``DistributedSamplerWrapper``) wraps ``sampler`` in ``loader``."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = (loader.sampler, getattr(batch_sampler, "sampler", None))
    return any(isinstance(c, DistributedSampler) and c is not sampler and _wraps(c, sampler) for c in candidates)


def _inner_objects(candidate: Any) -> Iterable[Any]:
    for name in ("sampler", "batch_sampler", "dataset", "_sampler"):
        value = getattr(candidate, name, None)
        if value is not None and not isinstance(value, (int, float, str)):
            yield value


def find_train_loader(train_dataloader: Any, sampler: SADPSampler) -> LightningLoader:
    """The ``LightningLoader`` of ``sampler`` among Lightning's train loaders; clear errors otherwise.

    Raises ``ValueError`` when Lightning re-wrapped the sampler in a distributed sampler (it would be
    split twice: ``Trainer(use_distributed_sampler=True)`` on a ``DataLoader``), or when no train
    loader uses ``sampler``; ``TypeError`` for an ``SADPLoader`` or ``DataLoader`` passed directly.
    """
    for loader in _leaves(train_dataloader):
        if isinstance(loader, LightningLoader) and loader.sampler is sampler:
            return loader
        if isinstance(loader, DataLoader) and _split_again(loader, sampler):
            raise ValueError(
                f"Lightning replaced the train DataLoader's sampler with {type(loader.sampler).__name__}, which "
                "splits the SADPSampler's per-rank slice again (each rank would train on 1/world of its slice). "
                "Return sadp_data.adapters.lightning.train_dataloader(dataset, sampler) from train_dataloader(), "
                "or pass Trainer(use_distributed_sampler=False)"
            )
        if isinstance(loader, (SADPLoader, DataLoader)) and _wraps(loader, sampler):
            raise TypeError(
                f"the train loader is a {type(loader).__name__}: Lightning would fix its length from the first "
                "epoch (cutting longer epochs, skipping validation after shorter ones) and save its position one "
                "prefetched batch ahead. Return sadp_data.adapters.lightning.train_dataloader(dataset, sampler) "
                "(or LightningLoader(sadp_loader)) from train_dataloader()"
            )
    raise ValueError(
        "no train dataloader uses the SADPCallback's sampler: return train_dataloader(dataset, sampler) with "
        "the sampler given to SADPCallback (or SADPCallback.attach)"
    )


class SADPCallback(pl.Callback):
    """Drives an ``SADPSampler`` under a Lightning ``Trainer``: epochs, step count, checkpoints.

    Args:
        sampler: the sampler of the train loader (``train_dataloader(dataset, sampler)``). May be given
            later with ``attach`` — in a data-parallel run it has to be, from ``setup()``, because
            the sampler takes its rank and world size from ``torch.distributed`` when it is built.
        scorer: the ``SpikeAwareScorer`` the ``training_step`` calls (``scorer.step(index, out, y,
            per_example_loss, weight)``), optional: checked against the sampler's store and the
            world size, and its last scores pushed to the store when training ends.
        require_scores: at the end of a train epoch followed by a pruned epoch of a method that reads
            scores, raise ``RuntimeError`` when no score was recorded: with the scorer, when this epoch
            trained batches but ``scorer.step`` never ran; without it, when the store holds no score.
            A pruned epoch planned from no scores is silently random pruning. ``False`` is the
            opt-out, for scores that reach the store another way.

    Guarantees: ``sampler.set_epoch(trainer.current_epoch)`` before every train epoch; a checkpoint
    saved anywhere in an epoch (``ModelCheckpoint(every_n_train_steps=...)``, ``trainer.save_checkpoint``
    from a hook) resumes, with ``Trainer.fit(ckpt_path=...)``, to the batches that were not yet trained,
    in the identical order, on the same world size (``SADPSampler.load_state_dict``); a checkpoint at an
    epoch's end resumes at the next epoch with any world size. ``total_steps()`` equals
    ``trainer.global_step`` at the end of an uninterrupted run.
    """

    def __init__(
        self, sampler: SADPSampler | None = None, scorer: SpikeAwareScorer | None = None, *, require_scores: bool = True
    ) -> None:
        super().__init__()
        self.require_scores = bool(require_scores)
        self._trained = self._scored = 0  # batches of this train epoch, and those after which scorer.step had run
        self._last_scores: Any = None
        self.sampler: SADPSampler | None = None
        self.scorer: SpikeAwareScorer | None = None
        self._trainer: pl.Trainer | None = None
        self._loader: LightningLoader | None = None
        self._pending: dict[str, Any] | None = None
        self._batch_epoch: int | None = None
        self._restored: tuple[int, int] | None = None
        if sampler is not None:
            self.attach(sampler, scorer)
        elif scorer is not None:
            raise ValueError("pass the sampler with the scorer (SADPCallback(sampler, scorer))")

    def attach(self, sampler: SADPSampler, scorer: SpikeAwareScorer | None = None) -> None:
        """Use ``sampler`` (and ``scorer``) from now on; a checkpoint state loaded before is applied to it.

        Call it in ``LightningModule.setup()`` (or ``LightningDataModule.setup()``) when the sampler is
        built there: Lightning restores checkpoints after ``setup()`` and before the first batch.
        """
        if not isinstance(sampler, SADPSampler):
            raise TypeError(f"sampler must be an SADPSampler, got {type(sampler).__name__}")
        if scorer is not None and not isinstance(scorer, SpikeAwareScorer):
            raise TypeError(f"scorer must be a SpikeAwareScorer, got {type(scorer).__name__}")
        if scorer is not None and scorer.store is not None and scorer.store is not sampler.store:
            raise ValueError("the scorer writes to another ScoreStore than the one the sampler plans from")
        self.sampler, self.scorer, self._loader = sampler, scorer, None
        if self._trainer is not None:
            self._check_world(self._trainer)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(state)

    def total_steps(self, accumulate_grad_batches: int | None = None, drop_last: bool | None = None) -> int:
        """Optimizer steps of the whole run on this rank, exact before training starts (for LR schedules).

        ``Σ_e ceil(batches_e / accumulate_grad_batches)`` over the sampler's epochs, with
        ``batches_e = batch_count(ceil(round(k_e·N) / world), batch_size)``: Lightning steps the
        optimizer after every ``accumulate_grad_batches`` batches and after the last batch of an epoch.
        ``accumulate_grad_batches`` defaults to the trainer's (1 before ``setup``), ``drop_last`` to the
        train loader's once training started, else ``False`` (``train_dataloader``'s default). Call it
        from ``configure_optimizers`` (after ``setup``, so the sampler knows the world size).
        """
        sampler = self._require_sampler()
        if sampler.epochs is None:
            raise ValueError("total_steps needs epochs set on the SADPSampler")
        if sampler.batch_size is None:
            raise ValueError("total_steps needs batch_size set on the SADPSampler")
        if accumulate_grad_batches is None:
            accumulate_grad_batches = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        if drop_last is None:
            drop_last = self._loader.drop_last if self._loader is not None else False
        if int(accumulate_grad_batches) < 1:
            raise ValueError(f"accumulate_grad_batches must be at least 1, got {accumulate_grad_batches}")
        return sum(
            math.ceil(batch_count(sampler.epoch_length(e), sampler.batch_size, drop_last) / accumulate_grad_batches)
            for e in range(sampler.epochs)
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._loader, self._batch_epoch, self._restored = trainer, None, None, None
        if self.sampler is not None:
            self._check_world(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._require_sampler()
        if self._pending is not None:
            raise RuntimeError(
                "a checkpoint was restored but no sampler was attached before the train loader started; "
                "call SADPCallback.attach(sampler) in setup()"
            )
        self._check_world(trainer)
        if self.scorer is not None and trainer.world_size > 1 and self.scorer.store is not None:
            if self.scorer.exchange is None:
                raise ValueError(
                    "the SpikeAwareScorer was built before torch.distributed was initialised, so it would not "
                    "share scores across ranks: build it in LightningModule.setup()"
                )
        self._loader = find_train_loader(trainer.train_dataloader, sampler)
        if sampler.epochs is not None and trainer.max_epochs not in (None, -1, sampler.epochs):
            warnings.warn(
                f"Trainer(max_epochs={trainer.max_epochs}) but SADPSampler(epochs={sampler.epochs}): the keep-ratio "
                "schedule and total_steps() follow the sampler's epochs",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._require_sampler().set_epoch(trainer.current_epoch)
        self._trained = self._scored = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch, and whether ``scorer.step`` ran for it (its ``last_scores`` is a new tensor)."""
        self._trained += 1
        scores = None if self.scorer is None else self.scorer.last_scores
        if scores is not None and scores is not self._last_scores:
            self._scored, self._last_scores = self._scored + 1, scores

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the next epoch is planned: refuse to prune it from no scores (see ``require_scores``)."""
        sampler, upcoming = self._require_sampler(), trainer.current_epoch + 1
        if not self.require_scores or sampler.score_kind is None or sampler.store is None or not self._trained:
            return
        if (sampler.epochs is not None and upcoming >= sampler.epochs) or sampler.keep_ratio(upcoming) >= 1.0:
            return
        scored = self._scored > 0 if self.scorer is not None else bool(np.any(sampler.store.seen()))
        if trainer.world_size > 1:  # every rank decides alike: no rank raises alone
            scored = bool(trainer.strategy.reduce_boolean_decision(scored, all=False))
        if not scored:
            never = "scorer.step was never called" if self.scorer is not None else "no score reached the store"
            raise RuntimeError(
                f"train epoch {trainer.current_epoch} ran {self._trained} batches but {never}, and epoch {upcoming} "
                f"is pruned (keep_ratio={sampler.keep_ratio(upcoming)}): its plan would come from no scores, which "
                "is silently random pruning. Return self.scorer.step(index, out, y, per_example_loss, weight) from "
                "training_step (it records the scores and gives the weighted loss), or pass "
                "SADPCallback(require_scores=False) if the scores reach the store another way"
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Push pending score exchanges (a collective, on every rank) and flush the store."""
        if self.scorer is not None and self.scorer.exchange is not None:
            self.scorer.exchange.sync()
        if self.sampler is not None and self.sampler.store is not None:
            self.sampler.store.flush()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_epoch = self._require_sampler().epoch

    def state_dict(self) -> dict[str, Any]:
        """``{"sampler": SADPSampler.state_dict()}`` with ``position`` = examples of the batches trained so far.

        Lightning prefetches a batch ahead, so the sampler's own count would skip it on resume; the
        position is read from Lightning's progress instead: batches whose ``training_step`` ran in
        this epoch times the batch size (at most the epoch's length). Flushes the store.
        """
        if self.sampler is None:
            return {} if self._pending is None else dict(self._pending)
        state = self.sampler.state_dict()
        state["position"] = self._trained_position(int(state["epoch"]), int(state["position"]))
        return {"sampler": state}

    def _trained_position(self, epoch: int, fallback: int) -> int:
        """Examples of ``epoch`` whose batches were trained (Lightning's count; it survives resumes)."""
        sampler, trainer = self._require_sampler(), self._trainer
        batch_size = self._loader.batch_size if self._loader is not None else sampler.batch_size
        if trainer is None or batch_size is None:
            return fallback
        if self._batch_epoch == epoch:  # a batch of this epoch started in this process: Lightning's count is current
            trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            return min(trained * batch_size, sampler.epoch_length(epoch))
        if self._restored is not None and self._restored[0] == epoch:  # resumed, no batch trained yet
            return self._restored[1]
        return 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the sampler (now, or when ``attach`` gives it); the next train batch continues the epoch."""
        if not state_dict:
            return
        if self.sampler is None:
            self._pending = dict(state_dict)
            return
        self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        """Validate the checkpoint's sampler state (``resume.check_state``), then load it."""
        sampler = self._require_sampler()
        saved = dict(require_state(require_state(state, "SADPCallback").get("sampler"), "SADPSampler"))
        fields = check_state(sampler, saved)
        epoch = fields["epoch"]
        finished = fields["position"] >= sampler.epoch_length(epoch)
        if finished and (sampler.epochs is None or epoch + 1 < sampler.epochs):
            # Lightning resumes an epoch saved after its last batch at the next epoch, and reads the first
            # batch of the resumed run before it calls set_epoch: plan that next epoch from the start.
            saved.update(epoch=epoch + 1, position=0, snapshot_version=None)
        sampler.load_state_dict(saved)
        self._restored = (saved["epoch"], saved["position"])

    def _require_sampler(self) -> SADPSampler:
        if self.sampler is None:
            raise RuntimeError("SADPCallback has no sampler: pass it to SADPCallback(sampler) or attach(sampler)")
        return self.sampler

    def _check_world(self, trainer: pl.Trainer) -> None:
        sampler = self._require_sampler()
        if (sampler.num_replicas, sampler.rank) != (trainer.world_size, trainer.global_rank):
            raise ValueError(
                f"the SADPSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but this Trainer "
                f"process is rank {trainer.global_rank} of {trainer.world_size}: build the sampler (and its store "
                "and scorer) in LightningModule.setup(), after torch.distributed is initialised, and "
                "SADPCallback.attach() it there (or pass num_replicas=trainer.world_size, rank=trainer.global_rank)"
            )
