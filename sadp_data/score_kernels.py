"""Closed-form cross-entropy scores: a torch reference and a fused numba.cuda kernel.

For cross-entropy on logits ``o`` with class target ``y`` the gradient at the logits is
``δ = softmax(o) − onehot(y)``. Given also ``‖r̄‖²`` (the squared norm of the readout's mean input,
e.g. firing rates), the two scores are

* ``grad_bound = ‖δ‖``                     (Katharopoulos & Fleuret 2018);
* ``rate       = ‖δ‖ · sqrt(1 + ‖r̄‖²)``   (the exact readout ‖∂ℓ/∂(W, b)‖ for a non-spiking
  readout of mean logits, DESIGN §1.1).

The CUDA kernel computes both in one pass per example (one thread per row: max, sum of
exponentials, norm of the difference) without materialising softmax or one-hot tensors. It is
tested against the torch reference under ``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import numpy as np
import torch

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
    from ._score_cuda import cross_entropy_kernel

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
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
            raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")
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
