"""Epoch planning: turn N scores into an exact-size weighted sample in shuffled order.

``plan_epoch`` is the single entry point. It is a pure function of its arguments: the same scores,
seed and epoch give the same order and weights on every machine, process and backend. The steps
(see ``reference`` for the algorithm and its trade-offs):

1. smoothing: mix scores with uniform so every example keeps a chance and weights stay bounded;
2. inclusion probabilities ``π_i = min(1, c·s̃_i)`` with ``Σ π = K`` (capping iteration), in 32.32
   fixed point with an integer total of exactly ``K·2**32``;
3. systematic PPS over a randomised block walk order: exactly K distinct picks, each with
   probability exactly ``π_i``;
4. a keyed Feistel shuffle of the picks; importance weights ``K / (N π_i)``.

All randomness is counter-based (``reference.random_bits``) with keys from ``(seed, epoch)``, so
parallel backends reproduce the reference bit for bit: ``numpy`` (reference) and ``numba``
(parallel CPU) are identical; see each backend's module for its own guarantees.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import numpy as np

from . import reference

Backend = Literal["auto", "numpy", "numba", "cuda", "torch"]


def available_backends() -> list[str]:
    """Names of the backends that can run here: ``numpy``, ``torch``, and ``numba``/``cuda`` when usable."""
    names = ["numpy", "torch"]
    try:
        import numba  # noqa: F401
    except ImportError:
        return names
    names.append("numba")
    from numba import cuda

    if cuda.is_available():
        names.append("cuda")
    return names


def get_backend(name: str = "auto", scores: object = None) -> ModuleType:
    """The kernel module for ``name``.

    ``auto`` picks ``torch`` for scores held in a CUDA tensor (the plan stays on that device) and
    otherwise the fastest CPU backend (``numba``, else ``numpy``).
    """
    if name == "auto":
        on_gpu = getattr(scores, "is_cuda", False)
        name = "torch" if on_gpu else ("numba" if "numba" in available_backends() else "numpy")
    if name == "numpy":
        return reference
    if name == "numba":
        from . import numba_cpu

        return numba_cpu
    if name == "torch":
        from . import torch_backend

        return torch_backend
    if name == "cuda":
        from . import cuda

        return cuda
    raise ValueError(f"unknown kernel backend {name!r}; choose from 'auto', 'numpy', 'numba', 'cuda', 'torch'")


def sample_size(num_examples: int, keep_ratio: float) -> int:
    """``K = round(keep_ratio * N)``, at least 1: the exact number of examples an epoch draws."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(num_examples, int(np.floor(keep_ratio * num_examples + 0.5))))


def plan_epoch(
    scores: np.ndarray,
    keep_ratio: float,
    seed: int,
    epoch: int,
    *,
    seen: np.ndarray | None = None,
    smoothing: float = 0.1,
    uniform: bool = False,
    backend: Backend = "auto",
    device: str | None = None,
    shard_size: int | None = None,
    window: int = 4,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plan one epoch: ``(order, weights)``, ``order`` int64[K] distinct indices, ``weights`` float32[K].

    Args:
        scores: float[N] importance scores, non-negative (only their ratios matter).
        keep_ratio: fraction of examples drawn, in (0, 1]; ``K = round(keep_ratio·N)`` exactly.
        seed, epoch: select the random stream (``reference.epoch_keys``).
        seen: counts per example; unseen examples (0) are treated as of mean importance. ``None``
            means all seen.
        smoothing: λ in [0, 1], the uniform share of the sampling weights. Every weight is at most
            1/λ; larger λ trades focus on high-score examples for lower weight variance.
        uniform: ignore scores and draw a simple random sample (the random-pruning baseline).
        backend: ``numpy`` (reference), ``numba`` (parallel CPU), ``cuda`` (numba.cuda; device
            arrays out), ``torch`` (any device; tensors out) or ``auto``. ``numpy``, ``numba`` and
            ``cuda`` give bit-identical plans; ``torch`` the identical selection and weights with
            its own uniform shuffle (see ``torch_backend``).
        device: for ``torch``/``cuda``, where the plan is computed (default: the scores' device).
        shard_size, window: for sharded stores, order the picks by ``reference.locality_order``
            (shards in random order, shuffled within windows of ``window`` shards of
            ``shard_size`` consecutive examples) instead of a full shuffle.
        groups: instead of ``shard_size``, the group (shard, page) of every example, int[N].

    Guarantees: exactly K distinct indices; example i is drawn with probability π_i (as
    quantised, see ``reference.quantize_probabilities``); ``weights = K / (N π_i)`` so that the
    weighted mean loss over the picks is unbiased for the full-data mean. ``uniform=True`` and
    ``keep_ratio = 1`` give weights of exactly 1; equal scores give weights within 1e-6 of 1 (the
    fixed-point quantisation spreads a remainder of at most N units of 2**-32).
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    kernels = get_backend(backend, scores)
    if not hasattr(scores, "shape"):
        scores = np.asarray(scores)
    if len(scores.shape) != 1 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {tuple(scores.shape)}")
    if seen is not None and tuple(seen.shape if hasattr(seen, "shape") else np.shape(seen)) != tuple(scores.shape):
        raise ValueError(f"seen must have the shape of scores {tuple(scores.shape)}, got {np.shape(seen)}")
    check_scores(scores)
    keys = reference.epoch_keys(seed, epoch)
    size = sample_size(scores.shape[0], keep_ratio)
    if kernels.__name__.endswith(("torch_backend", "cuda")):
        order, weights = kernels.plan(scores, seen, size, float(smoothing), uniform, keys, device=device)
    else:
        if hasattr(scores, "detach"):
            scores = scores.detach().cpu().numpy()
        if seen is not None and hasattr(seen, "detach"):
            seen = seen.detach().cpu().numpy()
        host_seen = None if seen is None else np.asarray(seen)
        order, weights = kernels.plan(np.asarray(scores), host_seen, size, float(smoothing), uniform, keys)
    if shard_size is None and groups is None:
        return order, weights
    return localize(order, weights, shard_size, window, keys[3], groups)


def check_scores(scores) -> None:
    """Raise ``ValueError`` naming the first score that is NaN, infinite or negative, and its position.

    One O(N) pass on the scores' device (numpy or torch); numba.cuda device arrays are not checked
    (the store, which feeds every sampler, refuses such scores on ``update``).
    """
    if hasattr(scores, "copy_to_host"):
        return
    if hasattr(scores, "detach"):
        import torch

        values = scores.detach()
        bad = ~(torch.isfinite(values) & (values >= 0))
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            raise ValueError(f"score {float(values[position])} at position {position} is not a finite number >= 0")
        return
    values = np.asarray(scores)
    if np.isfinite(values).all() and (values >= 0).all():
        return
    position = int(np.flatnonzero(~(np.isfinite(values) & (values >= 0)))[0])
    raise ValueError(f"score {values[position]} at position {position} is not a finite number >= 0")


def localize(order, weights, shard_size: int | None, window: int, key: np.uint64, groups: np.ndarray | None = None):
    """Apply ``reference.locality_order`` to a plan whatever the backend's array type (results stay on
    their device): for plans made elsewhere, e.g. by a ``sadp_data.methods`` baseline."""

    def on_host(host_order: np.ndarray, host_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return reference.locality_order(host_order, host_weights, shard_size, window, key, groups=groups)

    if hasattr(order, "copy_to_host"):
        from numba import cuda

        host = on_host(order.copy_to_host(), weights.copy_to_host())
        return cuda.to_device(host[0]), cuda.to_device(host[1])
    if hasattr(order, "detach"):
        import torch

        host = on_host(order.cpu().numpy(), weights.cpu().numpy())
        return torch.from_numpy(host[0]).to(order.device), torch.from_numpy(host[1]).to(order.device)
    return on_host(order, weights)
