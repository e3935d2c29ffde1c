"""Accelerate: ``prepare_loader`` keeps the SADPSampler's per-process slices through ``Accelerator.prepare``.

Two processes (``torchrun --standalone``, gloo, ``Accelerator(cpu=True)``; this file is the script) train
the demo SNN with gradient accumulation: each epoch they must train disjoint, equal slices of one plan,
``set_epoch`` must reach the sampler, the optimizer must step ``loader.total_steps()`` times, and a state
saved with ``accelerator.save_state`` in the middle of a pruned epoch must resume, through
``load_state``, to the identical remaining batches. ``prepare`` must return the loader unchanged, and a
``DataLoader`` on the sampler that ``prepare`` re-shards must be refused. In-process checks cover one
process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

pytest.importorskip("accelerate")

from _docs import run_doc_block
from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader

import sadp_data as sd
from sadp_data.adapters.accelerate import AcceleratedLoader, check_not_resharded, prepare_loader
from sadp_data.distributed import per_rank
from sadp_data.kernels import sample_size

LIMIT, BATCH, EPOCHS, ACCUMULATE, SAVE_AT = 201, 16, 3, 2, 32
TIMEOUT_S = 180


def _train_epoch(accelerator: Accelerator, parts: dict[str, Any], epoch: int, save_to: Path | None) -> dict[str, Any]:
    from sadp_data.adapters.spikingjelly import reset

    loader, model, optimizer, scorer = parts["loader"], parts["model"], parts["optimizer"], parts["scorer"]
    loader.set_epoch(epoch)
    record: dict[str, Any] = {"sampler_epoch": loader.sampler.epoch, "len": len(loader), "indices": [], "steps": 0}
    for x, y, index, weight in loader:
        with accelerator.accumulate(model):
            reset(parts["net"])
            out = model(x)
            loss = scorer.step(index, out, y, F.cross_entropy(out, y, reduction="none"), weight)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        record["steps"] += int(accelerator.sync_gradients)
        record["indices"].extend(index.tolist())
        if save_to is not None and len(record["indices"]) == SAVE_AT:
            accelerator.save_state(save_to)
    record["plan"] = loader.sampler.plan.order.tolist()
    return record


def _parts(accelerator: Accelerator, workdir: Path) -> dict[str, Any]:
    """Store, sampler, loader, model, optimizer and scorer of one process, as a training script builds them."""
    from sadp_data.adapters.spikingjelly import MlpSNN
    from sadp_data.distributed import open_store
    from sadp_data.sources.datasets import FashionMNIST

    store = open_store(workdir / "scores.zarr", num_examples=LIMIT)  # after Accelerator(): rank 0 writes
    dataset = FashionMNIST(None, "train", limit=LIMIT)
    sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=EPOCHS, batch_size=BATCH, seed=3, anneal_fraction=1 / 3)
    torch.manual_seed(0)
    net = MlpSNN(hidden=(64,), time_steps=2)
    loader = prepare_loader(accelerator, dataset, sampler)
    model, optimizer, prepared = accelerator.prepare(net, torch.optim.Adam(net.parameters(), lr=1e-3), loader)
    accelerator.register_for_checkpointing(loader)
    scorer = sd.SpikeAwareScorer(net, store, loss="cross_entropy")
    parts = {"loader": loader, "model": model, "optimizer": optimizer, "scorer": scorer, "net": net}
    return {**parts, "store": store, "dataset": dataset, "prepared": prepared}


def _script(workdir: Path) -> None:
    """One process of the two: train, saving a state mid-epoch; then, as a restarted run, load it and go on."""
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    parts = _parts(accelerator, workdir)
    loader, sampler = parts["loader"], parts["loader"].sampler
    resharded = prepare_data_loader(DataLoader(parts["dataset"], batch_size=BATCH, sampler=sampler))
    try:
        check_not_resharded(resharded, sampler)
        refused = False
    except ValueError:
        refused = True
    check_not_resharded(loader, sampler)
    report: dict[str, Any] = {
        "world": accelerator.num_processes,
        "prepare_kept_the_loader": parts["prepared"] is loader,
        "resharded_loader_refused": refused,
        "total_steps": loader.total_steps(),
        "keep_ratios": [sampler.keep_ratio(e) for e in range(EPOCHS)],
    }
    report["run"] = [_train_epoch(accelerator, parts, e, workdir / "state" if e == 1 else None) for e in range(EPOCHS)]
    parts["store"].close()
    # A restarted run: fresh objects (the store reopened, the scores having moved on), then load_state.
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    parts = _parts(accelerator, workdir)
    accelerator.load_state(workdir / "state")
    report["resumed"] = [_train_epoch(accelerator, parts, e, None) for e in range(1, EPOCHS)]
    parts["store"].close()
    (workdir / f"rank{accelerator.process_index}.json").write_text(json.dumps(report))
    accelerator.end_training()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_disjoint_slices_through_prepare_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("spikingjelly.activation_based")
    sd.ScoreStore.create(tmp_path / "scores.zarr", LIMIT).close()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in ranks:
        assert report["world"] == 2 and report["prepare_kept_the_loader"] and report["resharded_loader_refused"]
    expected_steps = 0
    for epoch in range(EPOCHS):
        first, second = (report["run"][epoch] for report in ranks)
        assert first["sampler_epoch"] == second["sampler_epoch"] == epoch  # set_epoch reached the sampler
        plan = first["plan"]
        assert second["plan"] == plan and len(plan) == sample_size(LIMIT, ranks[0]["keep_ratios"][epoch])
        size = per_rank(len(plan), 2)
        assert len(first["indices"]) == len(second["indices"]) == size
        assert first["indices"] + second["indices"] == [plan[p % len(plan)] for p in range(2 * size)]
        assert len(set(first["indices"]) & set(second["indices"])) == 2 * size - len(plan)
        batches = math.ceil(size / BATCH)
        assert first["len"] == second["len"] == batches
        assert first["steps"] == second["steps"] == math.ceil(batches / ACCUMULATE)  # a step at every epoch's end
        expected_steps += first["steps"]
    assert ranks[0]["keep_ratios"][1] < 1.0
    for report in ranks:
        assert report["total_steps"] == expected_steps
        middle, last = report["resumed"]
        assert middle["indices"] == report["run"][1]["indices"][SAVE_AT:]  # the identical remaining order
        assert middle["plan"] == report["run"][1]["plan"]
        assert last["indices"] == report["run"][2]["indices"]


# In-process checks: one process.


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """Reset Accelerate's singletons after each test, as its own ``AccelerateTestCase.tearDown`` does."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _small(num_replicas: int | None = None) -> tuple[TensorDataset, sd.SADPSampler]:
    rng = np.random.default_rng(0)
    dataset = TensorDataset(torch.from_numpy(rng.normal(size=(50, 4)).astype(np.float32)), torch.zeros(50).long())
    sampler = sd.SADPSampler(
        num_examples=50, method="random", keep_ratio=0.5, epochs=3, batch_size=8, num_replicas=num_replicas
    )
    return dataset, sampler


@pytest.mark.slow
def test_one_process_steps_at_every_epoch_end_and_resumes() -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
    dataset, sampler = _small()
    model = nn.Linear(4, 2)
    loader = prepare_loader(accelerator, dataset, sampler)
    model, optimizer, same = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1), loader)
    assert same is loader and isinstance(loader, AcceleratedLoader)
    steps, delivered, saved = 0, [], None
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = len(loader)
        for number, (x, y, index, weight) in enumerate(loader, 1):
            assert x.device == accelerator.device and weight.shape == index.shape
            assert accelerator.gradient_state.end_of_dataloader == (number == batches)
            with accelerator.accumulate(model):
                accelerator.backward((F.cross_entropy(model(x), y, reduction="none") * weight).mean())
                optimizer.step()
                optimizer.zero_grad()
            steps += int(accelerator.sync_gradients)
            delivered.append(index.tolist())
            if epoch == 1 and number == 2:
                saved = (loader.state_dict(), len(delivered))
    assert steps == loader.total_steps() == sum(math.ceil(sampler.num_batches(e) / 3) for e in range(3))
    assert saved is not None
    state, count = saved
    loader.load_state_dict(state)
    resumed = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        resumed.extend(index.tolist() for _, _, index, _ in loader)
    assert resumed == delivered[count:]


def test_loaders_prepare_would_reshard_are_refused() -> None:
    accelerator = Accelerator(cpu=True)
    dataset, sampler = _small()
    shard = BatchSamplerShard(BatchSampler(sampler, 8, False), num_processes=2, process_index=0)
    with pytest.raises(ValueError, match="BatchSamplerShard"):
        check_not_resharded(DataLoader(dataset, batch_sampler=shard), sampler)
    check_not_resharded(prepare_loader(accelerator, dataset, sampler), sampler)
    with pytest.raises(TypeError, match="that accelerator"):
        prepare_loader(accelerator, accelerator.prepare(DataLoader(dataset, batch_size=8)), sampler)
    _, other_world = _small(num_replicas=2)
    with pytest.raises(ValueError, match="num_replicas=2, rank=0"):
        prepare_loader(accelerator, dataset, other_world)


def test_the_documented_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet creates its sidecar in the working folder
    namespace = run_doc_block("docs/integrations.md", "## Accelerate")
    assert namespace["sampler"].epoch == namespace["epochs"] - 1 and (tmp_path / "accelerate.scores.zarr").is_dir()


if __name__ == "__main__":  # one of the processes torchrun starts
    _script(Path(sys.argv[1]))
