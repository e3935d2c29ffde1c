"""Closed-form cross-entropy scores: a torch reference, a fused numba CPU kernel and a numba.cuda kernel.

For cross-entropy on logits ``o`` with class target ``y`` the gradient at the logits is
``δ = softmax(o) − onehot(y)``. Given also ``‖r̄‖²`` (the squared norm of the readout's mean input,
e.g. firing rates), the two scores are

* ``grad_bound = ‖δ‖``                     (Katharopoulos & Fleuret 2018);
* ``rate       = ‖δ‖ · sqrt(1 + ‖r̄‖²)``   (the exact readout ‖∂ℓ/∂(W, b)‖ for a non-spiking
  readout of mean logits, ``docs/method.md`` §1).

The CUDA kernel computes both in one pass per example (one thread per row: max, sum of
exponentials, norm of the difference) without materialising softmax or one-hot tensors. It is
tested against the torch reference under ``NUMBA_ENABLE_CUDASIM=1``.

``mean_logit_scores`` is the CPU training hot path of ``SpikeAwareScorer``: from the readout's
recorded ``[T, B, C]`` logits and ``[T, B, H]`` inputs it checks that the model's outputs are the
time-mean of the logits and computes the ``rate`` score, in one numba pass instead of about forty
small torch operations (≈ 30 µs instead of ≈ 400 µs per batch of 128 at T = 4, H = 256). Its
reference is ``mean_logit_scores_torch``; the two agree to float32 rounding (the kernel sums in
float32 and, like torch, in an order of its choosing).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ..kernels.numba_cache import CACHE

_THREADS = 128


def cross_entropy_scores_torch(
    logits: torch.Tensor, targets: torch.Tensor, rate_sq: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Reference implementation (any device): ``{"grad_bound": ‖δ‖, "rate": ‖δ‖·sqrt(1+‖r̄‖²)}``."""
    delta = torch.softmax(logits.to(torch.float32), dim=1)
    minus_one = torch.full((delta.shape[0], 1), -1.0, dtype=delta.dtype, device=delta.device)
    delta.scatter_add_(1, targets.long().reshape(-1, 1), minus_one)  # δ = p − onehot(y), no index copy
    norm = delta.norm(dim=1)
    result = {"grad_bound": norm}
    if rate_sq is not None:
        result["rate"] = norm * torch.sqrt(1.0 + rate_sq.to(torch.float32))
    return result


def launch_cross_entropy_kernel(logits, targets, rate_sq, grad_bound, rate) -> None:
    """Run the fused kernel on device arrays (or host numpy arrays under the CUDA simulator).

    ``logits`` float32[B, C], ``targets`` int64[B], ``rate_sq`` float32[B]; writes float32[B]
    outputs ``grad_bound`` and ``rate``. Targets must lie in ``[0, C)`` (not checked on device).
    """
    from ._closed_form_cuda import cross_entropy_kernel

    rows = logits.shape[0]
    if rows == 0:
        return
    blocks = (rows + _THREADS - 1) // _THREADS
    cross_entropy_kernel[blocks, _THREADS](logits, targets, rate_sq, grad_bound, rate)


def cross_entropy_scores(
    logits: torch.Tensor, targets: torch.Tensor, rate_sq: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Closed-form CE scores: the fused CUDA kernel for CUDA tensors, the torch reference otherwise."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"cross-entropy scores need logits [B, C] and targets [B], got {list(logits.shape)} and "
            f"{list(targets.shape)}"
        )
    if not logits.is_cuda:
        _check_targets(targets, logits.shape[1])
        return cross_entropy_scores_torch(logits, targets, rate_sq)
    from numba import cuda

    logits = logits.detach().to(torch.float32).contiguous()
    targets = targets.detach().to(torch.int64).contiguous()
    rates = (torch.zeros_like(logits[:, 0]) if rate_sq is None else rate_sq.detach().to(torch.float32)).contiguous()
    grad_bound = torch.empty_like(rates)
    rate = torch.empty_like(rates)
    launch_cross_entropy_kernel(*(cuda.as_cuda_array(t) for t in (logits, targets, rates, grad_bound, rate)))
    result = {"grad_bound": grad_bound}
    if rate_sq is not None:
        result["rate"] = rate
    return result


def simulate_cross_entropy_scores(
    logits: np.ndarray, targets: np.ndarray, rate_sq: np.ndarray
) -> dict[str, np.ndarray]:
    """Run the CUDA kernel on host arrays (requires ``NUMBA_ENABLE_CUDASIM=1`` without a GPU)."""
    grad_bound = np.empty(logits.shape[0], np.float32)
    rate = np.empty(logits.shape[0], np.float32)
    launch_cross_entropy_kernel(
        np.ascontiguousarray(logits, np.float32),
        np.ascontiguousarray(targets, np.int64),
        np.ascontiguousarray(rate_sq, np.float32),
        grad_bound,
        rate,
    )
    return {"grad_bound": grad_bound, "rate": rate}


def mean_logit_scores_torch(
    logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, spikes: torch.Tensor
) -> tuple[torch.Tensor, float, float]:
    """Reference: ``(rate score [B], max |mean_t logits − outputs|, max |outputs|)``.

    ``logits`` ``[T, B, C]`` and ``spikes`` ``[T, B, H]`` are the readout's recorded outputs and
    inputs, time-major; ``outputs`` ``[B, C]`` what the loss was computed from.
    """
    gap = float((logits.mean(dim=0) - outputs).abs().max())
    rate_sq = spikes.to(torch.float32).mean(dim=0).pow(2).sum(dim=1)
    return cross_entropy_scores_torch(outputs, targets, rate_sq)["rate"], gap, float(outputs.abs().max())


@numba.njit(cache=CACHE, nogil=True, fastmath=True)
def _mean_logit_scores_kernel(logits, outputs, targets, spikes, scores):  # pragma: no cover - compiled
    steps, rows, classes = logits.shape
    features = spikes.shape[2]
    gap = 0.0
    scale = 0.0
    rate = np.empty(features, np.float32)  # float32 sums, like torch: lets the loops vectorise
    for b in range(rows):
        if targets[b] < 0 or targets[b] >= classes:
            return -1.0, 0.0
        peak = -np.inf
        for c in range(classes):
            total = 0.0
            for t in range(steps):
                total += logits[t, b, c]
            value = outputs[b, c]
            gap = max(gap, abs(total / steps - value))
            scale = max(scale, abs(value))
            peak = max(peak, value)
        partition = 0.0
        for c in range(classes):
            partition += math.exp(outputs[b, c] - peak)
        delta_sq = 0.0
        for c in range(classes):
            delta = math.exp(outputs[b, c] - peak) / partition
            if c == targets[b]:
                delta -= 1.0
            delta_sq += delta * delta
        rate[:] = 0.0
        for t in range(steps):
            for h in range(features):
                rate[h] += spikes[t, b, h]
        rate_sq = np.float32(0.0)
        for h in range(features):
            rate_sq += rate[h] * rate[h]
        scores[b] = math.sqrt(delta_sq) * math.sqrt(1.0 + rate_sq / (steps * steps))
    return gap, scale


def mean_logit_scores(
    logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, spikes: torch.Tensor
) -> tuple[torch.Tensor, float, float]:
    """``mean_logit_scores_torch``, fused into one numba pass for float32 CPU tensors.

    Other dtypes and devices take the torch reference (on CUDA, with the fused CUDA score kernel).
    Targets must be class indices in ``[0, C)``; raises ``ValueError`` otherwise.
    """
    classes = outputs.shape[1]
    fused = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (logits, outputs, spikes))
    if not fused:
        if outputs.is_cuda:
            scores, check = mean_logit_terms(logits, outputs, targets, spikes)
            gap, scale = check.tolist()
            return scores, gap, scale
        _check_targets(targets, classes)
        return mean_logit_scores_torch(logits, outputs, targets, spikes)
    scores = np.empty(outputs.shape[0], np.float32)
    gap, scale = _mean_logit_scores_kernel(
        logits.detach().numpy(),
        outputs.detach().numpy(),
        targets.detach().cpu().numpy(),
        spikes.detach().numpy(),
        scores,
    )
    if gap < 0:  # the kernel stops at the first target outside [0, C)
        _check_targets(targets, classes)
    return torch.from_numpy(scores), float(gap), float(scale)


def mean_logit_terms(
    logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, spikes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_logit_scores`` left on the tensors' device: ``(rate score [B], float32 [gap, scale])``.

    Nothing is read back to the host, so the caller decides when to wait for the check
    (``closed_form_holds(*check.tolist())``); on CUDA the scores come from the fused CUDA kernel.
    Targets are not range-checked here (the CUDA kernel cannot report them; see ``mean_logit_scores``).
    """
    gap = (logits.mean(dim=0) - outputs).abs().max()
    rate_sq = spikes.to(torch.float32).mean(dim=0).pow(2).sum(dim=1)
    score = cross_entropy_scores if outputs.is_cuda else cross_entropy_scores_torch
    return score(outputs, targets, rate_sq)["rate"], torch.stack([gap, outputs.abs().max()]).to(torch.float32)


def closed_form_holds(gap: float, scale: float) -> bool:
    """Whether the outputs are the time-mean of the readout's logits: ``gap`` (the largest difference)
    within float32 rounding of ``scale`` (the largest output). A NaN gap does not hold."""
    return gap <= 1e-5 * scale + 1e-6


def _check_targets(targets: np.ndarray | torch.Tensor, classes: int) -> None:
    if targets.shape[0] and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise ValueError(f"targets must be class indices in [0, {classes})")
