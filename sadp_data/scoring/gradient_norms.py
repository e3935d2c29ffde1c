"""Per-example gradient norms of one layer from its recorded inputs and output gradients.

For an affine layer ``z_p = W a_p + b`` applied at positions ``p`` of one example (time steps, pixels
of a convolution after ``unfold``, tokens), the example's weight gradient is ``Σ_p g_p a_pᵀ`` with
``g_p = ∂ℓ/∂z_p``, so

    ‖∂ℓ/∂W‖²_F = Σ_{p,q} (a_p·a_q)(g_p·g_q)        ‖∂ℓ/∂b‖² = ‖Σ_p g_p‖²

The first form (the "ghost norm", Goodfellow 2015; Li et al. 2022) costs ``P²·(D_in + D_out)`` per
example, materialising ``Σ_p g_p a_pᵀ`` costs ``P·D_in·D_out``: ``matrix_sq_norms`` takes the cheaper
one per layer, as Opacus's ghost clipping and private-transformers do. Affine batch norm contributes
``Σ_p g_p ⊙ x̂_p`` (scale) and ``Σ_p g_p`` (shift) per channel.

Every function here is pure: tensors in, tensors out, nothing kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .readout import ReadoutError

#: Layer types whose ``weight`` and ``bias`` the full-gradient score covers.
COVERED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTS_PER_CHUNK = 1 << 25


def trainable(module: nn.Module) -> tuple[bool, bool]:
    """Whether ``module``'s weight and bias exist and require gradients."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (weight is not None and weight.requires_grad, bias is not None and bias.requires_grad)


def covered(module: nn.Module) -> bool:
    """``module`` is a covered layer type with a trainable weight or bias."""
    return isinstance(module, COVERED) and any(trainable(module))


def leading_dims(module: nn.Module, inputs: torch.Tensor) -> int:
    """How many leading dims of ``module``'s input index examples, time steps or positions (not features)."""
    if isinstance(module, nn.Linear):
        return inputs.dim() - 1
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
        return inputs.dim() - 3
    if isinstance(module, nn.Conv1d):
        return inputs.dim() - 2
    return 2 if getattr(module, "step_mode", None) == "m" else 1  # BatchNorm1d: [N, C(, L)] or [T, B, C(, L)]


def by_example(
    tensor: torch.Tensor, lead: tuple[int, ...], batch: int, time_axis: int | None, name: str
) -> torch.Tensor:
    """``tensor`` of shape ``[*lead, *rest]`` regrouped as ``[batch, R, *rest]``: all rows of one example together.

    One leading dim is read as ``[T·B]`` time-major (``[B]`` for a call per time step), or batch-first
    where ``time_axis=1``; two or more as ``[T, B, ...]`` or ``[B, T, ...]`` (declared by ``time_axis``, or
    read from which dim equals the batch size; both equal refuses). Later leading dims are positions.
    """
    rest = tensor.shape[len(lead) :]
    if len(lead) == 1:
        if lead[0] % batch:
            raise ValueError(
                f"layer {name!r} saw {lead[0]} rows, not a multiple of the batch size {batch}: "
                "are indices, outputs and the forward pass from the same batch?"
            )
        if time_axis == 1:
            return tensor.reshape(batch, -1, *rest)
        return tensor.reshape(-1, batch, *rest).transpose(0, 1)
    axis = {0: 1, 1: 0}.get(time_axis) if time_axis is not None else None
    if axis is None:
        if lead[0] == lead[1] == batch:
            raise ReadoutError(
                f"layer {name!r} recorded leading dims {list(lead)} for {batch} examples: with as many time steps "
                "as examples this is [T, B, ...] or [B, T, ...]. Pass time_axis=0 (time-major) or time_axis=1 "
                "(batch-first) to SpikeAwareScorer"
            )
        axis = 1 if lead[1] == batch else 0
    if lead[axis] != batch:
        raise ReadoutError(
            f"layer {name!r} recorded leading dims {list(lead)} for {batch} examples: no dim of the batch size "
            "where the layout puts it; declare time_axis= or check that the forward pass is of this batch"
        )
    return tensor.movedim(axis, 0).reshape(batch, -1, *rest)


def _unfold(module: nn.Conv1d | nn.Conv2d, padded: torch.Tensor) -> torch.Tensor:
    """The convolution's patches ``[N, L, groups, C_in/groups · k]`` of its already padded input."""
    if isinstance(module, nn.Conv1d):
        padded = padded.unsqueeze(2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    patches = F.unfold(padded, kernel, dilation=dilation, stride=stride)
    rows, _, positions = patches.shape
    return patches.reshape(rows, module.groups, -1, positions).permute(0, 3, 1, 2)


def call_terms(
    module: nn.Module, inputs: torch.Tensor, grad: torch.Tensor
) -> tuple[tuple[int, ...], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One call's ``(lead, a, g, vector)``: float32 ``a [*lead, P, G, D_in]`` and ``g [*lead, P, G, D_out]`` whose
    ``Σ_p g_p a_pᵀ`` per row is a linear layer's weight gradient (``None`` without one; a convolution's weight is
    ``conv_weight_sq_norms``'s), and ``vector [*lead, K]`` the row's gradient of bias and batch-norm parameters
    (``None`` without any)."""
    has_weight, has_bias = trainable(module)
    lead_count = leading_dims(module, inputs)
    lead = tuple(inputs.shape[:lead_count])
    inputs, grad = inputs.to(torch.float32), grad.to(torch.float32)
    a = g = None
    vectors: list[torch.Tensor] = []
    if isinstance(module, nn.Linear):
        if has_weight:
            a, g = inputs[..., None, None, :], grad[..., None, None, :]
        if has_bias:
            vectors.append(grad)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if has_bias:
            vectors.append(grad.flatten(lead_count + 1).sum(-1))
    else:
        if module.training or module.running_mean is None:
            var, mean = torch.var_mean(inputs, [d for d in range(inputs.dim()) if d != lead_count], correction=0)
        else:
            mean, var = module.running_mean, module.running_var
        spatial = inputs.dim() > lead_count + 1

        def per_row(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(lead_count + 1).sum(-1) if spatial else t

        grad_sum = per_row(grad)
        if has_weight:  # Σ_p g_p x̂_p = (Σ_p g_p x_p − μ Σ_p g_p) / σ, without materialising x̂
            vectors.append((per_row(grad * inputs) - mean * grad_sum) / torch.sqrt(var + module.eps))
        if has_bias:
            vectors.append(grad_sum)
    return lead, a, g, torch.cat(vectors, dim=-1) if vectors else None


def conv_weight_sq_norms(module: nn.Conv1d | nn.Conv2d, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``‖∂ℓ/∂W‖²`` per example of a convolution from ``inputs [B, R, C_in, ...]`` and ``grad [B, R, C_out, ...]``,
    ``R`` the example's time steps or calls, summed over them.

    The ghost norm on ``unfold``ed patches where it is cheaper (small feature maps), else the per-example
    gradients themselves in one grouped weight-gradient convolution (``torch.nn.grad.conv*_weight`` with the
    examples as groups and ``R`` as its batch): about the cost of the layer's own weight gradient.
    """
    batch, steps, channels = inputs.shape[:3]
    d_in = module.weight[0].numel()
    d_out = module.out_channels // module.groups
    inputs, grad = inputs.to(torch.float32), grad.to(torch.float32)
    zero_padded = module.padding_mode == "zeros" and not isinstance(module.padding, str)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    if steps * grad[0, 0, 0].numel() * (d_in + d_out) < d_in * d_out:
        flat = inputs.reshape(batch * steps, channels, *inputs.shape[3:])
        a = _unfold(module, F.pad(flat, module._reversed_padding_repeated_twice, mode=mode))
        rows = grad.reshape(batch * steps, module.groups, d_out, -1).permute(0, 3, 1, 2)
        return matrix_sq_norms(a.reshape(batch, -1, module.groups, d_in), rows.reshape(batch, -1, module.groups, d_out))
    # time-major [R, B·C, ...]: a view of a multi-step layer's own [T, B, C, ...] tensors
    stacked, grads = inputs.transpose(0, 1).flatten(1, 2), grad.transpose(0, 1).flatten(1, 2)
    if not zero_padded:
        stacked = F.pad(stacked, module._reversed_padding_repeated_twice, mode=mode)
    weight_of = torch.nn.grad.conv1d_weight if isinstance(module, nn.Conv1d) else torch.nn.grad.conv2d_weight
    shape = (batch * module.out_channels, *module.weight.shape[1:])
    padding = module.padding if zero_padded else 0
    weights = weight_of(stacked, shape, grads, module.stride, padding, module.dilation, batch * module.groups)
    return weights.reshape(batch, -1).pow(2).sum(1)


def matrix_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖Σ_p g_p a_pᵀ‖²_F`` per example (summed over groups) from ``a [B, P, G, D_in]``, ``g [B, P, G, D_out]``.

    Ghost norm (two ``[P, P]`` Gram matrices) where ``P·(D_in + D_out) < D_in·D_out``, else the per-example
    gradient itself; examples are processed in chunks of at most 2²⁵ intermediate elements.
    """
    batch, positions, groups, d_in = a.shape
    d_out = g.shape[-1]
    ghost = positions * (d_in + d_out) < d_in * d_out
    per_example = groups * (positions * positions if ghost else d_in * d_out)
    step = max(1, _ELEMENTS_PER_CHUNK // max(per_example, 1))
    parts = []
    for start in range(0, batch, step):
        ac, gc = a[start : start + step].transpose(1, 2), g[start : start + step].transpose(1, 2)  # [b, G, P, D]
        if ghost:
            parts.append(((ac @ ac.transpose(2, 3)) * (gc @ gc.transpose(2, 3))).sum((1, 2, 3)))
        else:
            parts.append((gc.transpose(2, 3) @ ac).pow(2).sum((1, 2, 3)))
    return torch.cat(parts)


def readout_gradient_norm(inputs: torch.Tensor, deltas: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """The exact ``‖∂ℓ/∂(W, b)‖`` per example of a readout applied at ``T`` time steps, from its ``[T, B, D_in]``
    inputs and ``[T, B, D_out]`` output gradients (``matrix_sq_norms``: ghost norm or per-example gradient,
    whichever is cheaper; a per-step readout of 10 classes over 25 steps takes the latter, about 2× faster)."""
    norm2 = matrix_sq_norms(inputs.transpose(0, 1).unsqueeze(2), deltas.transpose(0, 1).unsqueeze(2))
    if has_bias:
        norm2 = norm2 + deltas.sum(dim=0).pow(2).sum(dim=1)
    return norm2.clamp_min(0).sqrt().detach()
