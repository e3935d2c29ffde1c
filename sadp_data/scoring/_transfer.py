"""Per-batch scores from the device to the score store without making the host wait for the device.

``SpikeAwareScorer.step`` computes scores on the model's device. Reading them on the host there
(``scores.cpu()``) would stop the host until the forward pass has finished, so it could not queue the
backward pass meanwhile. Instead, for a ``ScoreStore``:

1. ``submit(indices, scores, check)`` (in ``step``): device tensors are copied into pinned host
   buffers with ``non_blocking=True`` and a CUDA event is recorded after the copies; the epoch stamp
   is the store's ``current_epoch`` at ``submit``, i.e. at ``step`` time. Nothing waits.
2. ``drain(block)``: batches whose event has completed are applied to the store (``store.update``)
   in submission order; ``block=False`` stops at the first batch still in flight (``event.query()``),
   ``block=True`` waits for every batch. ``submit`` drains without blocking; the store drains blocking
   before anything reads or persists it (``ScoreStore.add_drain_hook``: its reads, ``snapshot``,
   ``synchronize`` — so every epoch boundary —, ``flush`` — so every sampler checkpoint —, ``close``).
   A batch's ``check`` (the mean-logit closed form's ``[gap, scale]``, computed on the device) is read
   when the batch is drained: if the closed form did not hold, the batch is refused (not written) and
   ``refuse`` is told. Each batch is applied at most once; an error in ``store.update`` (a NaN score,
   an index outside the store) surfaces at the drain that applies the batch, not at its ``step``.

CPU tensors (and stores that take scores in collectives — a ``ScoreExchange`` all-gather, a
``PartitionedScoreStore`` route — whose timing must be the same on every rank) take the immediate path:
``submit`` checks and applies at once, as the host holds the values anyway (or the collective syncs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from ._closed_form import closed_form_holds


class DeviceCopy:
    """Starts device-to-host copies that the host does not wait for: pinned buffers, ``non_blocking=True``,
    and a CUDA event recorded on the current stream after them. Defers only CUDA tensors."""

    def defers(self, tensor: torch.Tensor) -> bool:
        """Whether scores computed next to ``tensor`` are worth deferring (they live on a CUDA device)."""
        return tensor.is_cuda

    def start(self, tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
        """Host copies of ``tensors`` (host tensors are kept as they are) and the event that marks them done."""
        hosts = []
        for tensor in tensors:
            if tensor.device.type == "cpu":
                hosts.append(tensor)
                continue
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor.detach(), non_blocking=True)
            hosts.append(host)
        event = torch.cuda.Event()
        event.record()
        return hosts, event


class _Batch(NamedTuple):
    indices: torch.Tensor
    scores: torch.Tensor
    epoch: int
    check: torch.Tensor | None
    event: Any


class ScoreTransfer:
    """One scorer's scores on their way to ``store``: see the module's protocol.

    ``exchange``: a data-parallel ``ScoreExchange`` that takes the scores instead (device tensors, at
    ``submit``); ``refuse(count, gap, scale)`` is called for a batch whose closed-form check failed;
    ``copy`` starts the device-to-host copies (``DeviceCopy``; tests pass a recording fake).
    """

    def __init__(
        self,
        store: Any,
        exchange: Any,
        refuse: Callable[[int, float, float], None],
        copy: Any = None,
    ) -> None:
        self.store = store
        self.exchange = exchange
        self.refuse = refuse
        self.copy = DeviceCopy() if copy is None else copy
        self._queue: deque[_Batch] = deque()
        self._hooked = store is not None and exchange is None and hasattr(store, "add_drain_hook")
        if self._hooked:
            store.add_drain_hook(self.drain_all)

    def __len__(self) -> int:
        """Batches submitted and not applied yet."""
        return len(self._queue)

    def defers(self, tensor: torch.Tensor) -> bool:
        """Whether ``submit`` queues scores computed next to ``tensor`` (so their check may be deferred)."""
        return self._hooked and self.copy.defers(tensor)

    def submit(
        self, indices: torch.Tensor, scores: torch.Tensor, check: torch.Tensor | None = None, epoch: int | None = None
    ) -> None:
        """Queue one batch's scores, stamped with ``epoch`` (default the store's ``current_epoch`` now: the
        epoch they were computed in, however late they are applied), and apply the earlier batches whose
        copies are done; never waits for the device when ``defers(scores)`` (see the module)."""
        if self.store is None:
            return
        epoch = self.store.current_epoch if epoch is None else epoch
        if self.exchange is not None:
            self.exchange.push(indices, scores, epoch)
            return
        if not self.defers(scores):
            self.drain(block=True)  # keeps the order if earlier batches are still in flight
            self._finish(_Batch(indices.detach().cpu(), scores.detach().cpu(), epoch, check, None))
            return
        self.store.check_writable()  # a closed or read-only store is refused now, not at a later drain
        parts = [indices.detach(), scores.detach()] + ([] if check is None else [check.detach()])
        hosts, event = self.copy.start(parts)
        self._queue.append(_Batch(hosts[0], hosts[1], epoch, hosts[2] if check is not None else None, event))
        self.drain(block=False)

    def drain(self, block: bool) -> int:
        """Apply the queued batches whose copies are done, oldest first (all of them, waiting, if ``block``);
        return how many were taken off the queue."""
        taken = 0
        while self._queue:
            batch = self._queue[0]
            if not batch.event.query():
                if not block:
                    break
                batch.event.synchronize()
            self._queue.popleft()
            taken += 1
            self._finish(batch)
        return taken

    def drain_all(self) -> None:
        """``drain(block=True)``: the store's drain hook."""
        self.drain(block=True)

    def close(self) -> None:
        """Apply every queued batch, then stop draining into the store."""
        try:
            self.drain(block=True)
        finally:
            if self._hooked:
                self.store.remove_drain_hook(self.drain_all)
                self._hooked = False

    def _finish(self, batch: _Batch) -> None:
        if batch.check is not None:
            gap, scale = batch.check.tolist()
            if not closed_form_holds(gap, scale):
                self.refuse(int(batch.scores.shape[0]), gap, scale)
                return
        self.store.update(batch.indices.numpy(), batch.scores.numpy(), epoch=batch.epoch)
