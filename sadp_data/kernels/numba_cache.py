"""Whether numba may cache compiled kernels on disk here (``CACHE``), decided once at import.

numba writes its cache next to the source (``__pycache__``) or in the user's cache folder; where
both are read-only (a read-only site-packages and home, as in some containers), a function decorated
with ``cache=True`` raises at import. The kernels use ``cache=CACHE`` instead: caching where it
works, and, where it does not, compiling at first use in every process, with one warning.
"""

from __future__ import annotations

import warnings

import numba


def _probe() -> None:
    """The function whose cached decoration tests the cache locations."""


def cache_usable() -> bool:
    """``True`` when numba finds a writable cache location for this package; warns once when not."""
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError as error:
        warnings.warn(
            f"numba cannot cache compiled kernels here ({error}); sadp-data compiles them in every process "
            "instead (a few seconds at first use). Set NUMBA_CACHE_DIR to a writable folder to cache them",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


#: ``cache=`` for every ``numba.njit`` of the package.
CACHE = cache_usable()
