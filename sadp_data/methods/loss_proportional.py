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

    As published, the baseline is unbiased and prunes at a constant keep ratio: its defaults are
    ``weight_power=1`` and the ``constant`` schedule, whatever ``sadp``'s defaults are. Every SADP
    lever is available as an option (``method_options``), so ``loss_proportional`` with ``sadp``'s
    options isolates the effect of the score.
    """

    weight_power: float = 1.0

    name: ClassVar[str] = "loss_proportional"
    score: ClassVar[str | None] = "loss"
    default_schedule: ClassVar[str] = "constant"
