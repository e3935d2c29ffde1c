"""``epsilon_greedy``: mostly the highest-loss examples, a fraction at random (Raju et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import numpy as np

from .base import Method, PlanRequest, method_rng, score_arrays, shuffle, top_k, unseen_first


@dataclass(frozen=True)
class EpsilonGreedy(Method):
    """``round(ε·K)`` examples uniformly at random, the rest the highest-loss among those not drawn; weights 1.

    From Raju, Daruwalla & Lipasti, "Accelerating Deep Learning with Dynamic Data Pruning" (arXiv
    2111.12621): exploration (the random part) keeps every example's loss estimate fresh, exploitation
    (the greedy part) trains on the currently hardest examples. Never-scored examples rank first in
    the greedy part; ties at its cut are broken at random. The random part is drawn from all N
    examples, so the plan always contains the ``K − round(ε·K)`` highest-loss examples. The gradient
    is biased towards high-loss examples on purpose, as in the paper.

    Args:
        epsilon: the exploration fraction of K, in [0, 1] (default 0.1). 0 is greedy top-K by loss,
            1 is uniform random pruning.
    """

    epsilon: float = 0.1
    name: ClassVar[str] = "epsilon_greedy"
    score: ClassVar[str | None] = "loss"

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon, Real) or not math.isfinite(self.epsilon) or not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon_greedy option epsilon must be in [0, 1], got {self.epsilon!r}")

    def select(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        """``(explored, greedy)``: the random and the greedy picks (ascending int64, disjoint, K in all)."""
        scores, seen = score_arrays(request, self)
        rng = method_rng(self, request.seed, request.epoch)
        size = request.sample_size
        explored = np.sort(rng.choice(request.num_examples, math.floor(self.epsilon * size + 0.5), replace=False))
        available = np.ones(request.num_examples, dtype=bool)
        available[explored] = False
        rest = np.flatnonzero(available)
        greedy = rest[top_k(unseen_first(scores, seen)[rest], size - explored.shape[0], rng)]
        return explored.astype(np.int64), greedy

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        explored, greedy = self.select(request)
        return shuffle(np.sort(np.concatenate([explored, greedy])), request)
