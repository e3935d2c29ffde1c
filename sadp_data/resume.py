"""Checks of a saved ``SADPSampler`` state before it is resumed, and what an elastic resume continues.

A state is refused (``ValueError`` naming the setting) when it belongs to another dataset size,
seed, method or plan setting: the resumed run would continue a different plan. A state saved
mid-epoch at another world size is accepted and resumed elastically (``resumed_from``); one saved
after an elastic resume must finish that epoch at the world size it resumed with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .distributed import per_rank
from .kernels import sample_size

if TYPE_CHECKING:
    from .sampler import SADPSampler


def check_state(sampler: SADPSampler, state: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the culprit when ``sampler`` cannot continue ``state``'s plan."""
    if state["num_examples"] != sampler.num_examples:
        raise ValueError(f"state is for {state['num_examples']} examples, this sampler has {sampler.num_examples}")
    if state["seed"] != sampler.seed or state["method"] != sampler.method:
        raise ValueError(
            f"state was saved with seed={state['seed']}, method={state['method']!r}; "
            f"this sampler has seed={sampler.seed}, method={sampler.method!r}"
        )
    settings = sampler._plan_settings()
    for name, saved_value in state.get("plan_settings", {}).items():
        if saved_value != settings.get(name):
            raise ValueError(
                f"state was saved by a sampler with {name}={saved_value!r}; this sampler has "
                f"{name}={settings.get(name)!r}, so it would continue a different plan. Build the sampler with "
                "the settings of the saved run"
            )
    position, saved_world = int(state["position"]), int(state.get("num_replicas", 1))
    count = sample_size(sampler.num_examples, sampler.keep_ratio(int(state["epoch"])))
    if state.get("resumed_from") is not None:
        from .distributed import remaining_positions

        count = remaining_positions(count, *(int(v) for v in state["resumed_from"])).shape[0]
        if saved_world != sampler.num_replicas and position > 0:
            raise ValueError(
                f"state was saved mid-epoch by an elastic resume at {saved_world} ranks; finish that epoch with "
                f"{saved_world} ranks (this sampler has {sampler.num_replicas}), then change the world size"
            )
    length = per_rank(count, saved_world)
    if not 0 <= position <= length:
        raise ValueError(f"state position {position} is outside [0, {length}], the length of epoch {state['epoch']}")


def resumed_from(state: dict[str, Any], world: int) -> tuple[int, int] | None:
    """``(saved world size, delivered per rank)`` when resuming ``state`` at ``world`` continues an epoch
    elastically (saved mid-epoch at another world size, or already an elastic resume), else ``None``."""
    if state.get("resumed_from") is not None:
        saved_world, delivered = state["resumed_from"]
        return int(saved_world), int(delivered)
    saved_world, position = int(state.get("num_replicas", 1)), int(state["position"])
    if saved_world != world and position > 0:
        return saved_world, position
    return None
