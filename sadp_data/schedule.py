"""Keep-ratio schedules: which fraction of the data each epoch trains on.

An epoch is in one of three phases. *Warm-up* epochs (the first ``warmup_epochs``) use all data so
every example gets a score. *Anneal* epochs (the last ``round(anneal_fraction * epochs)``, as in
InfoBatch, and at least one) use all data again, so the final model sees the full distribution. A
short run whose fraction rounds to zero epochs (3 epochs at the default 0.125) still gets one anneal
epoch; only a run with no room for it ends on a pruned epoch: ``anneal_fraction=0``, or fewer than
``warmup_epochs + 2`` epochs (one more full-data epoch would leave nothing to prune). The *pruning*
phase in between uses ``keep_ratio`` according to ``shape``:

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
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .kernels import sample_size

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
        """Number of full-data epochs at the end of the run.

        ``round(anneal_fraction · epochs)``, raised to 1 when that rounds to 0 but the fraction is
        positive and the run has room for one (``epochs >= warmup_epochs + 2``), so short runs end on
        full data too; 0 for open-ended runs.
        """
        if self.epochs is None:
            return 0
        count = math.floor(self.anneal_fraction * self.epochs + 0.5)
        if count == 0 and self.anneal_fraction > 0 and self.epochs >= self.warmup_epochs + 2:
            return 1
        return count

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

    def warn_if_never_pruned(self, stacklevel: int = 2) -> None:
        """``RuntimeWarning`` when a run of ``epochs`` with ``keep_ratio < 1`` prunes no epoch (the warm-up
        and the anneal tail cover it all, so the keep ratio is never used); ``stacklevel`` as ``warnings.warn``'s."""
        if self.epochs is None or self.keep_ratio >= 1.0 or any(self.phase(e) == "prune" for e in range(self.epochs)):
            return
        warnings.warn(
            f"no epoch of this run prunes: warmup_epochs={self.warmup_epochs} and the anneal tail "
            f"({self.anneal_epochs} epochs) cover all {self.epochs} epochs, so keep_ratio={self.keep_ratio} "
            "is never used",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )

    def theoretical_speedup(self, epochs: int | None = None) -> float:
        """``epochs / Σ_e keep_ratio(e)``: the speedup if time is proportional to examples seen."""
        total = self.epochs if epochs is None else epochs
        if total is None:
            raise ValueError("theoretical_speedup needs the number of epochs")
        return total / sum(self(e) for e in range(total))

    def budget(self, num_examples: int) -> RunBudget:
        """Every epoch's phase, keep ratio and example count over ``num_examples``, with the run's cost.

        Example counts are the sampler's exact draw sizes (``round(keep_ratio · N)``, all ranks
        together); the theoretical speedup is ``theoretical_speedup()``, from the unrounded ratios.
        """
        if self.epochs is None:
            raise ValueError("a run's budget needs epochs set")
        rows = tuple(
            EpochBudget(e, self.phase(e), self(e), sample_size(num_examples, self(e))) for e in range(self.epochs)
        )
        return RunBudget(self, num_examples, rows, self.theoretical_speedup())


@dataclass(frozen=True)
class EpochBudget:
    """One epoch of a run's budget: its phase, keep ratio and the examples it draws."""

    epoch: int
    phase: Literal["warmup", "prune", "anneal"]
    keep_ratio: float
    examples: int


@dataclass(frozen=True)
class RunBudget:
    """A run's keep ratio per epoch, its total cost and theoretical speedup (``KeepRatioSchedule.budget``).

    ``str()`` gives the table ``SADPSampler.plan_summary`` prints; ``to_dict()`` the same as plain data.
    """

    schedule: KeepRatioSchedule
    num_examples: int
    epochs: tuple[EpochBudget, ...]
    theoretical_speedup: float

    @property
    def examples(self) -> int:
        """Examples drawn over the whole run."""
        return sum(row.examples for row in self.epochs)

    @property
    def cost(self) -> float:
        """``examples`` as a fraction of a full-data run of the same epochs."""
        return self.examples / (self.num_examples * len(self.epochs))

    @property
    def ends_on_full_data(self) -> bool:
        return self.epochs[-1].keep_ratio == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "epochs": [asdict(row) for row in self.epochs],
            "examples": self.examples,
            "cost": self.cost,
            "theoretical_speedup": self.theoretical_speedup,
            "ends_on_full_data": self.ends_on_full_data,
        }

    def __str__(self) -> str:
        s = self.schedule
        lines = [
            f"{len(self.epochs)} epochs over {self.num_examples:,} examples: keep_ratio {s.keep_ratio}, "
            f"{s.shape} schedule, {s.warmup_epochs} warm-up and {s.anneal_epochs} anneal epochs",
            f"{'epoch':>5}  {'phase':<6}  {'keep':>5}  {'examples':>10}",
            *(f"{r.epoch:>5}  {r.phase:<6}  {r.keep_ratio:>5.2f}  {r.examples:>10,}" for r in self.epochs),
            f"total: {self.examples:,} examples ({self.cost:.2f} of full data's "
            f"{self.num_examples * len(self.epochs):,}), theoretical speedup {self.theoretical_speedup:.2f}",
        ]
        if not self.ends_on_full_data:
            reason = "anneal_fraction=0" if s.anneal_fraction == 0 else "fewer than warmup_epochs + 2 epochs"
            lines.append(f"note: the run ends on a pruned epoch ({reason}: no room for a full-data anneal epoch)")
        return "\n".join(lines)
