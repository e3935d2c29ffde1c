"""``random_static``: one random subset for the whole run (static random pruning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, PlanRequest, method_rng, shuffle


@dataclass(frozen=True)
class RandomStatic(Method):
    """A uniform random subset of K examples chosen from the seed alone, visited in a per-epoch shuffle.

    The subset is the first K entries of one seed-only permutation, so the subsets of one seed are
    nested: the subset for a smaller keep ratio is contained in the subset for a larger one (a
    schedule that changes the keep ratio shrinks or grows one subset instead of jumping between
    unrelated ones). Weights are 1. Trade-off: the subset is a uniform sample, so its loss is an
    unbiased estimate of the full-data loss only over the draw of the seed; within a run the same
    examples are trained on every epoch and the others never.
    """

    name: ClassVar[str] = "random_static"
    score: ClassVar[str | None] = None

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        permutation = method_rng(self, request.seed, None).permutation(request.num_examples)
        return shuffle(np.sort(permutation[: request.sample_size]), request)
