"""``KernelBackend``: what every kernel backend provides, so ``plan_epoch`` calls them all the same way.

A backend is any object with these members; the four shipped backends are modules (``reference``,
``numba_cpu``, ``cuda``, ``torch_backend``), which satisfy the protocol structurally, so a new
backend needs no registration beyond ``get_backend``'s table.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .reference import EpochKeys

#: The array type of a backend's results.
ArrayKind = Literal["numpy", "torch", "numba.cuda"]


@runtime_checkable
class KernelBackend(Protocol):
    """An implementation of epoch planning (``plan``) and of its keyed shuffle (``shuffle_permutation``).

    Contract, checked by the test suite for every backend:

    * ``plan`` accepts scores and counts as numpy arrays or as arrays of the backend's own kind
      (``arrays``; for ``cuda`` anything with ``__cuda_array_interface__``, e.g. a CUDA tensor), the
      host backends also torch tensors and numba.cuda device arrays, which they copy to the host.
      It returns ``(order, weights)``: int64[K] distinct indices and float32[K] weights, of kind
      ``arrays``.
    * ``exact`` backends return exactly the reference's (``reference.plan``) arrays, order included,
      and their ``shuffle_permutation`` is the reference's permutation; the others (``torch``) draw
      the same selection with the same weights but put it in their own uniformly random order.
    * ``device`` chooses where ``torch`` computes (default: the scores' device); backends that
      compute in one place (host, or numba.cuda's current device) ignore it.
    """

    #: The name ``get_backend`` knows it by: ``"numpy"``, ``"numba"``, ``"cuda"`` or ``"torch"``.
    name: str
    #: The array type of ``plan``'s and ``shuffle_permutation``'s results.
    arrays: ArrayKind
    #: Whether results are bit-identical to the reference's, order included.
    exact: bool

    def plan(
        self,
        scores: Any,
        seen: Any | None,
        sample_size: int,
        smoothing: float,
        uniform: bool,
        keys: EpochKeys,
        device: str | None = None,
    ) -> tuple[Any, Any]:
        """``(order, weights)`` of one epoch (see ``sadp_data.kernels.plan_epoch``, which validates the arguments)."""
        ...

    def shuffle_permutation(self, size: int, key: np.uint64, device: str | None = None) -> Any:
        """A keyed random permutation of ``[0, size)`` (int64): position i of the shuffle takes item ``perm[i]``."""
        ...
