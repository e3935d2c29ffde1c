"""``infobatch``: prune well-learned examples at random and rescale the rest (Qin et al., ICLR 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, PlanRequest, method_rng, score_arrays, shuffle, top_k


@dataclass(frozen=True)
class InfoBatchBaseline(Method):
    """The ``infobatch`` baseline method: InfoBatch (Qin et al., "InfoBatch: Lossless Training Speed Up
    by Unbiased Dynamic Data Pruning", ICLR 2024, arXiv 2303.04947) adapted to an exact plan size K.

    The well-learned set W holds the scored examples whose loss is below the mean loss of the scored
    examples. Exactly ``N − K`` examples are pruned, drawn uniformly without replacement from W, so
    each member of W is pruned with probability exactly ``r = (N − K)/|W|``; the kept members of W get
    weight ``1/(1 − r)``, every other kept example weight 1. Given the scores, the expected weighted
    loss summed over the epoch then equals the full-data sum: ``E[Σ_kept w_i ℓ_i] = Σ_i ℓ_i``. As in
    InfoBatch, this keeps the *total* update of an epoch, so the mean weight exceeds 1 (about N/K)
    and each step's loss is larger than a full-data step's, unlike ``sadp`` whose weights keep each
    step's *mean* loss unbiased.

    Differences from the paper, which prunes each member of W independently with a fixed probability
    r (so the epoch length varies): here r follows from the keep ratio, epoch by epoch. When W is too
    small (``|W| ≤ N − K``) all of W is pruned and then the lowest-loss remaining scored examples
    (ties at random), with no rescaling: that epoch's estimate is biased towards hard examples.
    Never-scored examples (``seen == 0``) are never pruned while scored ones remain; only if fewer
    than ``N − K`` examples have been scored is the remainder pruned uniformly among the unscored.
    Annealing (the paper trains its last 12.5 % of epochs on full data) is the sampler's keep-ratio
    schedule: epochs at keep ratio 1.0 prune nothing and weight everything 1.

    Not to be confused with ``sadp_data.adapters.infobatch.InfoBatch``, the drop-in for InfoBatch's own API.
    """

    name: ClassVar[str] = "infobatch"
    score: ClassVar[str | None] = "loss"

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        scores, seen = score_arrays(request, self)
        rng = method_rng(self, request.seed, request.epoch)
        prune = request.num_examples - request.sample_size
        scored = seen > 0
        well_learned = scored & (scores < scores[scored].mean()) if scored.any() else np.zeros_like(scored)
        candidates = np.flatnonzero(well_learned)
        weights = np.ones(request.num_examples, dtype=np.float32)
        if candidates.shape[0] > prune:
            pruned = rng.choice(candidates, prune, replace=False)
            weights[candidates] = candidates.shape[0] / (candidates.shape[0] - prune)
        else:
            pruned = np.concatenate([candidates, self._beyond_well_learned(scores, scored, well_learned, prune, rng)])
        kept = np.ones(request.num_examples, dtype=bool)
        kept[pruned] = False
        selected = np.flatnonzero(kept)
        return shuffle(selected, request, weights[selected])

    @staticmethod
    def _beyond_well_learned(
        scores: np.ndarray, scored: np.ndarray, well_learned: np.ndarray, prune: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The ``prune − |W|`` examples pruned after all of W: lowest-loss scored ones, then random unscored."""
        missing = prune - int(np.count_nonzero(well_learned))
        others = np.flatnonzero(scored & ~well_learned)
        lowest = others[top_k(-scores[others], min(missing, others.shape[0]), rng)]
        unscored = np.flatnonzero(~scored)
        return np.concatenate([lowest, rng.choice(unscored, missing - lowest.shape[0], replace=False)])


#: The baseline's former name, kept importable (``sadp_data.InfoBatch`` is the drop-in, ``compat.InfoBatch``).
InfoBatch = InfoBatchBaseline
