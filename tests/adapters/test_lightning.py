"""Lightning: ``SADPCallback`` and ``train_dataloader`` under a real ``lightning.pytorch.Trainer``.

Two DDP ranks (``strategy="ddp"``, gloo, this file run as the training script: Lightning starts the
second rank by running it again) train the demo SNN and must train disjoint, equal slices of one
plan per epoch, take exactly ``total_steps()`` optimizer steps, and, resumed from a checkpoint taken
in the middle of a pruned epoch, train the identical remaining batches. In-process single-device runs
check resuming from every kind of checkpoint (mid-epoch, last batch, epoch end, mid-epoch
validation) and the refusals.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from _docs import run_doc_block  # noqa: E402

import sadp_data as sd  # noqa: E402
from sadp_data.adapters.lightning import (  # noqa: E402
    LightningLoader,
    SADPCallback,
    find_train_loader,
    train_dataloader,
)
from sadp_data.distributed import per_rank  # noqa: E402

LIMIT, BATCH, EPOCHS, CHECKPOINT_STEP = 201, 16, 3, 9
TIMEOUT_S = 240


class DemoSNN(pl.LightningModule):
    """The demo SNN on a Fashion-MNIST subset through sadp_data; records what this rank trained."""

    def __init__(self, workdir: Path, store_name: str) -> None:
        super().__init__()
        from sadp_data.adapters.spikingjelly import MlpSNN
        from sadp_data.sources.datasets import FashionMNIST

        torch.manual_seed(0)
        self.net = MlpSNN(hidden=(64,), time_steps=2)
        self.workdir, self.store_path = workdir, workdir / store_name
        self.dataset = FashionMNIST(None, "train", limit=LIMIT)
        self.sadp = SADPCallback()
        self.delivered: list[tuple[int, list[int]]] = []
        self.plans: dict[int, list[int]] = {}

    def setup(self, stage: str) -> None:  # torch.distributed is initialised here
        from sadp_data.distributed import open_store

        self.store = open_store(self.store_path, num_examples=LIMIT)
        self.sampler = sd.SADPSampler(
            self.store, keep_ratio=0.5, epochs=EPOCHS, batch_size=BATCH, seed=3, anneal_fraction=1 / 3
        )
        self.scorer = sd.SpikeAwareScorer(self.net, self.store, loss="cross_entropy")
        self.sadp.attach(self.sampler, self.scorer)

    def teardown(self, stage: str) -> None:
        self.store.close()

    def train_dataloader(self) -> LightningLoader:
        return train_dataloader(self.dataset, self.sampler)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from sadp_data.adapters.spikingjelly import reset

        x, y, index, weight = batch
        reset(self.net)
        out = self.net(x)
        self.delivered.append((self.current_epoch, index.tolist()))
        return self.scorer.step(index, out, y, F.cross_entropy(out, y, reduction="none"), weight)

    def on_train_epoch_end(self) -> None:
        self.plans[self.current_epoch] = self.sampler.plan.order.tolist()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        # OneCycleLR raises when stepped past total_steps: the count must not be short.
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=self.sadp.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _ddp_script(workdir: Path) -> None:
    """Reference run, a run stopped after a mid-epoch checkpoint, and its resumption; one JSON per rank and run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(1)

    def trainer(**kwargs: Any) -> pl.Trainer:
        return pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_epochs=EPOCHS,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=workdir,
            **kwargs,
        )

    def report(module: DemoSNN, fitted: pl.Trainer, name: str) -> None:
        data = {
            "world": fitted.world_size,
            "global_step": fitted.global_step,
            "total_steps": module.sadp.total_steps(),
            "delivered": module.delivered,
            "plans": module.plans,
        }
        (workdir / f"{name}-rank{fitted.global_rank}.json").write_text(json.dumps(data))

    reference = DemoSNN(workdir, "reference.zarr")
    fitted = trainer(callbacks=[reference.sadp], enable_checkpointing=False)  # use_distributed_sampler=True
    fitted.fit(reference)
    report(reference, fitted, "reference")
    interrupted = DemoSNN(workdir, "run.zarr")
    checkpoint = ModelCheckpoint(dirpath=workdir, filename="mid", every_n_train_steps=CHECKPOINT_STEP)
    fitted = trainer(callbacks=[interrupted.sadp, checkpoint], max_steps=CHECKPOINT_STEP)
    fitted.fit(interrupted)
    report(interrupted, fitted, "interrupted")
    resumed = DemoSNN(workdir, "run.zarr")
    fitted = trainer(callbacks=[resumed.sadp], enable_checkpointing=False)
    fitted.fit(resumed, ckpt_path=workdir / "mid.ckpt")
    report(resumed, fitted, "resumed")


def _epoch(delivered: list[list[Any]], epoch: int) -> list[int]:
    return [index for e, batch in delivered if e == epoch for index in batch]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_ranks_train_disjoint_slices_and_resume_mid_epoch(tmp_path: Path) -> None:
    pytest.importorskip("spikingjelly.activation_based")
    for name in ("reference.zarr", "run.zarr"):
        sd.ScoreStore.create(tmp_path / name, LIMIT).close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    runs = {
        name: [json.loads((tmp_path / f"{name}-rank{rank}.json").read_text()) for rank in (0, 1)]
        for name in ("reference", "interrupted", "resumed")
    }
    reference = runs["reference"]
    expected_steps = 0
    for epoch in range(EPOCHS):
        plan = reference[0]["plans"][str(epoch)]
        assert reference[1]["plans"][str(epoch)] == plan, f"epoch {epoch}: the ranks planned different epochs"
        first, second = (_epoch(report["delivered"], epoch) for report in reference)
        size = per_rank(len(plan), 2)
        assert len(first) == len(second) == size
        assert first + second == [plan[p % len(plan)] for p in range(2 * size)]  # one plan, two slices, padded
        assert len(set(first) & set(second)) == 2 * size - len(plan)  # disjoint but for the padding
        expected_steps += math.ceil(size / BATCH)
    assert len(reference[0]["plans"]["1"]) < LIMIT  # epoch 1 is pruned
    for report in reference:
        assert report["world"] == 2
        assert report["global_step"] == report["total_steps"] == expected_steps
    for rank in (0, 1):
        interrupted, resumed = runs["interrupted"][rank], runs["resumed"][rank]
        assert interrupted["global_step"] == CHECKPOINT_STEP
        assert interrupted["delivered"] == reference[rank]["delivered"][:CHECKPOINT_STEP]
        assert interrupted["plans"]["1"] == resumed["plans"]["1"] == reference[rank]["plans"]["1"]
        assert resumed["delivered"] == reference[rank]["delivered"][CHECKPOINT_STEP:]  # the identical remaining order
        assert resumed["global_step"] == expected_steps


# In-process runs: one device, a small MLP (fast), the same callback and loader.

SMALL, SMALL_BATCH, SMALL_EPOCHS = 100, 8, 4


class _Crash(Exception):
    pass


class SmallModule(pl.LightningModule):
    def __init__(self, store_path: Path) -> None:
        super().__init__()
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        inputs = torch.from_numpy(rng.normal(size=(SMALL, 8)).astype(np.float32))
        self.dataset = TensorDataset(inputs, torch.from_numpy(rng.integers(0, 4, SMALL)))
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.store_path = store_path
        self.sadp = SADPCallback()
        self.delivered: list[tuple[int, list[int]]] = []

    def setup(self, stage: str) -> None:
        self.store = sd.ScoreStore.open(self.store_path)
        self.sampler = sd.SADPSampler(
            self.store, keep_ratio=0.5, epochs=SMALL_EPOCHS, batch_size=SMALL_BATCH, seed=1, anneal_fraction=0.25
        )
        self.scorer = sd.SpikeAwareScorer(self.net, self.store, loss="cross_entropy")
        self.sadp.attach(self.sampler, self.scorer)

    def teardown(self, stage: str) -> None:
        self.store.close()

    def train_dataloader(self) -> Any:
        return train_dataloader(self.dataset, self.sampler)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index, weight = batch
        self.delivered.append((self.current_epoch, index.tolist()))
        out = self.net(x)
        return self.scorer.step(index, out, y, F.cross_entropy(out, y, reduction="none"), weight)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ValidatedModule(SmallModule):
    validations = 0

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=50)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))


class _SaveThenCrash(pl.Callback):
    """Saves a checkpoint at the first ``hook`` call where ``when(trainer)`` holds, then kills the run."""

    def __init__(self, path: Path, hook: str, when: Any) -> None:
        self.path, self.hook, self.when = path, hook, when
        self.trained: int | None = None

    def _maybe(self, trainer: pl.Trainer, module: SmallModule, hook: str) -> None:
        if hook == self.hook and self.when(trainer):
            trainer.save_checkpoint(self.path)
            self.trained = len(module.delivered)
            raise _Crash

    def on_train_batch_end(self, trainer: pl.Trainer, module: SmallModule, *args: Any) -> None:
        self._maybe(trainer, module, "train_batch_end")

    def on_train_epoch_end(self, trainer: pl.Trainer, module: SmallModule) -> None:
        self._maybe(trainer, module, "train_epoch_end")

    def on_validation_end(self, trainer: pl.Trainer, module: SmallModule) -> None:
        self._maybe(trainer, module, "validation_end")


def _small_trainer(root: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=SMALL_EPOCHS,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **kwargs,
    )


def _batches_done(trainer: pl.Trainer) -> int:
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def _last_batch(trainer: pl.Trainer) -> bool:
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


ACCUMULATE = {"accumulate_grad_batches": 2}
CHECKPOINTS = {
    "mid_epoch": ("train_batch_end", lambda t: t.current_epoch == 1 and _batches_done(t) == 2, False, {}),
    "last_batch": ("train_batch_end", lambda t: t.current_epoch == 1 and _last_batch(t), False, {}),
    "epoch_end": ("train_epoch_end", lambda t: t.current_epoch == 1, False, {}),
    "validation_at_epoch_end": ("validation_end", lambda t: t.current_epoch == 1, True, {}),
    "validation_mid_epoch": ("validation_end", lambda t: t.current_epoch == 2, True, {"val_check_interval": 2}),
    "accumulating": ("train_batch_end", lambda t: t.current_epoch == 2 and _batches_done(t) == 3, False, ACCUMULATE),
}


@pytest.mark.parametrize("point", sorted(CHECKPOINTS))
def test_resuming_from_any_checkpoint_trains_the_identical_remaining_batches(tmp_path: Path, point: str) -> None:
    hook, when, validate, options = CHECKPOINTS[point]
    module_type = ValidatedModule if validate else SmallModule
    for name in ("reference.zarr", "run.zarr"):
        sd.ScoreStore.create(tmp_path / name, SMALL).close()
    reference = module_type(tmp_path / "reference.zarr")
    fitted = _small_trainer(tmp_path, [reference.sadp], **options)
    fitted.fit(reference)
    assert fitted.global_step == reference.sadp.total_steps()
    if validate and not options:  # no length: validation after every epoch, pruned (shorter) ones included
        assert reference.validations == SMALL_EPOCHS
    interrupted = module_type(tmp_path / "run.zarr")
    crash = _SaveThenCrash(tmp_path / "run.ckpt", hook, when)
    with pytest.raises(_Crash):
        _small_trainer(tmp_path, [interrupted.sadp, crash], **options).fit(interrupted)
    interrupted.store.close()  # the process would have died; Lightning does not tear down after an exception
    assert crash.trained is not None and interrupted.delivered == reference.delivered[: crash.trained]
    resumed = module_type(tmp_path / "run.zarr")
    fitted = _small_trainer(tmp_path, [resumed.sadp], **options)
    fitted.fit(resumed, ckpt_path=tmp_path / "run.ckpt")
    assert resumed.delivered == reference.delivered[crash.trained :]
    assert fitted.global_step == reference.sadp.total_steps()


def test_a_loader_lightning_would_misuse_is_refused_with_the_fix(tmp_path: Path) -> None:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = sd.SADPSampler(num_examples=SMALL, method="random", epochs=2, batch_size=SMALL_BATCH)
    dataset = TensorDataset(torch.zeros(SMALL, 2))
    resplit = DataLoader(dataset, sampler=DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False))
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        find_train_loader(resplit, sampler)
    for direct in (sd.wrap(dataset, sampler), DataLoader(dataset, sampler=sampler, batch_size=SMALL_BATCH)):
        with pytest.raises(TypeError, match="train_dataloader"):
            find_train_loader({"a": direct}, sampler)
    with pytest.raises(ValueError, match="no train dataloader uses"):
        find_train_loader(train_dataloader(dataset, sd.SADPSampler(num_examples=SMALL, method="random"), 4), sampler)
    assert find_train_loader([train_dataloader(dataset, sampler)], sampler).sampler is sampler
    with pytest.raises(ValueError, match="batch_size=4"):
        train_dataloader(dataset, sampler, batch_size=4)


def test_a_bare_wrap_loader_fails_before_the_first_batch(tmp_path: Path) -> None:
    sd.ScoreStore.create(tmp_path / "run.zarr", SMALL).close()

    class Bare(SmallModule):
        def train_dataloader(self) -> Any:
            return sd.wrap(self.dataset, self.sampler)

    module = Bare(tmp_path / "run.zarr")
    with pytest.raises(TypeError, match="SADPLoader"):
        _small_trainer(tmp_path, [module.sadp]).fit(module)
    module.store.close()
    assert module.delivered == []


def test_a_sampler_of_another_world_is_refused(tmp_path: Path) -> None:
    sampler = sd.SADPSampler(num_examples=SMALL, method="random", epochs=2, batch_size=SMALL_BATCH, num_replicas=2)

    class Unprepared(SmallModule):
        def setup(self, stage: str) -> None:
            pass

    module = Unprepared(tmp_path / "unused.zarr")
    with pytest.raises(ValueError, match="num_replicas=2, rank=0"):
        _small_trainer(tmp_path, [SADPCallback(sampler)]).fit(module)


class Unscored(SmallModule):
    """A ``training_step`` that forgets ``scorer.step``: the loss is right, but no score is ever recorded."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index, weight = batch
        self.delivered.append((self.current_epoch, index.tolist()))
        return (F.cross_entropy(self.net(x), y, reduction="none") * weight).mean()


def test_a_training_step_that_never_scores_stops_before_the_first_pruned_epoch(tmp_path: Path) -> None:
    """Pruned epochs planned from no scores would be silently random pruning: the callback stops the run at
    the end of the warm-up epoch, naming ``scorer.step``; ``require_scores=False`` is the explicit opt-out."""
    sd.ScoreStore.create(tmp_path / "run.zarr", SMALL).close()
    module = Unscored(tmp_path / "run.zarr")
    with pytest.raises(RuntimeError, match=r"scorer\.step was never called.*epoch 1 is pruned"):
        _small_trainer(tmp_path, [module.sadp]).fit(module)
    module.store.close()
    assert {epoch for epoch, _ in module.delivered} == {0}  # no pruned epoch was trained

    opted_out = Unscored(tmp_path / "run.zarr")
    opted_out.sadp.require_scores = False
    _small_trainer(tmp_path, [opted_out.sadp]).fit(opted_out)
    assert {epoch for epoch, _ in opted_out.delivered} == set(range(SMALL_EPOCHS))


def test_a_malformed_checkpoint_state_is_refused_by_key() -> None:
    from sadp_data.resume import ResumeStateError

    sampler = sd.SADPSampler(num_examples=SMALL, method="random", epochs=2, batch_size=SMALL_BATCH)
    callback = SADPCallback(sampler)
    with pytest.raises(ResumeStateError, match="'position'"):
        callback.load_state_dict({"sampler": {**sampler.state_dict(), "position": "3"}})
    with pytest.raises(ResumeStateError, match="must be a dict"):
        callback.load_state_dict({"sampler": [1, 2]})


def test_total_steps_counts_optimizer_steps_with_accumulation() -> None:
    sampler = sd.SADPSampler(num_examples=SMALL, method="random", keep_ratio=0.5, epochs=4, batch_size=SMALL_BATCH)
    callback = SADPCallback(sampler)
    lengths = [sampler.num_batches(epoch) for epoch in range(4)]
    assert lengths == [13, 7, 7, 13]
    assert callback.total_steps() == sampler.total_steps() == 40
    assert callback.total_steps(accumulate_grad_batches=3) == sum(math.ceil(n / 3) for n in lengths) == 16
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        callback.total_steps(accumulate_grad_batches=0)


@pytest.mark.slow
def test_the_documented_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet creates its sidecar in the working folder
    namespace = run_doc_block("docs/integrations.md", "## Lightning", {"__name__": "docs_lightning"})
    trainer, model = namespace["trainer"], namespace["model"]
    assert trainer.global_step == model.sadp.total_steps() and trainer.current_epoch == namespace["epochs"]


if __name__ == "__main__":  # one DDP rank; Lightning runs this file again for the other
    _ddp_script(Path(sys.argv[1]))
