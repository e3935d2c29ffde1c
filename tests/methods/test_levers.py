"""SADP's method levers (``sadp_data.methods.sadp``): each option's defining behaviour, and purity."""

from __future__ import annotations

import numpy as np
import pytest

from sadp_data.kernels import plan_epoch, sample_size
from sadp_data.methods import PlanRequest, get_method
from sadp_data.methods.sadp import expected_relative_ess, score_ratio, sharpened, stale_scores
from sadp_data.schedule import KeepRatioSchedule

N = 4000


def _request(scores, keep=0.5, seed=3, epoch=5, smoothing=0.1, backend="numpy", seen=None, last_epoch=None):
    scores = np.asarray(scores, dtype=np.float32)
    seen = np.ones(scores.shape[0], np.uint32) if seen is None else seen
    return PlanRequest(scores, seen, scores.shape[0], keep, seed, epoch, 10, smoothing, backend, last_epoch)


def _skewed(seed=0, size=N):
    return np.random.default_rng(seed).lognormal(0.0, 1.5, size).astype(np.float32)


def test_weight_power_keeps_the_draw_and_tempers_the_weights():
    request = _request(_skewed())
    order_ht, weights_ht = get_method("sadp", weight_power=1.0).plan(request)
    order_half, weights_half = get_method("sadp", weight_power=0.5).plan(request)
    order_flat, weights_flat = get_method("sadp", weight_power=0.0).plan(request)
    np.testing.assert_array_equal(order_ht, order_half)
    np.testing.assert_array_equal(order_ht, order_flat)
    np.testing.assert_allclose(weights_half, np.sqrt(weights_ht.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(weights_flat, np.ones(sample_size(N, 0.5), np.float32))
    # α = 1 is exactly plan_epoch's Horvitz–Thompson plan.
    reference = plan_epoch(request.scores, 0.5, 3, 5, seen=request.seen, smoothing=0.1, backend="numpy")
    np.testing.assert_array_equal(weights_ht, reference[1])


def test_normalize_makes_the_mean_weight_one():
    _, weights = get_method("sadp", weight_power=0.5, normalize=True).plan(_request(_skewed()))
    assert abs(weights.astype(np.float64).mean() - 1.0) < 1e-6
    assert weights.std() > 0.05  # still importance weights, not flattened


def test_sharpness_draws_in_proportion_to_powered_scores():
    scores = np.random.default_rng(4).lognormal(0.0, 0.5, N).astype(np.float32)
    request = _request(scores)
    order, weights = get_method("sadp", sharpness=2.0, weight_power=1.0).plan(request)
    powered = (scores.astype(np.float64) / scores.max()) ** 2
    expected = plan_epoch(powered.astype(np.float32), 0.5, 3, 5, smoothing=0.1, backend="numpy")
    np.testing.assert_array_equal(order, expected[0])
    np.testing.assert_array_equal(weights, expected[1])
    top = np.argsort(scores)[-N * 3 // 10 :]
    plain, _ = get_method("sadp").plan(request)
    sharp, flat_weights = get_method("sadp", sharpness=2.0).plan(request)
    assert np.isin(sharp, top).sum() > np.isin(plain, top).sum() + 100
    np.testing.assert_array_equal(flat_weights, np.ones_like(flat_weights))
    np.testing.assert_array_equal(sharpened(scores, 1.0), scores)
    assert sharpened(np.zeros(3, np.float32), 2.0).tolist() == [0.0, 0.0, 0.0]


def test_staleness_inflates_old_scores_by_age_and_draws_them_more_often():
    scores = np.ones(N, np.float32)
    last = np.where(np.arange(N) < N // 2, 4, 0).astype(np.int32)  # first half scored last epoch, rest 4 epochs before
    boosted = stale_scores(scores, np.ones(N, np.uint32), last, epoch=5, staleness=0.5)
    np.testing.assert_allclose(boosted[: N // 2], 1.0)
    np.testing.assert_allclose(boosted[N // 2 :], 1.0 + 0.5 * 4)
    unseen = np.zeros(N, np.uint32)
    np.testing.assert_array_equal(stale_scores(scores, unseen, last, 5, 0.5), scores)  # unseen: left to the planner
    method = get_method("sadp", staleness=0.5)
    old_share = []
    for seed in range(20):
        order, _ = method.plan(_request(scores, keep=0.3, seed=seed, last_epoch=last))
        old_share.append(np.mean(order >= N // 2))
    # Boosted scores 1 (young) and 3 (old), mean 2: π ∝ 0.9·s/2 + 0.1 = 0.55 and 1.45 (no capping at k = 0.3),
    # so old examples make up 1.45 / 2 of the draw in expectation (20 draws of 1,200: sd ≈ 0.003).
    assert abs(np.mean(old_share) - 1.45 / 2) < 0.01
    plain, _ = get_method("sadp").plan(_request(scores, keep=0.3, seed=0, last_epoch=last))
    assert abs(np.mean(plain >= N // 2) - 0.5) < 0.05


def test_target_ess_raises_smoothing_until_the_weights_are_effective_enough():
    scores = _skewed(1) ** 2
    request = _request(scores, smoothing=0.0)
    _, weights, info = get_method("sadp", weight_power=1.0).plan_with_info(request)
    ess = weights.sum() ** 2 / (weights.astype(np.float64) ** 2).sum() / weights.shape[0]
    assert ess < 0.5
    _, weights, info = get_method("sadp", weight_power=1.0, target_ess=0.8).plan_with_info(request)
    ess = weights.astype(np.float64).sum() ** 2 / (weights.astype(np.float64) ** 2).sum() / weights.shape[0]
    assert info["smoothing"] > 0.0
    assert ess >= 0.8 - 0.03  # expected ESS meets the target; one draw is within a few percent
    # A target already met leaves λ alone.
    _, _, info = get_method("sadp", weight_power=1.0, target_ess=0.01).plan_with_info(request)
    assert info["smoothing"] == 0.0


def test_expected_relative_ess_formula():
    pi = np.full(100, 0.5)
    assert expected_relative_ess(pi, 50, 1.0) == pytest.approx(1.0)
    pi = np.concatenate([np.full(50, 0.9), np.full(50, 0.1)])
    assert expected_relative_ess(pi, 50, 0.0) == pytest.approx(1.0)
    assert expected_relative_ess(pi, 50, 1.0) == pytest.approx(100**2 / (50 * np.sum(1 / pi)))


def test_gate_samples_uniformly_when_importance_sampling_cannot_help():
    flat = 1.0 + 0.01 * np.random.default_rng(0).random(N)
    assert 1 - 1 / score_ratio(flat) < 0.001
    order, weights, info = get_method("sadp", gate=0.05).plan_with_info(_request(flat))
    uniform = plan_epoch(flat.astype(np.float32), 0.5, 3, 5, uniform=True, backend="numpy")
    assert info["gated"]
    np.testing.assert_array_equal(order, uniform[0])
    np.testing.assert_array_equal(weights, np.ones_like(weights))
    _, _, info = get_method("sadp", gate=0.05).plan_with_info(_request(_skewed()))
    assert not info["gated"] and info["predicted_gain"] > 0.05


@pytest.mark.parametrize(
    "options",
    [
        {"weight_power": 0.5, "normalize": True},
        {"staleness": 0.3, "weight_power": 0.0},
        {"target_ess": 0.7},
        {"sharpness": 2.0},
    ],
)
def test_levers_are_pure_and_identical_across_cpu_backends(options):
    scores = _skewed(2)
    last = np.random.default_rng(1).integers(-1, 5, N).astype(np.int32)
    seen = (last >= 0).astype(np.uint32)
    method = get_method("sadp", **options)
    first = method.plan(_request(scores, seen=seen, last_epoch=last, backend="numpy"))
    again = method.plan(_request(scores, seen=seen, last_epoch=last, backend="numpy"))
    numba = method.plan(_request(scores, seen=seen, last_epoch=last, backend="numba"))
    for a, b, c in zip(first, again, numba, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("weight_power", 1.5),
        ("weight_power", -0.1),
        ("staleness", -1),
        ("sharpness", 0.0),
        ("sharpness", 9),
        ("target_ess", 0.0),
        ("gate", 2),
        ("normalize", 1),
    ],
)
def test_bad_lever_values_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        get_method("sadp", **{name: value})


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_decreasing_schedule_spends_the_constant_budget_early(keep):
    epochs = 20
    decreasing = KeepRatioSchedule(keep, epochs, 1, 0.125, "decreasing")
    constant = KeepRatioSchedule(keep, epochs, 1, 0.125, "constant")
    pruning = [e for e in range(epochs) if decreasing.phase(e) == "prune"]
    ratios = [decreasing(e) for e in pruning]
    assert np.all(np.diff(ratios) < 0)
    assert 0 < min(ratios) and max(ratios) <= 1
    assert np.mean(ratios) == pytest.approx(keep)
    assert decreasing.theoretical_speedup() == pytest.approx(constant.theoretical_speedup())
