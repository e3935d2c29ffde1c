"""``sadp``: spike-aware importance sampling (the library's own method, arXiv 2510.04098), and its levers.

The draw is always ``plan_epoch``'s: exactly K distinct examples by systematic PPS with inclusion
probabilities ``π_i ∝ (1 − λ)·s_i/mean(s) + λ`` capped at 1. The options change what goes into the
draw and what comes out of it, each as a pure function of (score snapshot, seed, epoch):

* ``sharpness`` β: the draw uses ``s_i^β`` instead of ``s_i``. β > 1 moves the budget towards the
  highest-score examples (more of them capped at π = 1, towards ε-greedy's top-K); with heavy-tailed
  scores the examples below the capped ones then fall to the smoothing floor λ, so the rest of the
  draw becomes nearly uniform (ε-greedy's exploration). β < 1 flattens the draw towards uniform. With
  ``weight_power=1`` the weights stay unbiased for any β (they are ``K/(N π_i)`` of the sharpened
  draw); at α = 0 the epoch's objective becomes ``Σ_i π_i ℓ_i`` with the sharper π.
* ``staleness``: an example's score is as old as the epoch it was last scored in; scores are
  inflated by ``1 + staleness·age`` before the draw, so examples not drawn for a while come back.
* ``weight_power`` α: weights ``(K / (N π_i))^α``. α = 1 is Horvitz–Thompson (the weighted mean loss
  is unbiased for the full-data mean); α = 0 trains on the draw unweighted (biased towards
  high-score examples, which then count more in the step than the low-score examples drawn beside
  them). In between, the objective of an epoch is ``Σ_i π_i^(1−α)·ℓ_i`` up to a constant: its
  bias grows as α falls.
* ``normalize``: divide the plan's weights by their mean, so every epoch's mean weight is exactly 1
  (the learning rate means the same in every epoch whatever α; a ratio estimator, unbiased only as
  K grows).
* ``target_ess``: raise λ above the sampler's smoothing, per epoch, until the expected effective
  sample size of the weights is at least ``target_ess·K`` (λ adapted to the score distribution).
* ``gate``: when the predicted relative variance reduction of importance sampling over uniform
  sampling, ``1 − mean(s)²/mean(s²)`` (Katharopoulos & Fleuret 2018), is below ``gate``, the epoch
  is a uniform random sample with weights 1.

``docs/method.md`` gives the default and the evidence for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from ..kernels import plan_epoch, reference
from .base import Method, PlanRequest, require_scores, to_host

#: At most this many examples (a fixed stride of the data) are used to search λ for ``target_ess``.
ESS_SEARCH_SAMPLE = 1 << 16
#: Bisection steps of the λ search (λ resolved to 2**-20).
ESS_SEARCH_STEPS = 20


def _check_range(name: str, value: Any, low: float, high: float, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"sadp option {name} must be a number in [{low:g}, {high:g}], got {value!r}")


def stale_scores(scores: np.ndarray, seen: np.ndarray, last_epoch: np.ndarray | None, epoch: int, staleness: float):
    """Scores inflated by age: ``s_i·(1 + staleness·age_i)``, ``age_i = max(0, epoch − 1 − last_epoch_i)``.

    An example scored in the previous epoch has age 0. Unseen examples are left as they are (the
    planner gives them the mean score). float32, like the store's scores.
    """
    if staleness == 0.0 or last_epoch is None:
        return scores
    age = np.maximum(0, epoch - 1 - np.asarray(last_epoch, dtype=np.int64))
    boosted = np.asarray(scores, dtype=np.float64) * (1.0 + staleness * age)
    return np.where(np.asarray(seen) > 0, boosted, scores).astype(np.float32)


def sharpened(scores: np.ndarray, sharpness: float) -> np.ndarray:
    """``s^β`` in float32, computed in float64 (scores are normalised by their maximum first, so large β
    neither overflows nor underflows float32 for scores within a factor 10^(38/β) of the maximum)."""
    if sharpness == 1.0:
        return scores
    values = np.asarray(scores, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if top <= 0.0:
        return scores
    return np.power(values / top, sharpness).astype(np.float32)


def score_ratio(scores: np.ndarray, seen: np.ndarray | None = None) -> float:
    """``ρ = mean(s²) / mean(s)²`` over the scored examples (1 when nothing or only zeros are scored)."""
    values = np.asarray(scores, dtype=np.float64)
    if seen is not None:
        values = values[np.asarray(seen) > 0]
    if values.size == 0:
        return 1.0
    mean = float(values.mean())
    return 1.0 if mean <= 0.0 else float(np.mean(values * values)) / (mean * mean)


def expected_relative_ess(probabilities: np.ndarray, sample_size: int, weight_power: float) -> float:
    """Expected ESS of the plan's weights over K: ``(Σ π w)² / (K Σ π w²)`` with ``w = (K/(N π))^α``.

    1 for equal weights; HT weights (α = 1) give ``N² / (K Σ 1/π)``.
    """
    pi = np.asarray(probabilities, dtype=np.float64)
    weights = (sample_size / (pi.shape[0] * pi)) ** weight_power
    return float(np.sum(pi * weights) ** 2 / (sample_size * np.sum(pi * weights * weights)))


def smoothing_for_ess(
    scores: np.ndarray, seen: np.ndarray, sample_size: int, smoothing: float, target: float, weight_power: float
) -> float:
    """The smallest λ ≥ ``smoothing`` whose expected relative ESS (``expected_relative_ess``) is ≥ ``target``.

    λ = 1 is uniform sampling (ESS = K), so a solution always exists. Searched by bisection on a
    fixed stride of at most ``ESS_SEARCH_SAMPLE`` examples (K scaled alike): cheap at any N, exact
    only up to that sample.
    """
    count = scores.shape[0]
    stride = max(1, count // ESS_SEARCH_SAMPLE)
    sample_scores, sample_seen = scores[::stride], seen[::stride]
    size = max(1, min(sample_scores.shape[0] - 1, round(sample_size * sample_scores.shape[0] / count)))

    def ess(lam: float) -> float:
        weights = reference.smooth_scores(sample_scores, sample_seen, lam)
        return expected_relative_ess(reference.inclusion_probabilities(weights, size), size, weight_power)

    if sample_scores.shape[0] < 2 or ess(smoothing) >= target:
        return smoothing
    low, high = smoothing, 1.0
    for _ in range(ESS_SEARCH_STEPS):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if ess(middle) >= target else (middle, high)
    return high


@dataclass(frozen=True)
class SADP(Method):
    """K examples drawn with probabilities proportional to their smoothed scores; tempered HT weights.

    The draw is ``plan_epoch(scores, keep_ratio, seed, epoch, seen=seen, smoothing=λ)``, its weights
    raised to ``weight_power``. The default ``weight_power=0`` trains on the draw unweighted, and
    ``SADPSampler`` runs ``sadp`` on the ``decreasing`` keep-ratio schedule (the same budget as a
    constant keep ratio, spent early); ``docs/method.md`` gives the evidence. ``weight_power=1`` with
    ``schedule="constant"`` is the unbiased Horvitz–Thompson method of earlier versions. Example i is drawn with
    probability ``π_i ∝ (1 − λ)·s_i/mean(s) + λ`` (capped at 1); unseen examples count as of mean
    score. The scores are the spike-aware gradient-norm bound (``score = "spike_aware"``). The
    module docstring explains each option and the bias it adds.

    Args:
        weight_power: α in [0, 1]; weights ``(K/(N π_i))^α`` (1: unbiased Horvitz–Thompson; default 0).
        sharpness: β in (0, 8]; the draw is proportional to ``s^β`` (default 1: the scores as they are).
        normalize: divide the weights by their mean over the plan (mean weight exactly 1).
        staleness: γ ≥ 0; scores inflated by ``1 + γ·(epochs since last scored − 1)``.
        target_ess: in (0, 1] or ``None``; λ raised per epoch until the expected ESS ≥ target·K.
        gate: in [0, 1) or ``None``; uniform epoch when ``1 − 1/ρ`` (ρ = mean(s²)/mean(s)²) < gate.
    """

    weight_power: float = 0.0
    sharpness: float = 1.0
    normalize: bool = False
    staleness: float = 0.0
    target_ess: float | None = None
    gate: float | None = None

    name: ClassVar[str] = "sadp"
    score: ClassVar[str | None] = "spike_aware"
    default_schedule: ClassVar[str] = "decreasing"

    def __post_init__(self) -> None:
        _check_range("weight_power", self.weight_power, 0.0, 1.0)
        _check_range("staleness", self.staleness, 0.0, 1e6)
        _check_range("sharpness", self.sharpness, 1e-6, 8.0)
        _check_range("target_ess", self.target_ess, 1e-9, 1.0, optional=True)
        _check_range("gate", self.gate, 0.0, 1.0, optional=True)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"sadp option normalize must be True or False, got {self.normalize!r}")

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        order, weights, _ = self.plan_with_info(request)
        return order, weights

    def plan_with_info(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        require_scores(request, self)
        keep = request.keep_ratio
        common = {"backend": request.backend}
        if keep >= 1.0:
            order, weights = plan_epoch(request.scores, keep, request.seed, request.epoch, **common)
            return to_host(order), to_host(weights), {"smoothing": request.smoothing, "gated": False}
        scores, seen = request.scores, request.seen
        info: dict[str, Any] = {}
        if self.staleness or self.sharpness != 1.0 or self.gate is not None or self.target_ess is not None:
            scores = to_host(scores)
            seen = np.ones(scores.shape[0], np.uint32) if seen is None else to_host(seen)
            scores = stale_scores(scores, seen, request.last_epoch, request.epoch, self.staleness)
            scores = sharpened(scores, self.sharpness)
            ratio = score_ratio(scores, seen)
            info = {"score_ratio": ratio, "predicted_gain": 1.0 - 1.0 / ratio}
        if self.gate is not None and info["predicted_gain"] < self.gate:
            order, weights = plan_epoch(scores, keep, request.seed, request.epoch, uniform=True, **common)
            return to_host(order), to_host(weights), {**info, "smoothing": 1.0, "gated": True}
        smoothing = request.smoothing
        if self.target_ess is not None:
            size = request.sample_size
            smoothing = smoothing_for_ess(scores, seen, size, smoothing, self.target_ess, self.weight_power)
        order, weights = plan_epoch(scores, keep, request.seed, request.epoch, seen=seen, smoothing=smoothing, **common)
        order, weights = to_host(order), to_host(weights)
        capped = int(np.count_nonzero(weights <= np.float32(request.sample_size / request.num_examples)))
        info.update({"smoothing": smoothing, "gated": False, "capped_fraction": capped / request.num_examples})
        if self.weight_power != 1.0:
            weights = np.power(weights.astype(np.float64), self.weight_power).astype(np.float32)
        if self.normalize:
            weights = (weights / np.float32(weights.astype(np.float64).mean())).astype(np.float32)
        return order, weights, info
