"""Torch backend: the reference plan with torch tensor operations, on any device.

The same algorithm as ``reference`` — counter-based random bits (64-bit wrapping integer
arithmetic, logical shifts emulated on int64), blocked float sums (``cumsum`` along rows of
``SUM_BLOCK``), the capping iteration with its sampled guess, fixed-point probabilities and the block
walk — so on the CPU the *selection* (which examples, with which weights) is bit-identical to the
reference. Two documented differences:

* **Order.** The picks are shuffled by sorting on random 64-bit keys (one ``torch.sort``), not by the
  reference's bucket scatter and in-bucket Fisher–Yates, whose sequential inner loop does not map
  onto tensor operations. Both are uniform shuffles, so the training order has the same
  distribution but is not the same permutation.
* **GPU float sums.** On CUDA, ``cumsum`` is a parallel scan whose rounding can differ in the last
  bits, so a probability sitting exactly on a rounding boundary may differ by one unit of 2**-32;
  the sampling statistics are unaffected (tested), exact equality is only claimed on the CPU.

Inputs may be numpy arrays or tensors; outputs are tensors on ``device`` (default: the scores').
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import reference
from .reference import EpochKeys

#: Backend interface (``sadp_data.kernels.KernelBackend``): not ``exact``, its order is its own.
name = "torch"
arrays = "torch"
exact = False

_ONE = reference.ONE


def _signed(value: int | np.uint64) -> int:
    """The int64 with the bit pattern of the uint64 ``value`` (torch has no uint64 arithmetic)."""
    return int(np.uint64(value).astype(np.int64))


_GOLDEN = _signed(reference.GOLDEN)
_MIX_1 = _signed(reference.MIX_1)
_MIX_2 = _signed(reference.MIX_2)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 tensors holding uint64 bit patterns."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def random_bits(key: int, counter: torch.Tensor) -> torch.Tensor:
    """``reference.random_bits`` as int64 bit patterns (wrapping arithmetic).

    ``reference.splitmix64`` with its right shifts made logical, which int64 tensors need; the same
    constants, so the same bits.
    """
    x = _signed(key) + (counter + 1) * _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    return x ^ _shift_right(x, 31)


def blocked_sum(values: torch.Tensor) -> float:
    """``reference.blocked_sum``: sequential sums within blocks of ``SUM_BLOCK``, added in order."""
    values = values.to(torch.float64)
    count = values.shape[0]
    blocks = -(-count // reference.SUM_BLOCK)
    padded = torch.zeros(blocks * reference.SUM_BLOCK, dtype=torch.float64, device=values.device)
    padded[:count] = values
    partial = torch.cumsum(padded.view(blocks, reference.SUM_BLOCK), dim=1)[:, -1]
    return float(torch.cumsum(partial, dim=0)[-1])


def _capping(weights: torch.Tensor, sample_size: int) -> tuple[float, torch.Tensor]:
    """``reference.capping_scale`` on a float64 tensor (same rounds, same guess)."""
    positive = int((weights > 0).sum())
    reference.check_feasible(positive, weights.shape[0], sample_size)
    if positive == sample_size:
        return 0.0, weights > 0
    capped = torch.zeros(weights.shape[0], dtype=torch.bool, device=weights.device)
    remaining = float(sample_size)
    total = blocked_sum(weights)
    guess = _guess(weights, sample_size, total)
    if guess is not None:
        hits = guess * weights >= 1.0
        count = int(hits.sum())
        if count < sample_size:
            uncapped = total - blocked_sum(torch.where(hits, weights, 0.0))
            if (sample_size - count) / uncapped >= guess:
                capped, remaining, total = hits, float(sample_size - count), uncapped
    while True:
        scale = remaining / total
        newly = ~capped & (scale * weights >= 1.0)
        count = int(newly.sum())
        if count == 0:
            return scale, capped
        capped |= newly
        remaining -= count
        if remaining == 0.0:
            return 0.0, capped
        total -= blocked_sum(torch.where(newly, weights, 0.0))


def _guess(weights: torch.Tensor, sample_size: int, total: float) -> float | None:
    count = weights.shape[0]
    if count < reference.GUESS_MIN:
        return None
    sample = weights[:: count // reference.GUESS_SAMPLE][: reference.GUESS_SAMPLE]
    return reference.guess_from_sample(sample, count, sample_size, total, _capping, blocked_sum)


def _quantize(weights: torch.Tensor, scale: float, capped: torch.Tensor, sample_size: int) -> torch.Tensor:
    fixed = torch.clamp(torch.floor(scale * weights * float(_ONE)), 0.0, float(_ONE - 1)).to(torch.int64)
    fixed[capped] = _ONE
    target = sample_size * _ONE
    current = int(fixed.sum())
    if current != target:
        room = torch.where(capped, 0, (_ONE - 1) - fixed if current < target else fixed)
        amount = abs(target - current)
        before = torch.cumsum(room, dim=0) - room
        take = torch.where(before < amount, torch.minimum(room, amount - torch.clamp(before, max=amount)), 0)
        fixed += take if current < target else -take
    return fixed


def _walk_order(num_examples: int, keys: EpochKeys, device: torch.device) -> torch.Tensor:
    """``reference.walk_order`` on ``device``."""
    width = reference.WALK_BLOCK
    blocks = -(-num_examples // width)
    block_ids = torch.arange(blocks, dtype=torch.int64, device=device)
    order = torch.sort(_shift_right(random_bits(int(keys.block_order), block_ids), 1), stable=True).indices
    mask = width - 1
    multipliers = (random_bits(int(keys.block_maps), 2 * block_ids) & mask) | 1
    offsets = random_bits(int(keys.block_maps), 2 * block_ids + 1) & mask
    steps = torch.arange(width, dtype=torch.int64, device=device)
    local = (multipliers[order, None] * steps[None, :] + offsets[order, None]) & mask
    visits = (order[:, None] * width + local).reshape(-1)
    return visits[visits < num_examples]


def shuffle_permutation(size: int, key: np.uint64, device: str | torch.device | None = None) -> torch.Tensor:
    """A keyed uniform random permutation of ``[0, size)`` (int64 tensor on ``device``, default the CPU).

    The indices sorted by random 63-bit keys (one ``torch.sort``; ties, of probability about
    size²/2**64, in the sort's order): uniform like ``reference.shuffle_permutation``, but not the
    same permutation.
    """
    counters = torch.arange(size, dtype=torch.int64, device=device)
    return torch.sort(_shift_right(random_bits(int(key), counters), 1)).indices


def plan(
    scores: Any,
    seen: Any | None,
    sample_size: int,
    smoothing: float,
    uniform: bool,
    keys: EpochKeys,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``reference.plan``: the same selection and weights (on the CPU), order by a key sort."""
    scores = torch.as_tensor(scores)
    device = torch.device(device) if device is not None else scores.device
    scores = scores.to(device)
    num_examples = scores.shape[0]
    permutation = shuffle_permutation(sample_size, keys.shuffle, device)
    if sample_size == num_examples:
        return permutation, torch.ones(num_examples, dtype=torch.float32, device=device)
    weights = torch.ones(num_examples, dtype=torch.float64, device=device)
    if not uniform:
        seen_mask = (
            torch.ones(num_examples, dtype=torch.bool, device=device)
            if seen is None
            else torch.as_tensor(np.asarray(seen) > 0 if isinstance(seen, np.ndarray) else seen > 0).to(device)
        )
        count = int(seen_mask.sum())
        values = scores.to(torch.float64)
        mean = blocked_sum(torch.where(seen_mask, values, 0.0)) / count if count else 0.0
        if mean > 0.0:
            relative = torch.where(seen_mask, values / mean, 1.0)
            weights = ((1.0 - smoothing) * relative + smoothing).to(torch.float32).to(torch.float64)
    scale, capped = _capping(weights, sample_size)
    fixed = _quantize(weights, scale, capped, sample_size)
    visits = _walk_order(num_examples, keys, device)
    walk = torch.cumsum(fixed[visits], dim=0) + int(reference.walk_offset(keys))
    level = walk >> 32
    previous = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), level[:-1]])
    picks = visits[level > previous]
    order = picks[permutation]
    if uniform:
        return order, torch.ones(sample_size, dtype=torch.float32, device=device)
    probabilities = fixed[order].to(torch.float64) / float(_ONE)
    return order, (sample_size / (num_examples * probabilities)).to(torch.float32)
