"""``loss_proportional``: importance sampling proportional to the loss (Katharopoulos & Fleuret)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .sadp import SADP


@dataclass(frozen=True)
class LossProportional(SADP):
    """SADP's sampler driven by the per-example loss instead of the spike-aware score.

    Katharopoulos & Fleuret, "Biased Importance Sampling for Deep Neural Network Training" (arXiv
    1706.00043), sample examples proportionally to their loss; here the draw is SADP's: exactly K
    distinct examples, ``π_i ∝ (1 − λ)·ℓ_i/mean(ℓ) + λ`` capped at 1, weights ``K / (N π_i)``, so the
    weighted mean loss over the plan is an unbiased estimate of the full-data mean loss.
    """

    name: ClassVar[str] = "loss_proportional"
    score: ClassVar[str | None] = "loss"
