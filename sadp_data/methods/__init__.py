"""Data-pruning methods: SADP and the baselines it is compared with, behind one small interface.

Each method lives in its own module and implements ``Method.plan(PlanRequest) -> (order, weights)``
(see ``base``). ``get_method(name, **options)`` builds one from its registry name:

=====================  =========================================================  ==============
name                   what each epoch trains on                                  score needed
=====================  =========================================================  ==============
``full``               every example                                              —
``random_static``      one random subset, fixed for the run                       —
``random``             a fresh uniform random subset                              —
``sadp``               importance sample ∝ spike-aware score, unweighted          ``spike_aware``
``loss_proportional``  importance sample ∝ loss, unbiased weights                 ``loss``
``infobatch``          random pruning of below-mean-loss examples, rescaled       ``loss``
``ucb``                top-K by an upper confidence bound on the loss             ``loss``
``epsilon_greedy``     top-loss examples plus a random fraction ε                 ``loss``
=====================  =========================================================  ==============

``sadp`` trains on its draw unweighted by default; ``weight_power=1`` gives Horvitz–Thompson weights
(unbiased). ``docs/baselines.md`` gives each method's source and whether its gradient estimate is unbiased.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Method, PlanRequest
from .epsilon_greedy import EpsilonGreedy
from .full import Full
from .infobatch import InfoBatch, InfoBatchBaseline
from .loss_proportional import LossProportional
from .random_dynamic import RandomDynamic
from .random_static import RandomStatic
from .sadp import SADP
from .ucb import UCB

#: Method classes by registry name.
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Full, RandomStatic, RandomDynamic, SADP, LossProportional, InfoBatchBaseline, UCB, EpsilonGreedy)
}


def get_method(name: str, **options: Any) -> Method:
    """The method registered as ``name``, built with ``options`` (e.g. ``get_method("ucb", c=0.5)``).

    Raises ``ValueError`` for an unknown name (listing the valid ones), for an option the method does
    not take (listing the ones it does), and for an invalid option value.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ValueError(f"method {name!r} does not take option(s) {', '.join(unknown)}; it takes: {takes}")
    return cls(**options)


__all__ = [
    "METHODS",
    "SADP",
    "UCB",
    "EpsilonGreedy",
    "Full",
    "InfoBatch",
    "InfoBatchBaseline",
    "LossProportional",
    "Method",
    "PlanRequest",
    "RandomDynamic",
    "RandomStatic",
    "get_method",
]
