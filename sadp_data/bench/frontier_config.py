"""What the frontier study trains: its parts (a dataset, an SNN, methods, keep ratios, seeds), the
SADP ablation variants and the contested cells that get more seeds (``docs/method.md`` §5).

Parts (``FrontierConfig.default``):

* ``fashion-mnist/mlp``: all 60,000 training and 10,000 test images, an MLP SNN (784–256–10, T=4);
  every method at keep ratios 0.3, 0.5, 0.7 on seeds 0–4, the SADP ablation at 0.5 on seeds 0–2, and
  the contested cells (``ContestedCells``: SADP, ε-greedy and full data at 0.5 and 0.7, where the
  paired differences are about 0.1 pt and their spread across seeds 0.15 pt) on seeds 5–9 too, so
  those differences rest on 10 paired seeds;
* ``fashion-mnist/conv``: the conv SNN (8 and 16 channels) on a 6,000-image subset, all 10,000 test
  images, SADP, random and the two strongest baselines (InfoBatch, ε-greedy) at 0.5;
* ``nmnist/conv``: the N-MNIST subset pooled with its test recordings (1,100) in 5 folds, one fold
  per seed, so every recording is tested once (1,100 test points instead of 100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sadp_data.bench.frontier_summary import ALL_METHODS
from sadp_data.bench.harness import RunSpec
from sadp_data.bench.training_data import DemoConfig

__all__ = ["ContestedCells", "FrontierConfig", "Part", "Variant", "events_config"]


@dataclass(frozen=True)
class Variant:
    """An ablation run: ``method`` with ``options`` (and ``SADPSampler`` settings ``sampler_options``) at
    ``keep_ratio``, labelled ``label``; ``score`` names the ``SpikeAwareScorer`` variant that feeds its
    store (``None``: the method's own)."""

    label: str
    keep_ratio: float
    options: tuple[tuple[str, Any], ...]
    method: str = "sadp"
    sampler_options: tuple[tuple[str, Any], ...] = ()
    score: str | None = None


@dataclass(frozen=True)
class ContestedCells:
    """More paired seeds for the cells a target turns on: full data and ``methods`` at ``keep_ratios``,
    trained on ``seeds`` beyond the part's own (which run the whole grid).

    Fixed before the study runs, not chosen from its results: a paired difference whose 5-seed
    interval is wider than the effect it has to resolve gets the seeds it needs, while the cells
    that 5 seeds settle do not pay for them.
    """

    methods: tuple[str, ...]
    keep_ratios: tuple[float, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Part:
    """One block of the study: a dataset and model (``config``), the methods, keep ratios and seeds.

    Every seed of ``seeds`` (the grid's) trains full data and every (method, keep ratio); the
    ablation ``variants`` run on the first ``variant_seed_count`` of them (all when ``None``);
    ``contested`` adds seeds on which only its cells train.
    """

    name: str
    config: DemoConfig
    methods: tuple[str, ...]
    keep_ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...] = ()
    probe_every: int = 0
    probe_size: int = 256
    variant_seed_count: int | None = None
    contested: ContestedCells | None = None

    def __post_init__(self) -> None:
        if self.variant_seed_count is not None and not 1 <= self.variant_seed_count <= len(self.seeds):
            raise ValueError(
                f"part {self.name!r}: variant_seed_count must be 1..{len(self.seeds)}, got {self.variant_seed_count}"
            )
        if self.contested is not None:
            outside = [m for m in self.contested.methods if m not in self.methods] + [
                k for k in self.contested.keep_ratios if k not in self.keep_ratios
            ]
            if outside:
                raise ValueError(f"part {self.name!r}: contested cells {outside} are not in its grid")

    @property
    def variant_seeds(self) -> tuple[int, ...]:
        """The grid's seeds that train the ablation variants too."""
        return self.seeds[: self.variant_seed_count]

    @property
    def extra_seeds(self) -> tuple[int, ...]:
        """The contested cells' seeds that are not the grid's: they train only those cells."""
        return () if self.contested is None else tuple(s for s in self.contested.seeds if s not in self.seeds)

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """``seeds``, then ``extra_seeds``."""
        return self.seeds + self.extra_seeds

    def specs(self, seed: int) -> list[tuple[RunSpec, str]]:
        """``(RunSpec, variant label)`` of every run of ``seed``; ``full`` first."""
        from sadp_data.methods import METHODS

        if seed not in self.all_seeds:
            raise ValueError(f"part {self.name!r} has no seed {seed}; its seeds are {self.all_seeds}")
        grid = seed in self.seeds
        methods, keeps = (
            (self.methods, self.keep_ratios) if grid else (self.contested.methods, self.contested.keep_ratios)
        )
        runs = [(RunSpec("full", "full", 1.0), "full")]
        for method in methods:
            for keep in keeps:
                runs.append((RunSpec(f"{method}@{keep:g}", method, keep, METHODS[method].score), method))
        for variant in self.variants if seed in self.variant_seeds else ():
            score = variant.score or METHODS[variant.method].score
            name = f"{variant.label}@{variant.keep_ratio:g}"
            spec = RunSpec(name, variant.method, variant.keep_ratio, score, variant.options, variant.sampler_options)
            runs.append((spec, variant.label))
        return runs


def _ablation(keep: float) -> tuple[Variant, ...]:
    """One lever changed at a time from the default ``sadp`` (α = 0, decreasing schedule; ``docs/method.md``),
    and the best baseline given SADP's schedule, so a win can be traced to the score or to the schedule."""
    decreasing = (("schedule", "decreasing"),)
    return (
        Variant("sadp α=1 (Horvitz–Thompson)", keep, (("weight_power", 1.0),)),
        Variant("sadp α=0.5, normalised", keep, (("weight_power", 0.5), ("normalize", True))),
        Variant("sadp constant schedule", keep, (), sampler_options=(("schedule", "constant"),)),
        Variant("sadp staleness 0.2", keep, (("staleness", 0.2),)),
        Variant("sadp α=0.5, target ESS 0.8", keep, (("weight_power", 0.5), ("target_ess", 0.8))),
        Variant("sadp gate 0.25", keep, (("gate", 0.25),)),
        Variant("sadp levers, loss score", keep, (("weight_power", 0.0),), "loss_proportional", decreasing),
        Variant("epsilon_greedy, decreasing schedule", keep, (), "epsilon_greedy", decreasing),
    )


def events_config(
    train_size: int, test_size: int, epochs: int, time_steps: int, channels: tuple[int, int], batch_size: int = 32
) -> DemoConfig:
    """An N-MNIST part's settings: the pooled recordings in 5 folds (fold = seed), every test recording
    evaluated after every epoch."""
    return DemoConfig(
        train_size=train_size,
        test_size=test_size,
        eval_size=test_size,
        epochs=epochs,
        batch_size=batch_size,
        time_steps=time_steps,
        channels=channels,
        dataset="nmnist",
        folds=5,
    )


@dataclass
class FrontierConfig:
    """What the frontier bench runs (``default()``: the study, about 110 min on 2 CPU cores)."""

    parts: tuple[Part, ...] = field(default_factory=tuple)
    workers: int = 2

    @classmethod
    def default(cls, nmnist: bool = True) -> FrontierConfig:
        seeds = (0, 1, 2, 3, 4)
        mlp = DemoConfig(
            train_size=60000, test_size=10000, eval_size=10000, epochs=14, model="mlp", hidden=(256,), time_steps=4
        )
        conv = DemoConfig(train_size=6000, test_size=10000, eval_size=2000, epochs=12, channels=(8, 16))
        events = events_config(1100, 1100, epochs=12, time_steps=8, channels=(8, 16))
        strongest = ("sadp", "random", "infobatch", "epsilon_greedy")
        contested = ContestedCells(("sadp", "epsilon_greedy"), (0.5, 0.7), (5, 6, 7, 8, 9))
        parts = [
            Part(
                "fashion-mnist/mlp",
                mlp,
                ALL_METHODS,
                (0.3, 0.5, 0.7),
                seeds,
                _ablation(0.5),
                probe_every=3,
                variant_seed_count=3,
                contested=contested,
            ),
            Part("fashion-mnist/conv", conv, strongest, (0.5,), seeds, probe_every=4, probe_size=128),
        ]
        if nmnist:
            parts.append(Part("nmnist/conv", events, strongest, (0.5,), seeds))
        return cls(tuple(parts))

    @classmethod
    def quick(cls, nmnist: bool = True) -> FrontierConfig:
        """Two seeds of the grid (the ablation on one) and one contested seed on tiny subsets (a few minutes):
        a smoke test of the whole pipeline."""
        mlp = DemoConfig(train_size=1024, test_size=500, eval_size=500, epochs=4, model="mlp", hidden=(64,))
        events = events_config(160, 40, epochs=3, time_steps=4, channels=(4, 8))
        parts = [
            Part(
                "fashion-mnist/mlp",
                mlp,
                ("random", "sadp", "infobatch", "epsilon_greedy"),
                (0.5,),
                (0, 1),
                _ablation(0.5)[:1],
                probe_every=2,
                probe_size=32,
                variant_seed_count=1,
                contested=ContestedCells(("sadp", "epsilon_greedy"), (0.5,), (2,)),
            )
        ]
        if nmnist:
            parts.append(Part("nmnist/conv", events, ("sadp", "random"), (0.5,), (0, 1)))
        return cls(tuple(parts), workers=2)
