"""``SpikeAwareScorer.step`` never makes the host wait for the device; its scores still reach the store
exactly once, in order, with the epoch they were computed in.

On CPU the device-to-host path is replaced by a recording fake (its copies are "done" only when the
test says so) and ``step()`` runs under a ``TorchFunctionMode`` that records every read of a tensor's
value on the host (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool``/``int``/``float``) and every copy
not made with ``non_blocking=True``, except on the host buffers the fake hands back. On a GPU the README
loop runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

import sadp_data as sd
from sadp_data.scoring._closed_form import closed_form_holds, mean_logit_scores_torch, mean_logit_terms

N, T, F_IN, H, C, BATCH = 48, 3, 6, 10, 4, 8
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}


class MeanLogitNet(nn.Module):
    """[B, T, F] -> Linear -> sigmoid -> Linear readout [B, T, C] -> mean over T (+ ``offset``)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.readout = nn.Linear(F_IN, H), nn.Linear(H, C)
        self.offset = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.sigmoid(self.hidden(x))).mean(1) + self.offset


class FakeEvent:
    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


class FakeCopy:
    """``DeviceCopy`` as if every tensor lived on a GPU: copies made with ``non_blocking=True`` into
    buffers it remembers as host memory, each batch's event pending until the test completes it."""

    def __init__(self) -> None:
        self.events: list[FakeEvent] = []
        self.host_ids: set[int] = set()
        self.hosts: list[torch.Tensor] = []

    def defers(self, tensor: torch.Tensor) -> bool:
        return True

    def start(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], FakeEvent]:
        hosts = [torch.empty_like(t).copy_(t, non_blocking=True) for t in tensors]
        self.hosts += hosts  # kept alive, so their ids stay theirs
        self.host_ids.update(id(h) for h in hosts)
        self.events.append(FakeEvent())
        return hosts, self.events[-1]


class HostReads(TorchFunctionMode):
    """Records host reads of tensor values and blocking copies, except on the fake's host buffers."""

    def __init__(self, host_ids: set[int]) -> None:
        super().__init__()
        self.host_ids = host_ids
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        on_host = bool(args) and id(args[0]) in self.host_ids
        if name in HOST_READS and not on_host:
            self.found.append(name)
        moves = name == "copy_" or (name == "to" and _names_a_device(args[1:], kwargs))
        if moves and not kwargs.get("non_blocking", False):
            self.found.append(f"{name} without non_blocking=True")
        return func(*args, **kwargs)


def _names_a_device(args: tuple, kwargs: dict) -> bool:
    """Whether a ``Tensor.to`` call moves between devices (a dtype alone does not)."""
    return "device" in kwargs or any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args)


@contextmanager
def recording(copy: FakeCopy) -> Iterator[HostReads]:
    with HostReads(copy.host_ids) as mode:
        yield mode


def _setup(tmp_path: Path, loss: str | None):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(N, T, F_IN), torch.randint(0, C, (N,)))
    store = sd.ScoreStore.create(tmp_path / "scores.zarr", N)
    sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=2, batch_size=BATCH, seed=0)
    loader = sd.wrap(DataLoader(data, batch_size=BATCH), sampler)
    model = MeanLogitNet()
    scorer = sd.SpikeAwareScorer(model, store, loss=loss, time_axis=1)
    copy = FakeCopy()
    scorer._transfer.copy = copy  # the device-to-host path, injected
    return store, sampler, loader, model, scorer, copy


@pytest.mark.parametrize("loss", [None, "cross_entropy"])
def test_step_reads_nothing_on_the_host_and_every_score_lands_once_in_order(tmp_path: Path, loss: str | None) -> None:
    store, sampler, loader, model, scorer, copy = _setup(tmp_path, loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sent: list[tuple[np.ndarray, np.ndarray, int]] = []  # what step() computed, in order, with its epoch
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y, idx, w in loader:
            out = model(x)
            per_example = F.cross_entropy(out, y, reduction="none")
            first = not sent  # the closed form is checked once, synchronously, at the first step
            with recording(copy) as reads:
                loss_value = scorer.step(idx, out, y, per_example, w)
            assert (first and loss == "cross_entropy") or reads.found == [], reads.found
            sent.append((idx.numpy().copy(), scorer.last_scores.detach().numpy().copy(), epoch))
            optimizer.zero_grad()
            loss_value.backward()
            optimizer.step()
            if len(sent) == 2 and epoch == 0:
                assert store.version == 0 and len(scorer._transfer) == 2  # nothing applied while in flight
                copy.events[0].done = True  # the first batch's copy completes: the next step applies it
            if len(sent) == 3 and epoch == 0:
                assert store.version == 1 and len(scorer._transfer) == 2
        if epoch == 0:
            assert not any(event.waited for event in copy.events), "step() waited for a copy"
            first_epoch = len(sent)
    # the epoch-1 plan drained epoch 0's batches still in flight (blocking); flush drains the rest
    assert all(event.waited for event in copy.events[1:first_epoch])
    assert not any(event.waited for event in copy.events[first_epoch:])
    store.flush()
    assert len(scorer._transfer) == 0
    expected_scores, expected_seen, expected_epoch = np.zeros(N, np.float32), np.zeros(N), np.full(N, -1)
    for indices, scores, epoch in sent:  # applied in order: the later score of an example wins
        expected_scores[indices], expected_epoch[indices] = scores, epoch
        np.add.at(expected_seen, indices, 1)
    assert store.version == len(sent)
    np.testing.assert_array_equal(store.seen(), expected_seen)
    np.testing.assert_array_equal(store.last_epoch(), expected_epoch)
    np.testing.assert_array_equal(store.scores(), expected_scores)
    store.close()


def test_a_batch_failing_the_deferred_closed_form_check_is_refused_and_autograd_takes_over(tmp_path: Path) -> None:
    store, sampler, loader, model, scorer, copy = _setup(tmp_path, "cross_entropy")
    sampler.set_epoch(0)
    batches = list(loader)

    def step(batch: tuple[torch.Tensor, ...]) -> None:
        x, y, idx, w = batch
        out = model(x)
        scorer.step(idx, out, y, F.cross_entropy(out, y, reduction="none"), w)

    step(batches[0])  # checked at once: the outputs are the mean logits, the closed form is used
    model.offset = 0.5  # from now on they are not
    step(batches[1])  # its check travels with its scores
    for event in copy.events:
        event.done = True
    with pytest.warns(RuntimeWarning, match="refused, not written"):
        step(batches[2])  # drains: batch 0 written, batch 1 refused; batch 2 was computed before that was known
    assert scorer._closed_form.in_use is False
    with pytest.warns(RuntimeWarning, match="refused, not written"):
        store.flush()  # batch 2 fails its own check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the autograd path has nothing to refuse
        step(batches[3])
        store.flush()
    seen = store.seen()
    for batch, times in zip(batches[:4], (1, 0, 0, 1), strict=True):
        assert seen[batch[2].numpy()].tolist() == [times] * BATCH
    store.close()


def test_remove_applies_what_is_in_flight_and_unhooks_the_store(tmp_path: Path) -> None:
    store, sampler, loader, model, scorer, copy = _setup(tmp_path, None)
    sampler.set_epoch(0)
    x, y, idx, w = next(iter(loader))
    out = model(x)
    scorer.step(idx, out, y, F.cross_entropy(out, y, reduction="none"), w)
    assert store.version == 0
    scorer.remove()
    assert store.version == 1 and copy.events[0].waited
    assert store._drain_hooks == []
    store.close()


def test_mean_logit_terms_match_the_reference_without_reading_the_device() -> None:
    torch.manual_seed(1)
    logits, spikes = torch.randn(T, BATCH, C), (torch.rand(T, BATCH, H) < 0.3).float()
    targets = torch.randint(0, C, (BATCH,))
    outputs = logits.mean(0)
    scores, check = mean_logit_terms(logits, outputs, targets, spikes)
    reference, gap, scale = mean_logit_scores_torch(logits, outputs, targets, spikes)
    torch.testing.assert_close(scores, reference)
    torch.testing.assert_close(check, torch.tensor([gap, scale]))
    assert closed_form_holds(*check.tolist())
    assert not closed_form_holds(*mean_logit_terms(logits, outputs + 0.1, targets, spikes)[1].tolist())
    assert not closed_form_holds(float("nan"), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the sync debug mode watches CUDA")
@pytest.mark.parametrize("loss", [None, "cross_entropy"])
def test_readme_loop_on_cuda_never_synchronises(tmp_path: Path, loss: str | None) -> None:
    """The README loop with ``pin_memory=True``; every step after the first (whose closed form is checked
    at once) and the next epoch's plan run under ``set_sync_debug_mode("error")``."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(N, T, F_IN), torch.randint(0, C, (N,)))
    store = sd.ScoreStore.create(tmp_path / "scores.zarr", N)
    sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=2, batch_size=BATCH, seed=0)
    loader = sd.wrap(DataLoader(data, batch_size=BATCH, pin_memory=True), sampler)
    model = MeanLogitNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scorer = sd.SpikeAwareScorer(model, store, loss=loss, time_axis=1)
    steps = 0
    try:
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for x, y, idx, w in loader:
                torch.cuda.set_sync_debug_mode("error" if steps else "default")
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)
                loss_value = scorer.step(idx, out, y, F.cross_entropy(out, y, reduction="none"), w)
                optimizer.zero_grad()
                loss_value.backward()
                optimizer.step()
                steps += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    store.flush()
    assert store.version == steps
    assert int(store.seen().sum()) == sum(sampler.epoch_length(e) for e in range(2))
    store.close()
