"""The spike-aware score in closed form for a readout of mean logits, and when its check is made.

For a biased readout whose logits are averaged over time (``outputs = mean_t z_t``), ``δ_t = δ/T`` and
the spike-aware score is exactly ``‖δ‖·sqrt(1 + ‖r̄‖²)`` with the closed form of ``δ`` for
cross-entropy: no ``autograd.grad`` call. Whether the outputs really are that mean is checked in the
same fused pass as the score (``_closed_form.mean_logit_scores``).

When the check is read is the trade-off. Read at once (CPU tensors, ``compute()``, stores that take
scores in collectives), every batch is checked before its scores are used, and a batch that fails
takes the autograd path. Read on the host, a GPU value would stop the host until the forward pass
has finished, so for scores that stay on the GPU (``ScoreTransfer.defers``) the check is read once,
at the first batch, which decides; later batches carry their ``[gap, scale]`` with their scores
through the transfer and are checked when drained. A later batch that fails is refused (its scores
are not written: those examples keep their previous scores), a ``RuntimeWarning`` says so, and the
scorer takes the exact autograd path from then on: a changed model costs one batch's scores, never a
wrong score in the store and never the run.
"""

from __future__ import annotations

import warnings

import torch

from ._closed_form import closed_form_holds, mean_logit_scores, mean_logit_terms
from .readout import TimeLayout


class MeanLogitForm:
    """One scorer's closed form: ``scores`` computes it, ``refuse`` takes a deferred check that failed.

    ``in_use``: ``None`` until a deferred batch has been checked, then whether the closed form is used
    for deferred batches (``False`` after a failed check, for good).
    """

    def __init__(self) -> None:
        self.in_use: bool | None = None
        self._layer = "the readout"

    def scores(
        self,
        layer: torch.nn.Module,
        layout: TimeLayout,
        calls: list[tuple[torch.Tensor, torch.Tensor]],
        outputs: torch.Tensor | None,
        targets: torch.Tensor,
        batch: int,
        defer: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(scores, check)``: scores ``None`` where the closed form does not apply (take autograd); with
        ``defer`` once the first batch has held, the scores unchecked and their device-side ``[gap, scale]``."""
        if outputs is None or not calls or getattr(layer, "bias", None) is None or outputs.dim() != 2:
            return None, None
        if defer and self.in_use is False:
            return None, None
        logits = layout.stack([z.detach() for _, z in calls], batch)
        if logits.shape[1:] != outputs.shape:
            return None, None
        spikes = layout.stack([x for x, _ in calls], batch)
        target = outputs.detach().to(logits.dtype)
        self._layer = f"{layout.layer!r} ({type(layer).__name__})"
        if defer and self.in_use:
            return mean_logit_terms(logits, target, targets, spikes)
        scores, gap, scale = mean_logit_scores(logits, target, targets, spikes)
        holds = closed_form_holds(gap, scale)
        if defer:
            self.in_use = holds
        return (scores if holds else None), None

    def refuse(self, count: int, gap: float, scale: float) -> None:
        """A deferred batch failed its check: its scores were not written; autograd from now on."""
        self.in_use = False
        warnings.warn(
            f"the outputs passed to step() were not the time-mean of the logits of the readout {self._layer} for "
            f"a batch of {count} (largest difference {gap:.3g} at outputs up to {scale:.3g}): its closed-form "
            "scores were refused, not written (those examples keep their previous scores), and this scorer "
            "uses the exact autograd path from now on",
            RuntimeWarning,
            stacklevel=2,
        )
