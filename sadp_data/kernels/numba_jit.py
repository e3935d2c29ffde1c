"""How the numba CPU kernels are compiled, and the pieces every one of them shares.

``Kernel`` compiles a kernel twice (parallel and serial), ``random_bits`` is the reference's hash
compiled for inlining, and ``ordered_sum`` the outer level of the reference's blocked float sums.
Importing this module also picks numba's threading layer (below), so every numba backend module
imports it before compiling anything.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

# GNU OpenMP, numba's default parallel layer when TBB is absent, kills processes forked after it
# has run — which is what a DataLoader with workers does. The work-queue layer is fork-safe, at a
# price: a 10^6-example plan takes ~22 ms on it vs ~17 ms on OpenMP (2 cores). A user's explicit
# NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from . import reference
from .numba_cache import CACHE

#: Options of every kernel: cached on disk where that works (``sadp_data.kernels.numba_cache``), without the GIL.
OPTIONS = {"cache": CACHE, "nogil": True}
#: Below this many elements the serial twin of a kernel runs: starting parallel work costs more.
SERIAL_BELOW = 1 << 18


class Kernel:
    """A kernel compiled twice: parallel (``prange`` across threads) and serial (``prange`` as ``range``).

    Both come from one Python function and give identical results; ``for_size(n)`` picks the serial
    one for small inputs, where thread start-up dominates (0.3 ms vs 0.9 ms for a 60,000-item
    shuffle here). The serial twin gets its own name so numba caches the two separately.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.parallel = numba.njit(parallel=True, **OPTIONS)(function)
        twin = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial")
        twin.__qualname__ = function.__qualname__ + "_serial"
        twin.__doc__ = function.__doc__
        self.serial = numba.njit(**OPTIONS)(twin)
        self.__doc__ = function.__doc__

    def __call__(self, *args: Any) -> Any:
        return self.parallel(*args)

    def for_size(self, size: int) -> Callable[..., Any]:
        """The twin for inputs of ``size`` elements: serial below ``SERIAL_BELOW``, else parallel."""
        return self.serial if size < SERIAL_BELOW else self.parallel


#: ``reference.splitmix64`` itself, compiled and inlined into every kernel that draws random numbers.
random_bits = numba.njit(inline="always", **OPTIONS)(reference.splitmix64)


@numba.njit(**OPTIONS)
def ordered_sum(partial: np.ndarray) -> float:
    """Per-block partial sums added in block order (the outer level of ``reference.blocked_sum``)."""
    total = 0.0
    for b in range(partial.shape[0]):
        total += partial[b]
    return total
