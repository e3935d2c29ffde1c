"""The ``full_gradient`` score: each example's gradient norm over every covered layer, from the training's backward.

A forward hook on every ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and affine ``nn.BatchNorm1d/2d`` with
trainable parameters keeps a reference to the layer's input (autograd keeps it for the weight gradient
anyway) and registers a hook on the layer's output tensor. The user's own ``loss.backward()`` then
delivers ``∂L/∂z`` to those hooks, and ``gradient_norms`` turns inputs and output gradients into exact
per-example norms. No extra backward pass, no ``torch.func``, no change to the model, its parameters or
their ``.grad``.

Scaling: the gradient reaching the hooks is of ``c · mean_i(w_i ℓ_i)``, the scalar ``step()`` returned
times what the user multiplied it by (a ``GradScaler``, ``1/accumulation``). A hook on that scalar reads
``c``; example ``i``'s rows are divided by ``|c|·|w_i|/B``, so scores do not depend on batch size,
weights or loss scaling. Examples with weight 0 and non-finite norms (an overflowing AMP step) are not
pushed. The scores of a step are pushed when its backward ends (a callback queued on the autograd
engine), so the last batch of an epoch is in the store before the next epoch is planned.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd import Variable

from .gradient_norms import by_example, call_terms, conv_weight_sq_norms, covered, matrix_sq_norms, trainable

Push = Callable[[torch.Tensor, torch.Tensor, "int | None"], None]


@dataclass
class _Call:
    module: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor | None
    grad: torch.Tensor | None = None
    step: _Step | None = None


@dataclass
class _Step:
    calls: list[_Call]
    indices: torch.Tensor
    factor: torch.Tensor  # w_i / B: what the training loss multiplies each example's loss by
    epoch: int | None
    scale: torch.Tensor | None = None
    waiting: dict[nn.Module, int] = field(default_factory=dict)
    sq_norms: torch.Tensor | None = None


class FullGradientHooks:
    """Layer hooks for ``SpikeAwareScorer(score="full_gradient")``; ``push(indices, scores, epoch)`` receives scores.

    ``layers=k`` keeps only the last ``k`` covered layers in forward order (fixed at the first step; the
    others' hooks are removed): the bottom layers of a deep conv net cost about one weight-gradient
    computation each, the top ones little. ``uncovered`` names the trainable parameters the score leaves
    out (a PLIF neuron's learnable decay, layer norm, recurrent cells' own weights, ...). ``hook_seconds`` adds
    up the wall time spent computing norms in the backward hooks (on a GPU: launching the work).
    """

    def __init__(self, model: nn.Module, push: Push, layers: int | None = None, time_axis: int | None = None) -> None:
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise ValueError(f"full_gradient_layers must be a positive number of layers or None, got {layers!r}")
        self.model, self._push, self._layers, self._time_axis = model, push, layers, time_axis
        self._names = {module: name for name, module in model.named_modules() if covered(module)}
        if not self._names:
            raise ValueError(
                f"{type(model).__name__} has no nn.Linear, nn.Conv1d/2d or affine batch norm with trainable "
                "parameters: the full_gradient score has nothing to cover; use score='spike_aware' with layer="
            )
        self._handles = {module: module.register_forward_hook(self._record) for module in self._names}
        self._calls: list[_Call] = []
        self._pending: _Step | None = None
        self.hook_seconds = 0.0

    @property
    def uncovered(self) -> list[str]:
        """Names of the model's trainable parameters that the score does not cover."""
        kept = {id(getattr(module, kind)) for module in self._handles for kind in ("weight", "bias")}
        return [name for name, p in self.model.named_parameters() if p.requires_grad and id(p) not in kept]

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        call = _Call(module, inputs[0].detach(), output)
        output.register_hook(lambda grad: self._on_grad(call, grad))
        self._calls.append(call)

    def _take_calls(self) -> list[_Call]:
        """The calls since the last step, of the kept layers; the first time, ``layers=k`` picks them."""
        calls, self._calls = self._calls, []
        if self._layers is not None and len(self._handles) > self._layers and calls:
            order = list(dict.fromkeys(call.module for call in calls))
            for module in order[: -self._layers]:
                self._handles.pop(module).remove()
        return [call for call in calls if call.module in self._handles]

    def expect_backward(
        self, indices: torch.Tensor, weights: torch.Tensor | None, total: torch.Tensor, epoch: int | None
    ) -> None:
        """Tie the forward calls since the last step to the batch ``indices`` whose training scalar is ``total``."""
        self.flush()
        calls = self._take_calls()
        if not calls:
            raise RuntimeError(
                "no covered layer ran with gradients since the last step: run the model with gradients "
                "enabled (not under torch.no_grad) before calling step()"
            )
        batch = int(indices.shape[0])
        factor = torch.ones(batch, device=total.device) if weights is None else weights.to(total.device).float()
        step = _Step(calls, indices, factor.abs() / batch, epoch)
        for call in calls:
            call.step, call.output = step, None
            step.waiting[call.module] = step.waiting.get(call.module, 0) + 1
        total.register_hook(lambda grad: self._on_scale(step, grad))
        self._pending = step

    def _on_scale(self, step: _Step, grad: torch.Tensor) -> None:
        step.scale = grad.detach().abs().float()
        Variable._execution_engine.queue_callback(lambda: self._finish(step))

    def _on_grad(self, call: _Call, grad: torch.Tensor) -> None:
        step = call.step
        if step is None or step is not self._pending:
            return  # a forward no step() claimed, or a step already finished
        if step.scale is None:
            raise RuntimeError(
                "score='full_gradient' reads the gradients of the scalar step() returned: call backward() on "
                "that scalar (times any factor, e.g. GradScaler.scale(loss)), not on a loss computed separately"
            )
        call.grad = grad.detach()
        step.waiting[call.module] -= 1
        if step.waiting[call.module] == 0:
            self._add_layer(step, call.module)

    def _add_layer(self, step: _Step, module: nn.Module) -> None:
        """Add ``module``'s per-example squared norm to the step's, from the calls that received a gradient."""
        start = time.perf_counter()
        calls = [call for call in step.calls if call.module is module and call.grad is not None]
        step.waiting.pop(module, None)
        if calls:
            total = layer_sq_norms(module, calls, int(step.indices.shape[0]), self._time_axis, self._names[module])
            step.sq_norms = total if step.sq_norms is None else step.sq_norms + total
        for call in calls:
            call.inputs = call.grad = None
        self.hook_seconds += time.perf_counter() - start

    def _finish(self, step: _Step) -> None:
        """Push the step's scores (at the end of its backward, or at the next step for a step cut short)."""
        if step is not self._pending:
            return
        self._pending = None
        for module in list(step.waiting):
            self._add_layer(step, module)
        if step.sq_norms is None or step.scale is None:
            return
        scale = step.scale.to(step.sq_norms.device) * step.factor.to(step.sq_norms.device)
        scores = step.sq_norms.clamp_min(0).sqrt() / scale
        keep = torch.isfinite(scores) & (scale > 0)
        indices = step.indices
        if not bool(keep.all()):
            indices, scores = indices[keep.to(indices.device)], scores[keep]
        self._push(indices, scores, step.epoch)

    def flush(self) -> None:
        """Push a step whose backward ran but did not end normally; drop one whose backward never ran."""
        step = self._pending
        if step is not None and step.scale is None:
            warnings.warn(
                "score='full_gradient': the previous step() had no backward() before the next step; its scores "
                "are dropped (call backward() after each step(), e.g. once per micro-batch when accumulating)",
                stacklevel=3,
            )
            self._pending = None
        elif step is not None:
            self._finish(step)

    def compute(self, per_sample_loss: torch.Tensor) -> torch.Tensor:
        """Scores of the calls since the last step without a training backward: one ``torch.autograd.grad``
        of ``per_sample_loss.sum()`` with respect to the recorded layer outputs (the graph is kept)."""
        self.flush()
        calls = [call for call in self._take_calls() if call.output is not None]
        if not calls:
            raise RuntimeError("no covered layer ran with gradients since the last step: run the model first")
        grads = torch.autograd.grad(
            per_sample_loss.sum(), [call.output for call in calls], retain_graph=True, allow_unused=True
        )
        batch = int(per_sample_loss.shape[0])
        total = torch.zeros(batch, device=per_sample_loss.device)
        for call, grad in zip(calls, grads, strict=True):
            call.grad, call.output = grad, None
        for module in dict.fromkeys(call.module for call in calls):
            connected = [call for call in calls if call.module is module and call.grad is not None]
            if connected:
                total = total + layer_sq_norms(module, connected, batch, self._time_axis, self._names[module])
        return total.sqrt().detach()

    def discard_pending(self) -> None:
        """Forget the forward calls since the last step (the finished or pending step is kept)."""
        self._calls = []

    def remove(self) -> None:
        """Remove every hook; a step whose backward did not run yet is dropped."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._calls, self._pending = [], None


def layer_sq_norms(module: nn.Module, calls: list[_Call], batch: int, time_axis: int | None, name: str) -> torch.Tensor:
    """Per-example squared gradient norm of one layer over all its calls of the step (e.g. one per time step),
    the calls combined per example before the norm is taken."""
    time_axis = 0 if time_axis is None and getattr(module, "step_mode", None) == "m" else time_axis
    a_parts, g_parts, vector_parts, conv_parts = [], [], [], []
    for call in calls:
        lead, a, g, vector = call_terms(module, call.inputs, call.grad)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and trainable(module)[0]:
            conv_parts.append(tuple(by_example(t, lead, batch, time_axis, name) for t in (call.inputs, call.grad)))
        if a is not None:
            a_parts.append(by_example(a, lead, batch, time_axis, name).flatten(1, 2))
            g_parts.append(by_example(g, lead, batch, time_axis, name).flatten(1, 2))
        if vector is not None:
            vector_parts.append(by_example(vector, lead, batch, time_axis, name).sum(1))
    total = torch.zeros(batch, device=calls[0].grad.device)
    if a_parts:
        a, g = (parts[0] if len(parts) == 1 else torch.cat(parts, 1) for parts in (a_parts, g_parts))
        total = total + matrix_sq_norms(a, g)
    if conv_parts:
        inputs, grads = (
            torch.cat(parts, 1) if len(conv_parts) > 1 else parts[0] for parts in zip(*conv_parts, strict=True)
        )
        total = total + conv_weight_sq_norms(module, inputs, grads)
    if vector_parts:
        total = total + torch.stack(vector_parts).sum(0).pow(2).sum(1)
    return total


def full_gradient_hooks(
    score: str, model: nn.Module, push: Push, layer: object, layers: int | None, time_axis: int | None
) -> FullGradientHooks | None:
    """The hooks for ``score="full_gradient"``, else ``None``; refuses options that belong to the other score."""
    if score != "full_gradient":
        if layers is not None:
            raise ValueError(f"full_gradient_layers applies to score='full_gradient' only, not score={score!r}")
        return None
    if layer is not None:
        raise ValueError(
            "layer= picks the readout of the readout-layer scores; score='full_gradient' covers every layer "
            "(restrict it to the last k layers with full_gradient_layers=k)"
        )
    return FullGradientHooks(model, push, layers, time_axis)


def full_gradient_only(hooks: FullGradientHooks | None, variants: tuple[str, ...]) -> bool:
    """Whether ``variants`` ask for the full-gradient score (then only that one, from a full-gradient scorer)."""
    if "full_gradient" not in variants and hooks is None:
        return False
    if hooks is None or tuple(variants) != ("full_gradient",):
        raise ValueError(
            f"score variants {list(variants)}: 'full_gradient' needs its layer hooks, which only "
            "SpikeAwareScorer(score='full_gradient') adds, and that scorer computes no other variant"
        )
    return True
