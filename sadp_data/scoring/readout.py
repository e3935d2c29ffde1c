"""Which module of a model is its readout, and how the readout's recorded tensors are laid out in time.

The spike-aware score is the norm of the loss gradient with respect to an affine readout ``z = W·s + b``
(``sadp_data.scoring.scorer``): it needs the module that applies ``W`` as its own module, returning that affine
output as a tensor. This module finds it, refuses the structures where it cannot be found or read (a
weight matrix inside a stateful cell that runs after the last ``nn.Linear``, a readout that returns a
tuple), and turns the recorded calls into one time-major ``[T, B, F]`` tensor without guessing the time
axis: a 3-D call whose first two sizes both equal the batch size is read only with a declared or known
layout (``time_axis=``, or spikingjelly's multi-step mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ReadoutError(ValueError):
    """The readout layer cannot be found or read as it is; the message names the module and what to pass."""


def name_of(model: nn.Module, module: nn.Module) -> str:
    """``module``'s name in ``model.named_modules()`` (``''`` for the model itself)."""
    return next((name for name, m in model.named_modules() if m is module), "?")


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """The submodule ``layer`` (a module of ``model`` or its name); ``ReadoutError`` naming the linear layers."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as error:
            names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ReadoutError(f"no layer named {layer!r} in the model; linear layers: {names}") from error
    if not any(m is layer for m in model.modules()):
        raise ReadoutError("layer= must be a submodule of the model")
    return layer


def detection_candidates(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(the nn.Linear layers, the other modules that own a weight matrix)`` of ``model``.

    The readout is detected as the ``nn.Linear`` that runs last; the other weighted modules (a stateful
    cell with its own weights, a convolution) are watched so that one running after it is refused by
    ``check_detected`` instead of a hidden layer being scored. Parameters of fewer than two dimensions
    (a neuron's learned decay or threshold, a norm's scale) do not make a module a readout.
    """
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ReadoutError(
            f"{type(model).__name__} has no nn.Linear layer to use as the classifier; "
            "pass layer=<module or name> to SpikeAwareScorer"
        )
    weighted = [
        m
        for m in model.modules()
        if not isinstance(m, nn.Linear) and any(p.dim() >= 2 for p in m.parameters(recurse=False))
    ]
    return linear, weighted


def check_detected(model: nn.Module, picked: nn.Module, ran_after: list[nn.Module]) -> None:
    """Refuse the detected ``picked`` when a weighted module that does not contain it ran after it.

    ``ran_after`` are the watched modules whose forward finished after ``picked``'s last call; the
    ones that enclose ``picked`` (the model, a container owning a matrix) finish after it anyway.
    """
    later = [m for m in ran_after if not any(inner is picked for inner in m.modules())]
    if later:
        last = later[-1]
        raise ReadoutError(
            f"the readout was detected as {name_of(model, picked)!r} ({type(picked).__name__}), the last nn.Linear "
            f"to run, but {name_of(model, last)!r} ({type(last).__name__}) holds a weight matrix and runs after it: "
            "the detected layer is probably a hidden one. Pass layer=<the readout's nn.Linear> to SpikeAwareScorer; "
            "if the readout's weights sit inside a stateful cell, split it into an nn.Linear and a cell without "
            "weights (e.g. norse's LILinearCell(i, o) into torch.nn.Linear(i, o, bias=False) and LICell())"
        )


def refuse_output(model: nn.Module, layer: nn.Module, output: object) -> ReadoutError:
    """The error for a readout whose output is not a tensor (e.g. ``(output, state)`` of a stateful cell)."""
    return ReadoutError(
        f"the classifier {name_of(model, layer)!r} ({type(layer).__name__}) returned a {type(output).__name__}, "
        "not a tensor: the score needs a layer whose output is its affine map W·x + b (an nn.Linear), and the "
        "first element of a stateful cell's output is not that map. Pass layer=<the nn.Linear of the readout>, "
        "or split the cell into an nn.Linear and a cell without weights (e.g. norse's LILinearCell(i, o) into "
        "torch.nn.Linear(i, o, bias=False) and LICell())"
    )


@dataclass(frozen=True)
class TimeLayout:
    """How the readout's recorded 3-D tensors hold time: ``time_axis`` 0 (``[T, B, F]``), 1 (``[B, T, F]``) or
    ``None`` (read from the shapes, refused where ``T == B`` leaves it open). ``layer`` names it in errors."""

    time_axis: int | None
    layer: str

    @staticmethod
    def of(layer: nn.Module, name: str, time_axis: int | None) -> TimeLayout:
        """The declared ``time_axis``, else 0 for a spikingjelly layer in multi-step mode, else ``None``."""
        if time_axis is None and getattr(layer, "step_mode", None) == "m":
            time_axis = 0
        return TimeLayout(time_axis, name)

    def stack(self, tensors: list[torch.Tensor], batch: int) -> torch.Tensor:
        """All recorded calls as one float32 ``[T, B, F]`` tensor (no copy for a single multi-step call)."""
        parts = [self.time_major(t, batch) for t in tensors]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
        return stacked.to(torch.float32)

    def rate_sq(self, inputs: list[torch.Tensor], batch: int) -> torch.Tensor:
        """``‖r̄‖²`` per example, ``r̄`` the time-averaged input of the readout (e.g. firing rates)."""
        return self.stack(inputs, batch).mean(dim=0).pow(2).sum(dim=1)

    def time_major(self, tensor: torch.Tensor, batch: int) -> torch.Tensor:
        """One recorded call as ``[T, B, F]``, validated against the batch size.

        A flattened call (``[T·B, F]``, e.g. ``SeqToANNContainer``, or ``[B, F]`` per time step) is read
        time-major, or batch-major where ``time_axis=1`` is declared.
        """
        shape = list(tensor.shape)
        if tensor.dim() == 3 and self.time_axis is not None:
            if tensor.shape[1 - self.time_axis] != batch:
                layout = "[T, B, F]" if self.time_axis == 0 else "[B, T, F]"
                raise ReadoutError(
                    f"time_axis={self.time_axis} declares the classifier {self.layer!r}'s tensors {layout}, but it "
                    f"recorded {shape} for {batch} examples: declare the other time_axis, or leave it out"
                )
            return tensor if self.time_axis == 0 else tensor.transpose(0, 1)
        if tensor.dim() == 3 and tensor.shape[0] == tensor.shape[1] == batch:
            raise ReadoutError(
                f"the classifier {self.layer!r} recorded {shape} for {batch} examples: with as many time steps as "
                "examples this is [T, B, F] or [B, T, F]. Pass time_axis=0 (time-major) or time_axis=1 "
                "(batch-first) to SpikeAwareScorer"
            )
        if tensor.dim() == 3 and tensor.shape[1] == batch:
            return tensor
        if tensor.dim() == 3 and tensor.shape[0] == batch:
            return tensor.transpose(0, 1)
        rows = tensor.reshape(-1, tensor.shape[-1])
        if rows.shape[0] % batch:
            raise ValueError(
                f"the classifier saw {rows.shape[0]} rows, not a multiple of the batch size {batch}: "
                "are indices, outputs and the forward pass from the same batch?"
            )
        if self.time_axis == 1:
            return rows.reshape(batch, -1, rows.shape[-1]).transpose(0, 1)
        return rows.reshape(-1, batch, rows.shape[-1])
