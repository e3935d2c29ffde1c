"""Moving plans between the backends' array types: numpy arrays, torch tensors, numba.cuda device arrays.

Duck-typed (``copy_to_host`` marks a numba.cuda device array, ``detach`` a torch tensor), so this
module imports neither torch nor numba unless an array of theirs is handed back to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_host(array: Any) -> np.ndarray:
    """A numpy array of the values of a numpy array, torch tensor (any device) or numba.cuda device array.

    Device data is copied to the host; numpy arrays (and array-likes) are returned without a copy.
    """
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def like(host: np.ndarray, template: Any) -> Any:
    """``host`` as an array of ``template``'s type on ``template``'s device: the inverse of ``to_host``.

    A numba.cuda device array or torch tensor gets a copy on its device; anything else gets ``host`` itself.
    """
    if hasattr(template, "copy_to_host"):
        from numba import cuda

        return cuda.to_device(host)
    if hasattr(template, "detach"):
        import torch

        return torch.from_numpy(host).to(template.device)
    return host
