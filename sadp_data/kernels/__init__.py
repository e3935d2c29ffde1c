"""Epoch planning: turn N scores into an exact-size weighted sample in shuffled order.

``plan_epoch`` is the single entry point. It is a pure function of its arguments: the same scores,
seed and epoch give the same order and weights on every machine and process, and on every exact
backend. The steps (``docs/method.md`` §2 gives the math, ``reference`` the algorithm and its
trade-offs):

1. smoothing: mix scores with uniform so every example keeps a chance and weights stay bounded;
2. inclusion probabilities ``π_i = min(1, c·s̃_i)`` with ``Σ π = K`` (capping iteration), in 32.32
   fixed point with an integer total of exactly ``K·2**32``;
3. systematic PPS over a randomised block walk order: exactly K distinct picks, each with
   probability exactly ``π_i``; importance weights ``K / (N π_i)``;
4. the training order: a keyed scatter shuffle of the picks (random buckets, then Fisher–Yates
   inside each bucket), or, for sharded stores, ``localize``'s shard-window order.

All randomness is counter-based (``reference.splitmix64``) with keys from ``(seed, epoch)``
(``reference.EpochKeys``). Every backend implements ``KernelBackend`` and ``plan_epoch`` calls each
the same way: ``numpy`` (the reference), ``numba`` (parallel CPU) and ``cuda`` (numba.cuda)
reproduce the reference bit for bit; ``torch`` (any device) draws the same selection and weights
in its own order. Each backend's module states its own guarantees.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, cast

import numpy as np

from . import reference
from .arrays import like, to_host
from .interface import KernelBackend
from .locality import locality_order

Backend = Literal["auto", "numpy", "numba", "cuda", "torch"]

#: The module implementing each backend.
_MODULES = {"numpy": "reference", "numba": "numba_cpu", "cuda": "cuda", "torch": "torch_backend"}


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


def get_backend(name: str = "auto", scores: object = None) -> KernelBackend:
    """The backend called ``name`` (imported on first use).

    ``auto`` picks ``torch`` for scores held in a CUDA tensor (the plan stays on that device) and
    otherwise the fastest CPU backend (``numba``, else ``numpy``). Raises ``ValueError`` for an
    unknown name.
    """
    if name == "auto":
        on_gpu = getattr(scores, "is_cuda", False)
        name = "torch" if on_gpu else ("numba" if "numba" in available_backends() else "numpy")
    if name not in _MODULES:
        raise ValueError(f"unknown kernel backend {name!r}; choose from 'auto', 'numpy', 'numba', 'cuda', 'torch'")
    return cast(KernelBackend, importlib.import_module(f".{_MODULES[name]}", __name__))


def sample_size(num_examples: int, keep_ratio: float) -> int:
    """``K = round(keep_ratio * N)``, at least 1: the exact number of examples an epoch draws."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(num_examples, int(np.floor(keep_ratio * num_examples + 0.5))))


def plan_epoch(
    scores: Any,
    keep_ratio: float,
    seed: int,
    epoch: int,
    *,
    seen: Any | None = None,
    smoothing: float = 0.1,
    uniform: bool = False,
    backend: Backend = "auto",
    device: str | None = None,
    shard_size: int | None = None,
    window: int = 4,
    groups: np.ndarray | None = None,
) -> tuple[Any, Any]:
    """Plan one epoch: ``(order, weights)``, ``order`` int64[K] distinct indices, ``weights`` float32[K].

    Args:
        scores: float[N] importance scores, non-negative (only their ratios matter): a numpy array,
            torch tensor or numba.cuda device array, whatever the backend.
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
        device: for ``torch``, where the plan is computed (default: the scores' device); ``cuda``
            computes on numba.cuda's current device, ``numpy`` and ``numba`` on the host.
        shard_size, window: for sharded stores, order the picks by ``localize`` (shards in random
            order, shuffled within windows of ``window`` shards of ``shard_size`` consecutive
            examples) instead of a full shuffle.
        groups: instead of ``shard_size``, the group (shard, page) of every example, int[N].

    Returns the backend's array type (``KernelBackend.arrays``): numpy arrays for ``numpy`` and
    ``numba``, device arrays for ``cuda``, tensors for ``torch``.

    Guarantees: exactly K distinct indices; example i is drawn with probability π_i (as
    quantised, see ``reference.quantize``); ``weights = K / (N π_i)`` so that the
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
    order, weights = kernels.plan(scores, seen, size, float(smoothing), uniform, keys, device)
    if shard_size is None and groups is None:
        return order, weights
    return localize(order, weights, seed=seed, epoch=epoch, shard_size=shard_size, window=window, groups=groups)


def check_scores(scores: Any) -> None:
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


def localize(
    order: Any,
    weights: Any,
    *,
    seed: int,
    epoch: int,
    shard_size: int | None = None,
    window: int = 4,
    groups: np.ndarray | None = None,
) -> tuple[Any, Any]:
    """A plan of epoch ``(seed, epoch)`` reordered for sharded storage (``reference.locality_order``).

    Shards (``i // shard_size``, or ``groups[i]``) in random order, the examples of every window of
    ``window`` shards in random order, under the epoch's shuffle key: so a plan made elsewhere, e.g.
    by a ``sadp_data.methods`` baseline, gets exactly the order ``plan_epoch(..., shard_size=...)``
    gives its own plan. The examples and their weights are unchanged; results have the array type
    and device of ``order`` and ``weights``. Trade-off: the reordering runs on the host (O(K log K)),
    so a device plan makes one round trip. Raises ``ValueError`` unless ``window`` and one of
    ``shard_size`` (positive) or ``groups`` are given.
    """
    key = reference.epoch_keys(seed, epoch).shuffle
    host_order, host_weights = locality_order(to_host(order), to_host(weights), shard_size, window, key, groups=groups)
    return like(host_order, order), like(host_weights, weights)
