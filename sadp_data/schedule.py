"""Keep-ratio schedules: which fraction of the data each epoch trains on.

An epoch is in one of three phases. *Warm-up* epochs (the first ``warmup_epochs``) use all data so
every example gets a score. *Anneal* epochs (the last ``round(anneal_fraction * epochs)``, as in
InfoBatch) use all data again, so the final model sees the full distribution. The *pruning* phase in
between uses ``keep_ratio`` according to ``shape``:

* ``constant``: ``keep_ratio`` throughout;
* ``linear``: from 1 down to ``keep_ratio`` in equal steps, reaching it on the phase's last epoch;
* ``cosine``: the same ramp along a half cosine (prunes gently first, then faster);
* ``decreasing``: the same budget as ``constant`` (the pruning phase's mean keep ratio is
  ``keep_ratio``), spent early: a straight line from ``keep_ratio + Δ`` on the phase's first epoch
  to ``keep_ratio − Δ`` on its last, ``Δ = min(1 − keep_ratio, keep_ratio / 2)``. Early epochs,
  when most examples still carry gradient, see more data; late ones, when scores concentrate on
  few examples, see less. Sizes are rounded per epoch, so the total matches ``constant`` to within
  one example per epoch.

Every function here is pure: the ratio of an epoch depends only on the arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Shape = Literal["constant", "linear", "cosine", "decreasing"]
SHAPES = ("constant", "linear", "cosine", "decreasing")


@dataclass(frozen=True)
class KeepRatioSchedule:
    """The keep ratio of every epoch of a run; ``epochs=None`` means open-ended (no anneal tail)."""

    keep_ratio: float
    epochs: int | None = None
    warmup_epochs: int = 1
    anneal_fraction: float = 0.125
    shape: Shape = "constant"

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.anneal_fraction < 1.0:
            raise ValueError(f"anneal_fraction must be in [0, 1), got {self.anneal_fraction}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(map(repr, SHAPES))}, got {self.shape!r}")

    @property
    def anneal_epochs(self) -> int:
        """Number of full-data epochs at the end of the run."""
        if self.epochs is None:
            return 0
        return math.floor(self.anneal_fraction * self.epochs + 0.5)

    def phase(self, epoch: int) -> Literal["warmup", "prune", "anneal"]:
        """Which phase ``epoch`` (0-based) is in."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self.warmup_epochs:
            return "warmup"
        if self.epochs is not None and epoch >= self.epochs - self.anneal_epochs:
            return "anneal"
        return "prune"

    def __call__(self, epoch: int) -> float:
        """Keep ratio of ``epoch``: 1.0 outside the pruning phase."""
        if self.phase(epoch) != "prune":
            return 1.0
        if self.shape == "constant" or self.epochs is None:
            return self.keep_ratio
        length = self.epochs - self.anneal_epochs - self.warmup_epochs
        if self.shape == "decreasing":
            delta = min(1.0 - self.keep_ratio, self.keep_ratio / 2)
            position = 0.5 if length == 1 else (epoch - self.warmup_epochs) / (length - 1)
            return self.keep_ratio + delta * (1.0 - 2.0 * position)
        progress = (epoch - self.warmup_epochs + 1) / length
        if self.shape == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return 1.0 - (1.0 - self.keep_ratio) * progress

    def theoretical_speedup(self, epochs: int | None = None) -> float:
        """``epochs / Σ_e keep_ratio(e)``: the speedup if time is proportional to examples seen."""
        total = self.epochs if epochs is None else epochs
        if total is None:
            raise ValueError("theoretical_speedup needs the number of epochs")
        return total / sum(self(e) for e in range(total))
