"""Numpy reference implementation of epoch planning; every other backend reproduces it.

The plan is built from parts chosen so that a parallel CPU or GPU implementation can give
*bit-identical* results to this sequential-looking numpy code:

* **Counter-based randomness.** Every random number is ``splitmix64(key, counter)``, with four
  64-bit keys derived from ``(seed, epoch)`` (``EpochKeys``). Any thread can compute any random
  number without a shared generator state; the hash and its constants are defined here once and
  compiled unchanged by the numba and CUDA backends.
* **Blocked float sums.** Float totals (mean score, capping totals) are sums of sequential sums over
  fixed blocks of ``SUM_BLOCK`` elements, added in block order: one thread per block reproduces them.
* **Fixed-point probabilities.** Inclusion probabilities become integers in units of 2**-32 whose
  total is exactly ``K * 2**32``; all later arithmetic is on exact integers, so the draw picks exactly
  ``K`` distinct examples at any N (no float drift, no 2**24 category limit).
* **Block walk order.** Systematic sampling visits examples in *walk blocks* of ``WALK_BLOCK``
  consecutive indices. Blocks are visited in a random order; inside a block the visit order is a
  random affine bijection ``j -> (a·j + c) mod WALK_BLOCK``. Block totals are order-free integer
  sums, so each block can be walked independently once the running total at its start is known;
  and a block's data stays in cache. First-order inclusion probabilities are exact for *any*
  order; the random order only decorrelates which examples are drawn together (second order).
  Trade-off: examples in one walk block are visited with a stride pattern, not a fully random
  order, so their joint inclusion is less random than under a full permutation.
* **Scatter shuffle.** The picks are put in training order by a random bucket scatter (a stable
  counting sort on hashed bucket ids) followed by a Fisher–Yates shuffle inside each bucket.

The reference is written for clarity, not speed; ``numba_cpu`` is the fast CPU implementation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .arrays import to_host

#: Backend interface (``sadp_data.kernels.KernelBackend``): the ``numpy`` backend, which exact ones reproduce.
name = "numpy"
arrays = "numpy"
exact = True

#: Fixed-point scale of quantised inclusion probabilities: a probability of 1 is ``ONE``.
ONE = 1 << 32
#: Elements per block of a float sum.
SUM_BLOCK = 1 << 16
#: Elements per walk block (a power of two).
WALK_BLOCK = 1 << 12
#: Sizes from which the capping iteration starts from a sampled guess, and the sample's size.
GUESS_MIN = 1 << 18
GUESS_SAMPLE = 1 << 16
#: The guess is shrunk by this factor so that it rarely overshoots the solution.
GUESS_MARGIN = 0.995
#: Target items per bucket of the final shuffle.
SHUFFLE_BUCKET = 1 << 15

#: SplitMix64 (Steele, Lea & Flood 2014): the increment φ = 2**64/golden ratio and the finaliser's
#: multipliers, defined only here: every backend hashes with these.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


class EpochKeys(NamedTuple):
    """The epoch's four independent 64-bit keys, one per random stream of the plan.

    A tuple, so positional indexing keeps working: ``keys[3]`` is ``keys.shuffle``.
    """

    #: The order in which walk blocks are visited (``walk_blocks``).
    block_order: np.uint64
    #: The affine bijection inside each walk block (``walk_blocks``).
    block_maps: np.uint64
    #: The systematic sample's random start (``walk_offset``).
    offset: np.uint64
    #: The training order: ``shuffle_permutation`` of the picks, and ``locality_order`` for sharded stores.
    shuffle: np.uint64


def epoch_keys(seed: int, epoch: int) -> EpochKeys:
    """The keys of ``(seed, epoch)``: the first four uint64 words of ``SeedSequence([seed, epoch])``.

    The same keys on every machine and numpy version that keeps ``SeedSequence`` stable; distinct
    ``(seed, epoch)`` pairs give unrelated keys. Raises ``ValueError`` for a negative seed or epoch.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return EpochKeys(*np.random.SeedSequence([seed, epoch]).generate_state(4, dtype=np.uint64))


def splitmix64(key: Any, counter: Any) -> Any:
    """SplitMix64 of ``key + (counter + 1)·φ``, wrapping uint64 arithmetic, on uint64 scalars or arrays.

    Plain arithmetic on purpose: ``numba_cpu`` jits this very function and ``cuda`` makes it a device
    function, so every exact backend hashes with the same code. Both arguments must already be
    uint64 (``random_bits`` converts). For a fixed key it is a bijection of the counter (no two
    counters collide); statistically strong, not cryptographic.
    """
    x = key + (counter + np.uint64(1)) * GOLDEN
    x = (x ^ (x >> np.uint64(30))) * MIX_1
    x = (x ^ (x >> np.uint64(27))) * MIX_2
    return x ^ (x >> np.uint64(31))


def random_bits(key: np.uint64, counter: np.ndarray) -> np.ndarray:
    """64 pseudo-random bits (uint64) for each counter value under ``key``: ``splitmix64`` on arrays."""
    return splitmix64(np.uint64(key), np.asarray(counter, dtype=np.uint64))


def bounded(bits: np.ndarray, limit: int) -> np.ndarray:
    """Map random 64-bit values to ``[0, limit)`` by multiplying their top 32 bits (no division).

    Bias at most ``limit / 2**32`` per value (Lemire's multiply-shift); ``limit`` < 2**32.
    """
    return ((bits >> np.uint64(32)) * np.uint64(limit)) >> np.uint64(32)


def blocked_sum(values: np.ndarray) -> float:
    """Sum of sequential per-block sums (blocks of ``SUM_BLOCK``), added in block order."""
    values = np.asarray(values, dtype=np.float64)
    total = 0.0
    for start in range(0, values.shape[0], SUM_BLOCK):
        total += float(np.cumsum(values[start : start + SUM_BLOCK])[-1])
    return total


def smooth_scores(scores: np.ndarray, seen: np.ndarray, smoothing: float) -> np.ndarray:
    """Mix scores with uniform: ``(1 - λ) * s / mean(s_seen) + λ``, computed in float64, stored as float32.

    Float32 halves the memory traffic of the capping passes; the relative rounding (2**-24) is far
    below any statistical resolution, and all sums stay float64.

    Never-scored examples (``seen == 0``) take the mean seen score (relative weight 1) so they keep
    being explored. With nothing seen, or a zero mean, the result is uniform (all ones). With
    ``λ = 0`` zero scores stay zero and such examples are never drawn.
    """
    scores = np.asarray(scores)
    seen_mask = np.asarray(seen) > 0
    count = int(np.count_nonzero(seen_mask))
    if count == 0:
        return np.ones(scores.shape[0], dtype=np.float32)
    mean = blocked_sum(np.where(seen_mask, scores.astype(np.float64), 0.0)) / count
    if mean <= 0.0:
        return np.ones(scores.shape[0], dtype=np.float32)
    relative = np.where(seen_mask, scores.astype(np.float64) / mean, 1.0)
    return ((1.0 - smoothing) * relative + smoothing).astype(np.float32)


def check_feasible(positive: int, count: int, sample_size: int) -> None:
    """Refuse a sample size larger than the number of examples with a positive weight."""
    if positive < sample_size:
        raise ValueError(
            f"only {positive} of {count} weights are positive, fewer than the sample "
            f"size {sample_size}; use smoothing > 0 so every example keeps a chance"
        )


def capping_guess(weights: np.ndarray, sample_size: int, total: float) -> float | None:
    """A scale just below the final capping scale, from a strided sample; ``None`` when not useful.

    Only for N ≥ ``GUESS_MIN`` with positive weights: the capping iteration runs on every
    ``N // GUESS_SAMPLE``-th weight, its capping factor (final scale over uncapped scale) is
    transferred to the full data and shrunk by ``GUESS_MARGIN`` so it usually stays below the solution.
    """
    count = weights.shape[0]
    if count < GUESS_MIN:
        return None
    return guess_from_sample(weights[:: count // GUESS_SAMPLE][:GUESS_SAMPLE], count, sample_size, total)


def guess_from_sample(sample, count: int, sample_size: int, total: float, capping=None, summing=None):
    """The guess of ``capping_guess`` from its strided ``sample`` of ``count`` weights.

    ``capping`` and ``summing`` are a backend's own ``capping_scale`` and ``blocked_sum`` (default:
    this module's), so every backend computes the guess with its own, identical, arithmetic.
    """
    capping = capping or capping_scale
    summing = summing or blocked_sum
    if float(sample.min()) <= 0.0:
        return None
    size = sample.shape[0]
    sample_k = min(size - 1, max(1, int(np.floor(sample_size * size / count + 0.5))))
    sample_scale, _ = capping(sample, sample_k)
    factor = sample_scale * summing(sample) / sample_k
    return GUESS_MARGIN * factor * sample_size / total


def capping_scale(weights: np.ndarray, sample_size: int) -> tuple[float, np.ndarray]:
    """``(c, capped)`` such that ``π_i = 1 if capped_i else c·w_i`` sums to ``sample_size``.

    The capping iteration: scale the uncapped weights to the remaining sample size, cap every
    entry that reaches 1, repeat until nothing new is capped (each round caps at least one entry;
    each round is one O(N) pass; the uncapped total is kept by subtracting the newly capped
    weights' blocked sum). For large N it starts from ``capping_guess`` instead of nothing: one
    pass caps everything the guess caps, and if the scale that follows is not below the guess
    (the guess did not overshoot) the iteration continues from there, usually finishing in one or
    two more rounds; otherwise it starts from nothing. Raises ``ValueError`` when fewer than
    ``sample_size`` weights are positive.
    """
    weights = np.asarray(weights, dtype=np.float32).astype(np.float64)
    positive = int(np.count_nonzero(weights > 0))
    check_feasible(positive, weights.shape[0], sample_size)
    if positive == sample_size:  # every positive weight is drawn; no float rounding may say otherwise
        return 0.0, weights > 0
    capped = np.zeros(weights.shape[0], dtype=bool)
    remaining = float(sample_size)
    total = blocked_sum(weights)
    guess = capping_guess(weights, sample_size, total)
    if guess is not None:
        hits = guess * weights >= 1.0
        count = int(np.count_nonzero(hits))
        if count < sample_size:
            uncapped = total - blocked_sum(np.where(hits, weights, 0.0))
            if (sample_size - count) / uncapped >= guess:
                capped, remaining, total = hits, float(sample_size - count), uncapped

    def count_and_sum(newly: np.ndarray) -> tuple[int, float]:
        return int(np.count_nonzero(newly)), blocked_sum(np.where(newly, weights, 0.0))

    return capping_rounds(lambda scale: scale * weights >= 1.0, count_and_sum, capped, remaining, total)


def capping_rounds(reaches_one, count_and_sum, capped: np.ndarray, remaining: float, total: float):
    """The capping iteration of ``capping_scale`` from a start: ``(c, capped)``.

    ``reaches_one(c)`` flags the examples with ``c·w ≥ 1``; ``count_and_sum(newly)`` returns how many
    are newly capped and the blocked sum of their weights. Passed in so that the sharded planner
    (``sadp_data.distributed.partitioned_plan``) runs this very loop with its sums taken across ranks.
    """
    while True:
        scale = remaining / total
        newly = ~capped & reaches_one(scale)
        count, newly_total = count_and_sum(newly)
        if count == 0:
            return scale, capped
        capped |= newly
        remaining -= count
        if remaining == 0.0:
            return 0.0, capped
        total -= newly_total


def inclusion_probabilities(weights: np.ndarray, sample_size: int) -> np.ndarray:
    """Capped inclusion probabilities ``π_i = min(1, c·w_i)`` with ``Σ π_i = sample_size`` (float64)."""
    scale, capped = capping_scale(weights, sample_size)
    return np.where(capped, 1.0, scale * np.asarray(weights, dtype=np.float32).astype(np.float64))


def quantize(weights: np.ndarray, scale: float, capped: np.ndarray, sample_size: int) -> np.ndarray:
    """Fixed-point probabilities (uint64, units of 2**-32) summing to exactly ``sample_size · 2**32``.

    Capped entries are exactly ``2**32``; others ``floor(c·w·2**32)`` clipped to ``2**32 - 1``. The
    remainder (at most one unit per entry plus float rounding) is spread greedily in index order
    over uncapped entries within ``[0, 2**32 - 1]``. The result *is* the design's inclusion
    probabilities; it differs from ``c·w`` by a few units of 2**-32 at most.
    """
    probabilities = scale * np.asarray(weights, dtype=np.float32).astype(np.float64)
    fixed = np.clip(np.floor(probabilities * float(ONE)), 0.0, float(ONE - 1)).astype(np.uint64)
    fixed[capped] = ONE
    target = sample_size * ONE
    current = int(fixed.sum(dtype=np.uint64))
    if current < target:
        room = np.where(capped, 0, np.uint64(ONE - 1) - fixed).astype(np.uint64)
        fixed += _greedy_take(room, target - current)
    elif current > target:
        room = np.where(capped, 0, fixed).astype(np.uint64)
        fixed -= _greedy_take(room, current - target)
    return fixed


def _greedy_take(room: np.ndarray, amount: int) -> np.ndarray:
    """Take ``amount`` units from ``room`` in index order, as much as possible from each entry."""
    before = np.cumsum(room, dtype=np.uint64) - room
    wanted = np.uint64(amount)
    return np.where(before < wanted, np.minimum(room, wanted - np.minimum(before, wanted)), 0).astype(np.uint64)


def walk_blocks(num_examples: int, keys: EpochKeys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, multipliers, offsets)`` of the walk: blocks in visiting order, and each block's affine map.

    Block ``b`` visits its ``j``-th example at ``b·WALK_BLOCK + (multipliers[b]·j + offsets[b]) mod
    WALK_BLOCK`` (odd multipliers: a bijection); blocks are ordered by a stable sort of random keys.
    """
    blocks = -(-num_examples // WALK_BLOCK)
    block_ids = np.arange(blocks, dtype=np.uint64)
    order = np.argsort(random_bits(keys.block_order, block_ids) >> np.uint64(1), kind="stable")
    mask = np.uint64(WALK_BLOCK - 1)
    multipliers = random_bits(keys.block_maps, 2 * block_ids) & mask | np.uint64(1)
    offsets = random_bits(keys.block_maps, 2 * block_ids + np.uint64(1)) & mask
    return order, multipliers, offsets


def walk_order(num_examples: int, keys: EpochKeys) -> np.ndarray:
    """The order in which systematic sampling visits examples (int64 permutation of ``[0, N)``)."""
    order, multipliers, offsets = walk_blocks(num_examples, keys)
    mask = np.uint64(WALK_BLOCK - 1)
    steps = np.arange(WALK_BLOCK, dtype=np.uint64)
    visits = []
    for block in order:
        local = (multipliers[block] * steps + offsets[block]) & mask
        index = np.int64(block) * WALK_BLOCK + local.astype(np.int64)
        visits.append(index[index < num_examples])
    return np.concatenate(visits)


def walk_offset(keys: EpochKeys) -> int:
    """The systematic sample's random start ``u`` in ``[0, 2**32)``."""
    return int(random_bits(keys.offset, np.zeros(1, np.uint64))[0] >> np.uint64(32))


def systematic_select(fixed: np.ndarray, visit: np.ndarray, offset: int) -> np.ndarray:
    """Systematic PPS: pick ``visit[j]`` where ``⌊(C_j + u)/2³²⌋`` steps up (C: integer prefix sums).

    Example i is picked with probability exactly ``fixed[i] / 2**32`` and at most once; exactly
    ``Σ fixed / 2**32`` examples are picked. Returns them in visiting order (int64).
    """
    walk = np.cumsum(fixed[visit], dtype=np.uint64) + np.uint64(offset)
    level = walk >> np.uint64(32)
    previous = np.concatenate([np.zeros(1, np.uint64), level[:-1]])
    return np.asarray(visit[level > previous], dtype=np.int64)


def shuffle_buckets(size: int) -> int:
    """Number of buckets of the shuffle of ``size`` items (about ``SHUFFLE_BUCKET`` items each)."""
    return max(1, -(-size // SHUFFLE_BUCKET))


def shuffle_permutation(size: int, key: np.uint64, device: str | None = None) -> np.ndarray:
    """A keyed random permutation of ``[0, size)`` (int64): output position i takes item ``perm[i]``.

    Scatter shuffle: each item goes to a random bucket (a stable counting sort by bucket), then
    each bucket is Fisher–Yates shuffled with counter-based random numbers. With independent
    uniform buckets and uniform in-bucket shuffles the result is a uniform random permutation
    (up to the quality of the hash); buckets of ``SHUFFLE_BUCKET`` items stay in cache, which is
    what makes it faster than one global Fisher–Yates. ``device`` is ignored (computed on the host).
    """
    bucket_key, swap_key = random_bits(key, np.arange(2, dtype=np.uint64))
    buckets = shuffle_buckets(size)
    bucket = bounded(random_bits(bucket_key, np.arange(size, dtype=np.uint64)), buckets)
    perm = np.argsort(bucket, kind="stable").astype(np.int64)
    sizes = np.bincount(bucket.astype(np.int64), minlength=buckets)
    starts = np.cumsum(sizes) - sizes
    for i in range(int(sizes.max()) - 1, 0, -1):
        active = np.flatnonzero(sizes > i)
        here = starts[active] + i
        there = starts[active] + bounded(random_bits(swap_key, here.astype(np.uint64)), i + 1).astype(np.int64)
        perm[here], perm[there] = perm[there], perm[here].copy()
    return perm


def importance_weights(fixed: np.ndarray, picks: np.ndarray, sample_size: int) -> np.ndarray:
    """Horvitz–Thompson weights ``K / (N π_i)`` of the picks (float32): ``mean(w·ℓ)`` is unbiased."""
    probabilities = fixed[picks].astype(np.float64) / float(ONE)
    return (sample_size / (fixed.shape[0] * probabilities)).astype(np.float32)


def plan(
    scores: Any,
    seen: Any | None,
    sample_size: int,
    smoothing: float,
    uniform: bool,
    keys: EpochKeys,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole epoch plan ``(order, weights)`` as numpy arrays; see ``sadp_data.kernels.plan_epoch``.

    Scores and counts of any array type are copied to the host; ``device`` is ignored.
    """
    scores = to_host(scores)
    num_examples = scores.shape[0]
    if sample_size == num_examples:
        return shuffle_permutation(num_examples, keys.shuffle), np.ones(num_examples, np.float32)
    if uniform:
        weights = np.ones(num_examples, dtype=np.float32)
    else:
        counts = np.ones(num_examples, np.uint32) if seen is None else to_host(seen)
        weights = smooth_scores(scores, counts, smoothing)
    scale, capped = capping_scale(weights, sample_size)
    fixed = quantize(weights, scale, capped, sample_size)
    picks = systematic_select(fixed, walk_order(num_examples, keys), walk_offset(keys))
    order = picks[shuffle_permutation(sample_size, keys.shuffle)]
    if uniform:
        return order, np.ones(sample_size, np.float32)
    return order, importance_weights(fixed, order, sample_size)
