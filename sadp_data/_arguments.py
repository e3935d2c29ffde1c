"""Argument checks shared by the public constructors: a wrong type or range names the parameter."""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def require_integer(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """Refuse a non-integer (``"abc"``, ``1.7``, ``True``) or too small ``value`` of parameter ``name``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def require_numbers(**values: Any) -> None:
    """Refuse any of ``values`` that is not a real number (``True`` and strings included), naming it."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")


def check_step_arguments(
    indices: torch.Tensor,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    per_sample_loss: torch.Tensor,
    weights: torch.Tensor | None,
) -> None:
    """Refuse a ``SpikeAwareScorer.step`` batch whose per-example loss, outputs, targets or weights do not have
    one row per index, saying how to reduce the loss."""
    if per_sample_loss.dim() == 0:
        raise ValueError(
            "per_sample_loss is a scalar: compute the loss with reduction='none' so each example "
            "keeps its own value, e.g. F.cross_entropy(out, y, reduction='none')"
        )
    batch = int(indices.shape[0])
    if per_sample_loss.dim() != 1 or per_sample_loss.shape[0] != batch:
        raise ValueError(
            f"per_sample_loss must have shape [{batch}] (one value per index), got "
            f"{list(per_sample_loss.shape)}; reduce the other dimensions, e.g. "
            "F.mse_loss(out, target, reduction='none').mean(1)"
        )
    for name, tensor in (("outputs", outputs), ("targets", targets)):
        if tensor.shape[0] != batch:
            raise ValueError(f"{name} has {tensor.shape[0]} rows but there are {batch} indices")
    if weights is not None and weights.shape != (batch,):
        raise ValueError(f"weights must have shape [{batch}], got {list(weights.shape)}")
