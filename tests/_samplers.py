"""Test helper: the sampler with ``sadp``'s unbiased, constant-keep-ratio configuration.

Many tests pin the mechanics of a plan (exact lengths per epoch, Horvitz–Thompson weights, resume
order) that the default ``sadp`` settings (α = 0, decreasing schedule) would change; they build
their samplers through ``unbiased_sampler`` so those figures stay what they test.
"""

from __future__ import annotations

from typing import Any

from sadp_data import SADPSampler


def unbiased_sampler(*args: Any, **kwargs: Any) -> SADPSampler:
    """``SADPSampler(...)`` with ``schedule="constant"`` and, for ``sadp``, ``weight_power=1``."""
    kwargs.setdefault("schedule", "constant")
    if kwargs.get("method", "sadp") == "sadp":
        kwargs.setdefault("method_options", {"weight_power": 1.0})
    return SADPSampler(*args, **kwargs)
