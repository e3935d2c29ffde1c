"""Epoch-planning kernels: exactness, statistics, and numpy/numba agreement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sadp_data.kernels import get_backend, localize, plan_epoch, reference, sample_size

BACKENDS = ["numpy", "numba"]


def _random_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(0.0, 1.5, n).astype(np.float32)
    scores[rng.random(n) < 0.05] = 0.0
    seen = (rng.random(n) < 0.8).astype(np.uint32)
    return scores, seen


@pytest.mark.parametrize("n", [1, 7, 1000, 20011])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.7, 0.99])
def test_numba_matches_reference_exactly(n: int, keep: float) -> None:
    scores, seen = _random_scores(n, n)
    a_order, a_weights = plan_epoch(scores, keep, 5, 3, seen=seen, backend="numpy")
    b_order, b_weights = plan_epoch(scores, keep, 5, 3, seen=seen, backend="numba")
    np.testing.assert_array_equal(a_order, b_order)
    np.testing.assert_array_equal(a_weights, b_weights)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1 << 20 | 77, 3_000_001])
@pytest.mark.parametrize("distribution", ["exponential", "lognormal", "sorted"])
def test_numba_matches_reference_on_large_inputs(n: int, distribution: str) -> None:
    """Large N exercises the blocked sums, the sampled capping guess and the candidate shortcut."""
    rng = np.random.default_rng(n)
    scores = {"exponential": rng.exponential(size=n), "lognormal": rng.lognormal(0, 2, n)}.get(
        distribution, np.sort(rng.lognormal(0, 1, n))
    ).astype(np.float32)
    for keep in (0.05, 0.7):
        a = plan_epoch(scores, keep, 1, 4, backend="numpy")
        b = plan_epoch(scores, keep, 1, 4, backend="numba")
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_random_bits_are_splitmix64_and_keys_are_named() -> None:
    """Key 0 gives SplitMix64's published stream for seed 0; ``epoch_keys`` is a tuple with named streams."""
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert reference.random_bits(np.uint64(0), np.arange(4)).tolist() == expected
    keys = reference.epoch_keys(5, 3)
    state = np.random.SeedSequence([5, 3]).generate_state(4, dtype=np.uint64)
    assert list(keys) == state.tolist() and keys[3] == keys.shuffle and keys[0] == keys.block_order
    assert reference.walk_offset(keys) == int(reference.random_bits(keys.offset, np.zeros(1))[0] >> np.uint64(32))


def test_permutations_are_permutations() -> None:
    for size in (1, 2, 5, 4096, 70001):
        np.testing.assert_array_equal(np.sort(reference.shuffle_permutation(size, np.uint64(7))), np.arange(size))
        np.testing.assert_array_equal(np.sort(reference.walk_order(size, reference.epoch_keys(0, 1))), np.arange(size))
    numba_cpu = get_backend("numba")
    for size in (70001, 300_007):  # the serial and the parallel (>= 2^18) kernel
        np.testing.assert_array_equal(
            numba_cpu.shuffle_permutation(size, np.uint64(7)), reference.shuffle_permutation(size, np.uint64(7))
        )


def test_shuffle_positions_are_uniform() -> None:
    """Where item 0 lands over 3,000 keys: uniform over 10 positions (chi-square, α = 0.001)."""
    landing = [int(np.flatnonzero(reference.shuffle_permutation(10, np.uint64(k)) == 0)[0]) for k in range(3000)]
    assert stats.chisquare(np.bincount(landing, minlength=10)).pvalue > 1e-3


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1e6, allow_nan=False, width=32), min_size=1, max_size=300),
    keep=st.floats(0.01, 1.0),
    smoothing=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
)
def test_properties_of_probabilities_and_plans(scores, keep, smoothing, seed) -> None:
    scores = np.asarray(scores, dtype=np.float32)
    n = scores.shape[0]
    k = sample_size(n, keep)
    smooth = reference.smooth_scores(scores, np.ones(n, np.uint32), smoothing)
    assert np.all(smooth > 0)
    scale, capped = reference.capping_scale(smooth, k)
    pi = reference.inclusion_probabilities(smooth, k)
    assert np.all(pi >= 0) and np.all(pi <= 1)
    assert abs(pi.sum() - k) <= 1e-9 * max(k, 1)
    uncapped = pi < 1
    if uncapped.any() and (~uncapped).any():
        # capped entries are those with the largest weights
        assert smooth[~uncapped].min() >= smooth[uncapped].max()
    q = reference.quantize(smooth, scale, capped, k)
    assert int(q.sum(dtype=np.uint64)) == k << 32
    assert np.all(np.abs(q.astype(np.float64) / 2**32 - pi) <= 1e-6)
    for backend in BACKENDS:
        order, weights = plan_epoch(scores, keep, seed % 1000, 1, smoothing=smoothing, backend=backend)
        assert order.shape == (k,) and np.unique(order).shape == (k,)
        assert np.all((order >= 0) & (order < n))
        assert np.all(weights > 0) and np.all(weights <= 1 / smoothing * (1 + 1e-5))


def test_all_equal_scores_reduce_to_uniform() -> None:
    scores = np.full(1000, 3.5, np.float32)
    order, weights = plan_epoch(scores, 0.3, 0, 2)
    assert order.shape == (300,)
    np.testing.assert_allclose(weights, 1.0, rtol=1e-6)
    _, uniform_weights = plan_epoch(scores, 0.3, 0, 2, uniform=True)
    np.testing.assert_array_equal(uniform_weights, 1.0)
    pi = reference.inclusion_probabilities(reference.smooth_scores(scores, np.ones(1000), 0.1), 300)
    np.testing.assert_allclose(pi, 0.3, rtol=1e-6)


def test_dominant_scores_are_capped_at_one_and_always_drawn() -> None:
    scores = np.ones(100, np.float32)
    scores[:5] = 1e6
    for epoch in range(20):
        order, weights = plan_epoch(scores, 0.2, 1, epoch, smoothing=0.05)
        assert set(range(5)) <= set(order.tolist())
        np.testing.assert_allclose(weights[np.isin(order, range(5))], 0.2)


def test_zero_scores_without_smoothing_are_never_drawn_and_infeasible_is_refused() -> None:
    scores = np.zeros(10, np.float32)
    scores[:6] = 1.0
    order, _ = plan_epoch(scores, 0.5, 0, 0, smoothing=0.0)
    assert set(order.tolist()) <= set(range(6))
    with pytest.raises(ValueError, match="fewer than the sample size 7"):
        plan_epoch(scores, 0.7, 0, 0, smoothing=0.0)


def test_tiny_scores_are_handled() -> None:
    scores = np.full(50, 1e-30, np.float32)
    scores[0] = 1e-20
    order, weights = plan_epoch(scores, 0.5, 0, 0, smoothing=0.0)
    assert order.shape == (25,) and np.all(np.isfinite(weights))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_inclusion_frequencies_match_probabilities_chi_square(backend: str) -> None:
    """Over 4,000 epochs each example's draw count is Binomial(E, π_i); a chi-square test at α = 0.001."""
    scores, seen = _random_scores(3, 60)
    scores[0] = 50.0  # one capped entry
    keep, epochs, smoothing = 0.3, 4000, 0.1
    k = sample_size(60, keep)
    pi = reference.inclusion_probabilities(reference.smooth_scores(scores, seen, smoothing), k)
    counts = np.zeros(60)
    for epoch in range(epochs):
        order, _ = plan_epoch(scores, keep, 11, epoch, seen=seen, smoothing=smoothing, backend=backend)
        counts[order] += 1
    assert counts[pi == 1].min() == epochs
    free = pi < 1
    expected = epochs * pi[free]
    statistic = np.sum((counts[free] - expected) ** 2 / (expected * (1 - pi[free])))
    p_value = stats.chi2.sf(statistic, df=int(free.sum()))
    assert p_value > 1e-3, (statistic, p_value)


def test_horvitz_thompson_mean_is_unbiased() -> None:
    """Mean over 3,000 epochs of the weighted pick mean equals the population mean (z-test, |z| < 4)."""
    rng = np.random.default_rng(7)
    values = rng.gamma(2.0, 1.0, 400)
    scores = (values + rng.gamma(1.0, 0.3, 400)).astype(np.float32)  # correlated, imperfect scores
    estimates = []
    for epoch in range(3000):
        order, weights = plan_epoch(scores, 0.25, 2, epoch)
        estimates.append(np.mean(weights * values[order]))
    estimates = np.asarray(estimates)
    z = (estimates.mean() - values.mean()) / (estimates.std(ddof=1) / np.sqrt(len(estimates)))
    assert abs(z) < 4, z


def test_determinism_and_epoch_dependence() -> None:
    scores, seen = _random_scores(9, 500)
    a = plan_epoch(scores, 0.5, 4, 2, seen=seen)
    b = plan_epoch(scores.copy(), 0.5, 4, 2, seen=seen.copy())
    np.testing.assert_array_equal(a[0], b[0])
    c = plan_epoch(scores, 0.5, 4, 3, seen=seen)
    assert not np.array_equal(a[0], c[0])


def test_keep_ratio_one_is_a_permutation_with_unit_weights() -> None:
    order, weights = plan_epoch(np.random.default_rng(0).random(777), 1.0, 0, 0)
    np.testing.assert_array_equal(np.sort(order), np.arange(777))
    np.testing.assert_array_equal(weights, 1.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="keep_ratio"):
        plan_epoch(np.ones(5), 0.0, 0, 0)
    with pytest.raises(ValueError, match="smoothing"):
        plan_epoch(np.ones(5), 0.5, 0, 0, smoothing=1.5)
    with pytest.raises(ValueError, match="1-D"):
        plan_epoch(np.ones((2, 2)), 0.5, 0, 0)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        plan_epoch(np.ones(5), 0.5, 0, 0, backend="fortran")
    with pytest.raises(ValueError, match="non-negative"):
        plan_epoch(np.ones(5), 0.5, -1, 0)
    with pytest.raises(ValueError, match="seen must have the shape"):
        plan_epoch(np.ones(5), 0.5, 0, 0, seen=np.ones(4))


def test_locality_order_keeps_the_plan_and_groups_shards() -> None:
    scores = np.random.default_rng(5).random(2000).astype(np.float32)
    order, weights = plan_epoch(scores, 0.5, 0, 1)
    local, local_weights = plan_epoch(scores, 0.5, 0, 1, shard_size=100, window=3)
    plan = dict(zip(order.tolist(), weights.tolist(), strict=True))
    assert plan == dict(zip(local.tolist(), local_weights.tolist(), strict=True))
    shards = local // 100
    # Every window of 3 shards is contiguous in the order, and each shard is read within one window.
    seen: list[int] = []
    for shard in shards:
        if shard not in seen:
            seen.append(int(shard))
    windows = [set(seen[i : i + 3]) for i in range(0, len(seen), 3)]
    position = 0
    for members in windows:
        count = int(np.isin(shards, list(members)).sum())
        assert set(shards[position : position + count].tolist()) == members
        position += count
    assert position == len(local)
    other, _ = plan_epoch(scores, 0.5, 0, 2, shard_size=100, window=3)
    assert not np.array_equal(local // 100, other // 100)
    with pytest.raises(ValueError, match="shard_size and window must be positive"):
        plan_epoch(scores, 0.5, 0, 1, shard_size=0)


def test_localize_gives_a_plan_made_elsewhere_the_order_of_plan_epoch() -> None:
    """``localize`` under the epoch's key is ``plan_epoch``'s own locality step, for every array type."""
    import torch

    scores = np.random.default_rng(6).random(3000).astype(np.float32)
    groups = np.random.default_rng(7).integers(0, 40, 3000)
    for options in ({"shard_size": 128, "window": 2}, {"groups": groups, "window": 3}):
        expected = plan_epoch(scores, 0.4, 2, 5, **options)
        plain = plan_epoch(scores, 0.4, 2, 5)
        got = localize(*plain, seed=2, epoch=5, **options)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        tensors = localize(torch.from_numpy(plain[0]), torch.from_numpy(plain[1]), seed=2, epoch=5, **options)
        assert isinstance(tensors[0], torch.Tensor) and isinstance(tensors[1], torch.Tensor)
        np.testing.assert_array_equal(tensors[0].numpy(), expected[0])
    with pytest.raises(ValueError, match="shard_size and window must be positive"):
        localize(*plain, seed=2, epoch=5)
