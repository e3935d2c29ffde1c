"""Data-pruning methods (``sadp_data.methods``): the plan contract, and each method's defining behaviour.

Statistical tests use fixed seeds, so each either always passes or always fails; their tolerances
are stated where they are used (a chi-square quantile or a number of standard errors).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sadp_data import SADPSampler, ScoreStore
from sadp_data.kernels import plan_epoch, sample_size
from sadp_data.kernels.reference import inclusion_probabilities, smooth_scores
from sadp_data.methods import METHODS, EpsilonGreedy, PlanRequest, get_method
from sadp_data.methods.base import top_k, unseen_first

N = 1000
#: The compiled CPU kernels; ``numpy`` gives identical plans, only slower (checked for ``random``).
BACKEND = "numba"


def losses(n: int = N, seed: int = 0, unseen: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (tie-free) losses of O(1), right-skewed like real losses, and scoring counts with some zeros."""
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 0.5, n).astype(np.float32)
    seen = rng.integers(1, 6, n).astype(np.uint32)
    seen[rng.choice(n, int(unseen * n), replace=False)] = 0
    return scores, seen


def request(
    scores: np.ndarray | None,
    seen: np.ndarray | None,
    keep: float = 0.7,
    *,
    seed: int = 7,
    epoch: int = 3,
    num_examples: int | None = None,
    smoothing: float = 0.1,
    backend: str = BACKEND,
) -> PlanRequest:
    count = num_examples if num_examples is not None else scores.shape[0]
    return PlanRequest(scores, seen, count, keep, seed, epoch, 10, smoothing, backend)


def kept_and_pruned(order: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    kept = np.zeros(count, dtype=bool)
    kept[order] = True
    return kept, np.flatnonzero(~kept)


# --- registry and validation ---------------------------------------------------------------------


def test_registry_names_and_scores() -> None:
    assert {name: cls.score for name, cls in METHODS.items()} == {
        "full": None,
        "random_static": None,
        "random": None,
        "sadp": "spike_aware",
        "loss_proportional": "loss",
        "infobatch": "loss",
        "ucb": "loss",
        "epsilon_greedy": "loss",
    }
    assert all(get_method(name).name == name for name in METHODS)
    assert get_method("ucb", c=0.5).c == 0.5 and get_method("epsilon_greedy", epsilon=0.3).epsilon == 0.3


def test_registry_and_option_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'bogus'; choose from .*epsilon_greedy.*ucb"):
        get_method("bogus")
    with pytest.raises(ValueError, match=r"'full' does not take option\(s\) c; it takes: no options"):
        get_method("full", c=1.0)
    with pytest.raises(ValueError, match=r"'ucb' does not take option\(s\) epsilon; it takes: c"):
        get_method("ucb", epsilon=0.1)
    for bad in (-1.0, math.nan, math.inf, "1"):
        with pytest.raises(ValueError, match="ucb option c"):
            get_method("ucb", c=bad)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="epsilon_greedy option epsilon"):
            get_method("epsilon_greedy", epsilon=bad)


def test_request_validation_names_the_parameter() -> None:
    scores, seen = losses(10)
    with pytest.raises(ValueError, match=r"scores must have shape \(11,\)"):
        request(scores, seen, num_examples=11)
    with pytest.raises(ValueError, match=r"seen must have shape \(10,\)"):
        request(scores, seen[:5])
    with pytest.raises(ValueError, match="keep_ratio"):
        request(scores, seen, keep=0.0)
    with pytest.raises(ValueError, match="epoch"):
        request(scores, seen, epoch=-1)
    with pytest.raises(ValueError, match="smoothing"):
        request(scores, seen, smoothing=1.5)
    with pytest.raises(ValueError, match="num_examples"):
        request(None, None, num_examples=0)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        get_method("random_static").plan(request(scores, seen, backend="gpu"))


@pytest.mark.parametrize("name", [name for name, cls in METHODS.items() if cls.score is not None])
def test_score_based_methods_need_scores(name: str) -> None:
    with pytest.raises(ValueError, match=f"method '{name}' needs the '{METHODS[name].score}' score"):
        get_method(name).plan(request(None, None, num_examples=N))


# --- the contract every method keeps -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_plan_contract(name: str) -> None:
    scores, seen = losses()
    keep = 1.0 if name == "full" else 0.7
    order, weights = get_method(name).plan(request(scores, seen, keep))
    size = sample_size(N, keep)
    assert order.dtype == np.int64 and weights.dtype == np.float32
    assert order.shape == weights.shape == (size,)
    assert np.unique(order).shape[0] == size and order.min() >= 0 and order.max() < N
    assert np.isfinite(weights).all() and (weights > 0).all()
    # Pure: a fresh instance on copies of the inputs gives identical arrays.
    again = get_method(name).plan(request(scores.copy(), seen.copy(), keep))
    np.testing.assert_array_equal(order, again[0])
    np.testing.assert_array_equal(weights, again[1])
    # Every method visits its examples in a fresh order each epoch.
    assert not np.array_equal(order, get_method(name).plan(request(scores, seen, keep, epoch=4))[0])
    assert not np.array_equal(order, get_method(name).plan(request(scores, seen, keep, seed=8))[0])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_full_data_epochs_are_identical_across_methods(name: str) -> None:
    """At keep ratio 1 (warm-up, anneal) every method gives ``plan_epoch``'s full-data plan."""
    scores, seen = losses()
    order, weights = get_method(name).plan(request(scores, seen, 1.0, epoch=5))
    expected, _ = plan_epoch(np.ones(N, np.float32), 1.0, 7, 5, backend="numpy")
    np.testing.assert_array_equal(order, expected)
    assert (weights == 1.0).all()


def test_top_k_breaks_ties_at_the_cut_at_random() -> None:
    keys = np.array([5.0, 1.0, 3.0, 3.0, 3.0, 0.0, np.inf, 3.0])
    picks = {tuple(top_k(keys, 4, np.random.default_rng(s))) for s in range(40)}
    assert all({0, 6} < set(p) and len(p) == 4 and set(p) - {0, 6} <= {2, 3, 4, 7} for p in picks)
    assert len(picks) == 6  # all C(4, 2) ways of taking two of the four tied keys
    np.testing.assert_array_equal(top_k(keys, 8, np.random.default_rng(0)), np.arange(8))
    with pytest.raises(ValueError, match="k must be"):
        top_k(keys, 9, np.random.default_rng(0))


# --- full, random_static, random, sadp -----------------------------------------------------------


def test_full_refuses_a_keep_ratio_below_one() -> None:
    with pytest.raises(ValueError, match=r"'full' trains on every example: keep_ratio must be 1\.0"):
        get_method("full").plan(request(None, None, 0.99, num_examples=N))


def test_random_static_keeps_one_nested_uniform_subset() -> None:
    method = get_method("random_static")
    plans = [method.plan(request(None, None, 0.3, epoch=e, num_examples=N))[0] for e in range(4)]
    assert all(np.array_equal(np.sort(plans[0]), np.sort(p)) for p in plans)
    assert not np.array_equal(plans[0], plans[1])
    small = set(plans[0].tolist())
    assert small < set(method.plan(request(None, None, 0.6, num_examples=N))[0].tolist())
    assert small != set(method.plan(request(None, None, 0.3, seed=8, num_examples=N))[0].tolist())
    # Over seeds the subset is uniform: Pearson chi-square of inclusion counts below its 0.999 quantile.
    counts = np.zeros(100)
    for seed in range(400):
        counts[method.plan(request(None, None, 0.3, seed=seed, num_examples=100))[0]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_random_is_plan_epoch_uniform_and_the_sampler(backend: str) -> None:
    order, weights = get_method("random").plan(request(None, None, 0.4, num_examples=N, backend=backend))
    expected = plan_epoch(np.ones(N, np.float32), 0.4, 7, 3, uniform=True, backend=backend)
    np.testing.assert_array_equal(order, expected[0])
    np.testing.assert_array_equal(weights, expected[1])
    sampler = SADPSampler(keep_ratio=0.4, num_examples=N, seed=7, method="random", backend=backend)
    sampler.set_epoch(3)
    np.testing.assert_array_equal(order, sampler.plan.order)
    np.testing.assert_array_equal(weights, sampler.plan.weights)


def test_sadp_is_plan_epoch_and_the_sampler(tmp_path: Path) -> None:
    scores, seen = losses()
    store = ScoreStore.create(tmp_path / "s.zarr", N)
    try:
        scored = np.flatnonzero(seen > 0)
        store.update(scored, scores[scored])
        sampler = SADPSampler(store, 0.6, epochs=6, seed=5, smoothing=0.2, backend=BACKEND)
        sampler.set_epoch(2)
        keep = sampler.keep_ratio()
        assert keep != 0.6  # the default schedule of sadp is "decreasing"
        snapshot = store.snapshot()
        req = PlanRequest(snapshot.scores, snapshot.seen, N, keep, 5, 2, 6, 0.2, BACKEND, snapshot.last_epoch)
        order, weights = get_method("sadp").plan(req)
        np.testing.assert_array_equal(order, sampler.plan.order)
        np.testing.assert_array_equal(weights, sampler.plan.weights)
        direct = plan_epoch(snapshot.scores, keep, 5, 2, seen=snapshot.seen, smoothing=0.2, backend=BACKEND)
        np.testing.assert_array_equal(order, direct[0])
        np.testing.assert_array_equal(weights, np.ones_like(direct[1]))  # default weight_power = 0
        _, unbiased = get_method("sadp", weight_power=1.0).plan(req)
        np.testing.assert_array_equal(unbiased, direct[1])
    finally:
        store.close()


# --- loss_proportional ---------------------------------------------------------------------------


def test_loss_proportional_draws_in_proportion_to_the_smoothed_loss() -> None:
    count, keep, smoothing, epochs = 200, 0.3, 0.1, 2000
    scores, seen = losses(count, seed=1)
    method = get_method("loss_proportional")
    first = request(scores, seen, keep, smoothing=smoothing)
    np.testing.assert_array_equal(method.plan(first)[0], get_method("sadp").plan(first)[0])  # the same kernel
    size = sample_size(count, keep)
    smoothed = smooth_scores(scores, seen, smoothing)
    probabilities = inclusion_probabilities(smoothed, size)
    counts = np.zeros(count)
    estimates = np.empty(epochs)
    for epoch in range(epochs):
        order, weights = method.plan(request(scores, seen, keep, epoch=epoch, smoothing=smoothing))
        counts[order] += 1
        np.testing.assert_allclose(weights, size / (count * probabilities[order]), rtol=1e-5)
        estimates[epoch] = np.mean(weights * scores[order])
    # Inclusion counts are Binomial(epochs, π_i): Σ z² below the chi-square 0.9999 quantile.
    free = probabilities < 1.0
    expected = epochs * probabilities[free]
    z_squared = (counts[free] - expected) ** 2 / (expected * (1.0 - probabilities[free]))
    assert z_squared.sum() < stats.chi2.ppf(0.9999, free.sum())
    # Frequencies are linear in the smoothed loss below the cap (a uniform draw would fail this).
    assert np.corrcoef(counts[free], smoothed[free])[0, 1] > 0.95
    # Horvitz–Thompson: the weighted mean loss is unbiased for the full-data mean (within 4 standard errors).
    assert abs(estimates.mean() - scores.mean()) < 4 * estimates.std() / math.sqrt(epochs)


# --- infobatch -----------------------------------------------------------------------------------


def well_learned(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    scored = seen > 0
    return scored & (scores.astype(np.float64) < scores.astype(np.float64)[scored].mean())


def test_infobatch_prunes_only_well_learned_and_rescales_the_kept_ones() -> None:
    scores, seen = losses()
    keep = 0.7
    order, weights = get_method("infobatch").plan(request(scores, seen, keep))
    kept, pruned = kept_and_pruned(order, N)
    easy = well_learned(scores, seen)
    prune = N - sample_size(N, keep)
    assert 0 < prune < easy.sum() and pruned.shape[0] == prune
    assert easy[pruned].all() and kept[seen == 0].all()
    scale = np.float32(easy.sum() / (easy.sum() - prune))  # 1 / (1 − r), r = pruned / |W|
    np.testing.assert_array_equal(weights, np.where(easy[order], scale, np.float32(1.0)))


def test_infobatch_weighted_epoch_loss_is_unbiased() -> None:
    count, keep, epochs = 300, 0.75, 2000
    scores, seen = losses(count, seed=2)
    method = get_method("infobatch")
    weighted, plain = np.empty(epochs), np.empty(epochs)
    for epoch in range(epochs):
        order, weights = method.plan(request(scores, seen, keep, epoch=epoch))
        weighted[epoch] = np.sum(weights * scores[order])
        plain[epoch] = np.sum(scores[order])
    tolerance = 4 * weighted.std() / math.sqrt(epochs)  # 4 standard errors of the Monte-Carlo mean
    assert abs(weighted.mean() - scores.sum()) < tolerance
    assert scores.sum() - plain.mean() > 10 * tolerance  # without the rescaling the epoch loss is biased


def test_infobatch_without_enough_well_learned_examples() -> None:
    scores, seen = losses()
    keep = 0.3
    order, weights = get_method("infobatch").plan(request(scores, seen, keep))
    kept, pruned = kept_and_pruned(order, N)
    easy = well_learned(scores, seen)
    prune = N - sample_size(N, keep)
    assert easy.sum() < prune
    # All of W goes, then the lowest-loss other scored examples; unseen ones stay; nothing is rescaled.
    others = np.flatnonzero((seen > 0) & ~easy)
    lowest = others[np.argsort(scores[others], kind="stable")[: prune - easy.sum()]]
    np.testing.assert_array_equal(pruned, np.sort(np.concatenate([np.flatnonzero(easy), lowest])))
    assert kept[seen == 0].all() and (weights == 1.0).all()


def test_infobatch_with_too_few_scored_examples_prunes_unscored_at_random() -> None:
    scores, seen = losses(unseen=0.9)
    plans = [get_method("infobatch").plan(request(scores, seen, 0.5, epoch=e)) for e in (3, 4)]
    for order, weights in plans:
        kept, _ = kept_and_pruned(order, N)
        assert not kept[seen > 0].any() and (weights == 1.0).all()
    assert set(plans[0][0].tolist()) != set(plans[1][0].tolist())


# --- ucb -----------------------------------------------------------------------------------------


def test_ucb_picks_unseen_first_then_the_highest_bounds() -> None:
    scores = np.array([0.1, 2.0, 0.5, 0.3, 1.0, 0.2, 0.9, 0.05], np.float32)
    seen = np.array([1, 4, 0, 9, 1, 0, 4, 16], np.uint32)
    # t = 35: bounds 0.1+√(ln35), 2+√(ln35/4), ∞, 0.3+√(ln35/9), 1+√(ln35), ∞, 0.9+√(ln35/4), 0.05+√(ln35/16)
    #           = 1.99,          2.94,        ∞, 0.93,            2.89,     ∞, 1.84,            0.52
    bounds = get_method("ucb", c=1.0).upper_bounds(request(scores, seen))
    assert bounds[0] == pytest.approx(0.1 + math.sqrt(math.log(35)), rel=1e-6) and np.isinf(bounds[[2, 5]]).all()
    keep = 5 / 8
    assert set(get_method("ucb", c=1.0).plan(request(scores, seen, keep))[0].tolist()) == {0, 1, 2, 4, 5}
    # Without the exploration bonus the fifth pick is the next-highest loss (6), not the rarely seen 0.
    assert set(get_method("ucb", c=0.0).plan(request(scores, seen, keep))[0].tolist()) == {1, 2, 4, 5, 6}


def test_ucb_selection_is_deterministic_given_scores_and_random_among_ties() -> None:
    scores, seen = losses()
    method = get_method("ucb")
    sets = [set(method.plan(request(scores, seen, 0.4, epoch=e))[0].tolist()) for e in (3, 4)]
    assert sets[0] == sets[1]
    bounds = method.upper_bounds(request(scores, seen))
    assert sets[0] == set(np.argsort(-bounds, kind="stable")[: sample_size(N, 0.4)].tolist())
    flat = np.ones(N, np.float32), np.ones(N, np.uint32)
    tied = [set(method.plan(request(*flat, 0.4, epoch=e))[0].tolist()) for e in (3, 4)]
    assert tied[0] != tied[1]


# --- epsilon_greedy ------------------------------------------------------------------------------


def test_epsilon_greedy_greedy_part_is_the_top_loss_among_the_rest() -> None:
    scores, seen = losses()
    keep, epsilon = 0.5, 0.2
    method = get_method("epsilon_greedy", epsilon=epsilon)
    req = request(scores, seen, keep)
    explored, greedy = method.select(req)
    size = sample_size(N, keep)
    assert explored.shape[0] == round(epsilon * size) and np.intersect1d(explored, greedy).shape[0] == 0
    rest = np.setdiff1d(np.arange(N), explored)
    keys = unseen_first(scores.astype(np.float64), seen)
    expected = rest[np.argsort(-keys[rest], kind="stable")[: size - explored.shape[0]]]
    np.testing.assert_array_equal(greedy, np.sort(expected))
    assert np.isin(np.flatnonzero(seen == 0), np.union1d(explored, greedy)).all()  # unseen first
    order, _ = method.plan(req)
    np.testing.assert_array_equal(np.sort(order), np.union1d(explored, greedy))
    # Whatever is explored, the plan holds the K − round(εK) highest keys overall.
    top = np.argsort(-keys, kind="stable")[: size - explored.shape[0]]
    assert np.isin(top, order).all()


def test_epsilon_greedy_extremes() -> None:
    scores, seen = losses()
    size = sample_size(N, 0.4)
    greedy_only = get_method("epsilon_greedy", epsilon=0.0).plan(request(scores, seen, 0.4))[0]
    top = np.argsort(-unseen_first(scores.astype(np.float64), seen), kind="stable")[:size]
    np.testing.assert_array_equal(np.sort(greedy_only), np.sort(top))
    explored, greedy = get_method("epsilon_greedy", epsilon=1.0).select(request(scores, seen, 0.4))
    assert explored.shape[0] == size and greedy.shape[0] == 0


def test_epsilon_greedy_exploration_is_uniform() -> None:
    count, epochs = 200, 1000
    scores, seen = losses(count, seed=3)
    method = EpsilonGreedy(epsilon=0.2)
    counts = np.zeros(count)
    for epoch in range(epochs):
        counts[method.select(request(scores, seen, 0.5, epoch=epoch))[0]] += 1
    assert counts.sum() == epochs * round(0.2 * sample_size(count, 0.5))
    # Pearson chi-square of exploration counts against uniform, p above 1e-3; and independent of the
    # loss: |Spearman| below 0.25, 3.5 standard deviations (1/√199) of its null distribution.
    assert stats.chisquare(counts).pvalue > 1e-3
    assert abs(stats.spearmanr(counts, scores).statistic) < 0.25
