"""Checks of a saved state before it is resumed, and what an elastic resume continues.

Every state this library saves (``SADPSampler``, the loaders built on it, ``compat.InfoBatch``) is
untrusted input when it comes back: it carries ``format_version`` (``STATE_FORMAT``) and the
``fingerprint`` of the data it was saved over (the score store's), and loading validates every
field's type and range before anything changes, raising ``ResumeStateError`` naming the state key,
its value and what was expected. A sampler state is refused when it belongs to other data (another
fingerprint or size), seed, method or plan setting: the resumed run would continue a different plan.
A state saved mid-epoch at another world size is accepted and resumed elastically
(``resumed_from``); one saved after an elastic resume must finish that epoch at that world size.

States saved before format versions were recorded are read as version 1 when every field validates
and nothing is left unchecked: one without ``plan_settings``, or without a ``fingerprint`` while the
sampler's store has one, is refused until the caller vouches for it with ``upgrade_state``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from numbers import Integral
from typing import Any, Protocol, runtime_checkable

from .distributed import per_rank, remaining_positions
from .kernels import sample_size
from .plan import PlanSettings
from .store import ScoreSnapshot
from .store.table import ScoreTable

#: The format of saved states this version writes and reads.
STATE_FORMAT = 1
#: Bounds of saved counters: epochs are stamped as int32 in the store; no data-parallel job has more ranks.
MAX_EPOCH, MAX_WORLD = 2**31 - 1, 1 << 20
#: Fields an unversioned (older) sampler state may lack, and what they meant then.
_LEGACY_DEFAULTS = {"num_replicas": 1, "resumed_from": None, "snapshot_version": None}


@runtime_checkable
class Stateful(Protocol):
    """An object whose progress a checkpoint saves and restores: every such class of sadp-data meets it.

    ``state_dict()`` returns a small dict (JSON-able, or numpy arrays where noted) that carries
    ``format_version`` and the data's ``fingerprint``; ``load_state_dict(state)`` validates every field
    before anything changes (``ResumeStateError`` naming the key) and then continues where the state
    was saved. The same two names as torch's and torchdata's ``Stateful``, so checkpointing code
    (torchdata's ``StatefulDataLoader``, Lightning, accelerate) saves these objects as it saves its own.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


class ResumableSampler(Protocol):
    """What resuming reads of a sampler (``SADPSampler`` meets it): the settings every plan of its run
    follows, its data-parallel world size and the score table it plans from."""

    plan_settings: PlanSettings
    num_replicas: int
    store: ScoreTable | None


class ResumeStateError(ValueError):
    """A saved state that cannot be resumed; the message names the state key, its value and what to do."""


def require_state(state: Any, what: str) -> Mapping[str, Any]:
    """``state`` if it is a dict, else ``ResumeStateError`` (``what`` names whose ``state_dict`` it should be)."""
    if not isinstance(state, Mapping):
        raise ResumeStateError(
            f"the state must be a dict (what {what}.state_dict() returns), got {type(state).__name__}"
        )
    return state


def _refuse(key: str, value: Any, expected: str) -> ResumeStateError:
    return ResumeStateError(f"saved {key} {value!r} (state key {key!r}) is invalid: expected {expected}")


def integer_field(
    state: Mapping[str, Any], key: str, minimum: int, maximum: int | None = None, *, optional: bool = False
) -> int | None:
    """``state[key]`` as an ``int`` in ``[minimum, maximum]`` (``None`` allowed when ``optional``), or refuse."""
    if key not in state:
        raise ResumeStateError(f"state {key!r} is missing: the state is incomplete (not from state_dict())")
    value = state[key]
    if optional and value is None:
        return None
    bound = f"an integer >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise _refuse(key, value, bound + (" or None" if optional else ""))
    if maximum is not None and value > maximum:
        raise _refuse(key, value, bound)
    return int(value)


def check_format(state: Mapping[str, Any], fingerprint: str | None, fix: str) -> bool:
    """Check ``format_version`` and ``fingerprint`` against this data's ``fingerprint``; ``True`` for an
    unversioned (older) state. ``fix`` says how to vouch for an older state that lacks a fingerprint."""
    version = state.get("format_version")
    legacy = "format_version" not in state
    if not legacy and (isinstance(version, bool) or version != STATE_FORMAT):
        raise _refuse(
            "format_version",
            version,
            f"format version {STATE_FORMAT} (this sadp-data reads no other): resume with the version that saved it",
        )
    if "fingerprint" not in state and (not legacy or fingerprint is not None):
        if not legacy:
            raise ResumeStateError("state 'fingerprint' is missing: the state is incomplete (not from state_dict())")
        raise ResumeStateError(
            f"the state has no 'fingerprint' (an older sadp-data saved it), so it cannot be checked against this "
            f"data's fingerprint {fingerprint!r}. If it was saved over this data, vouch for it: {fix}"
        )
    saved = state.get("fingerprint")
    if saved is not None and not isinstance(saved, str):
        raise _refuse("fingerprint", saved, "a string or None (the data's fingerprint)")
    if "fingerprint" in state and saved != fingerprint:
        raise ResumeStateError(
            f"the state was saved over data with fingerprint {saved!r}, but this data has fingerprint "
            f"{fingerprint!r}: it belongs to another dataset, and resuming it would skip or repeat examples. "
            "Resume with the data (and score store) the state was saved with"
        )
    return legacy


def sampler_fingerprint(sampler: ResumableSampler) -> str | None:
    """The fingerprint of the data a sampler plans over: its score store's (``None`` without one)."""
    return None if sampler.store is None else sampler.store.fingerprint


def upgrade_state(state: Mapping[str, Any], sampler: ResumableSampler) -> dict[str, Any]:
    """An older (unversioned) sampler state made current by vouching that ``sampler`` saved it.

    Fills only what the state lacks: ``format_version``, ``fingerprint`` (the sampler's store's),
    ``plan_settings`` (the sampler's) and, in an unversioned state, the fields older versions did not
    save (one rank, no snapshot version, no elastic resume: what their absence meant). The explicit
    opt-in for states saved before these were recorded: call it only when the saved run used this
    data and these settings, since nothing else can tell.
    """
    state = require_state(state, "SADPSampler")
    vouched = {"fingerprint": sampler_fingerprint(sampler), "plan_settings": sampler.plan_settings.to_state()}
    older = _LEGACY_DEFAULTS if "format_version" not in state else {}  # what an unversioned state's absence meant
    return {**older, **vouched, **state, "format_version": state.get("format_version", STATE_FORMAT)}


def _plan_settings(state: Mapping[str, Any], legacy: bool, current: PlanSettings) -> PlanSettings:
    """The settings the state was saved with, validated: ``num_examples``, ``seed``, ``method``, and a
    ``plan_settings`` dict holding exactly the settings this sadp-data records (``PlanSettings.state_keys``),
    each one a possible setting."""
    num_examples, seed = integer_field(state, "num_examples", 1), integer_field(state, "seed", 0)
    method = state.get("method")
    if not isinstance(method, str):
        raise _refuse("method", method, "a method name (a string such as 'sadp')")
    if "plan_settings" not in state:
        if not legacy:
            raise ResumeStateError("state 'plan_settings' is missing: the state is incomplete (not from state_dict())")
        raise ResumeStateError(
            "the state has no 'plan_settings' (an older sadp-data saved it), so nothing says which keep ratio, "
            "schedule or smoothing its epoch was planned with: this sampler (keep_ratio="
            f"{current.schedule.keep_ratio}, epochs={current.schedule.epochs}) could continue another plan. If the "
            "saved run used exactly this sampler's settings, vouch for it: sampler.load_state_dict(sadp_data."
            "resume.upgrade_state(state, sampler)); else build the sampler with the saved run's settings first"
        )
    saved = state["plan_settings"]
    if not isinstance(saved, Mapping):
        raise _refuse("plan_settings", saved, "a dict of plan settings (keep_ratio, epochs, ...)")
    expected = PlanSettings.state_keys()
    missing, unknown = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unknown:
        raise ResumeStateError(
            f"state 'plan_settings' lacks {missing} and has unknown {unknown}: expected exactly "
            f"{expected} (the settings this sadp-data records)"
        )
    try:
        return PlanSettings.from_state(num_examples, seed, method, saved)  # type: ignore[arg-type]
    except ValueError as error:
        raise _refuse("plan_settings", dict(saved), f"settings a sampler can have ({error})") from error


def check_state(sampler: ResumableSampler, state: Any) -> dict[str, Any]:
    """Validate ``state`` for ``sampler``: every field's type and range, the data's fingerprint, and that
    ``sampler`` continues its plan (the saved ``PlanSettings`` equal the sampler's). Returns the fields
    the sampler resumes from (``epoch``, ``position``, ``num_replicas``, ``snapshot_version``,
    ``resumed_from``); raises ``ResumeStateError`` naming the culprit."""
    state = require_state(state, "SADPSampler")
    legacy = check_format(state, sampler_fingerprint(sampler), "sadp_data.resume.upgrade_state(state, sampler)")
    if legacy:
        state = {**_LEGACY_DEFAULTS, **state}
    fields = {
        "epoch": integer_field(state, "epoch", 0, MAX_EPOCH),
        "position": integer_field(state, "position", 0),
        "num_replicas": integer_field(state, "num_replicas", 1, MAX_WORLD),
        "snapshot_version": integer_field(state, "snapshot_version", 0, optional=True),
        "resumed_from": _resumed_from(state),
    }
    current = sampler.plan_settings
    saved = _plan_settings(state, legacy, current)
    differences = {key: (theirs, mine) for key, theirs, mine in saved.differences(current)}
    if "num_examples" in differences:
        raise ResumeStateError(f"state is for {saved.num_examples} examples, this sampler has {current.num_examples}")
    if "seed" in differences or "method" in differences:
        raise ResumeStateError(
            f"state was saved with seed={saved.seed}, method={saved.method!r}; "
            f"this sampler has seed={current.seed}, method={current.method!r}"
        )
    if differences:
        name, (saved_value, value) = next(iter(differences.items()))
        raise ResumeStateError(
            f"state was saved by a sampler with {name}={saved_value!r}; this sampler has "
            f"{name}={value!r}, so it would continue a different plan. Build the sampler with "
            "the settings of the saved run"
        )
    _check_position(sampler, fields)
    return fields


def _resumed_from(state: Mapping[str, Any]) -> tuple[int, int] | None:
    """``state["resumed_from"]``: ``None`` or a pair (saved world size, delivered per rank), validated."""
    value = state.get("resumed_from", 0)
    if value is None:
        return None
    expected = f"a pair [world size in 1..{MAX_WORLD}, delivered per rank >= 0] or None"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _refuse("resumed_from", value, expected)
    world, delivered = value
    for number, low, high in ((world, 1, MAX_WORLD), (delivered, 0, None)):
        if isinstance(number, bool) or not isinstance(number, Integral) or number < low or (high and number > high):
            raise _refuse("resumed_from", list(value), expected)
    return int(world), int(delivered)


def _check_position(sampler: ResumableSampler, fields: dict[str, Any]) -> None:
    """Refuse a position (or an elastic resume's delivered count) outside the saved epoch's length."""
    position, saved_world, epoch = fields["position"], fields["num_replicas"], fields["epoch"]
    settings = sampler.plan_settings
    count = sample_size(settings.num_examples, settings.keep_ratio(epoch))
    if fields["resumed_from"] is not None:
        world, delivered = fields["resumed_from"]
        if delivered > per_rank(count, world):
            raise _refuse(
                "resumed_from",
                [world, delivered],
                f"at most {per_rank(count, world)} delivered per rank in epoch {epoch}",
            )
        count = remaining_positions(count, world, delivered).shape[0]
        if saved_world != sampler.num_replicas and position > 0:
            raise ResumeStateError(
                f"state was saved mid-epoch by an elastic resume at {saved_world} ranks; finish that epoch with "
                f"{saved_world} ranks (this sampler has {sampler.num_replicas}), then change the world size"
            )
    length = per_rank(count, saved_world)
    if position > length:
        raise ResumeStateError(f"state position {position} is outside [0, {length}], the length of epoch {epoch}")


def check_worker_state(
    state: Any, workers: int, batch_size: int, sampler: ResumableSampler
) -> tuple[int, list[int], int] | None:
    """Validate a DataLoader-worker loader's state (``ShardLoader.state_dict``) before it is resumed.

    Returns ``(epoch, worker positions, next worker)`` for a mid-epoch state, ``None`` for one at an
    epoch's start. Every worker position must be an integer within its part of the saved epoch, and a
    mid-epoch state must come from the same ``num_workers``, batch size and world size (the workers'
    parts and the batches' order depend on them). The sampler's own fields are checked when the
    sampler loads the state. Raises ``ResumeStateError`` naming the key.
    """
    state = require_state(state, "ShardLoader")
    positions = state.get("worker_positions")
    if positions is None:
        if integer_field(state, "position", 0):
            raise ResumeStateError(
                "state 'worker_positions' is missing but 'position' is not 0: a mid-epoch state of this loader "
                "records where each worker is; pass the loader's state_dict(), not the sampler's"
            )
        return None
    if not isinstance(positions, list | tuple) or not all(
        isinstance(p, Integral) and not isinstance(p, bool) and p >= 0 for p in positions
    ):
        raise _refuse("worker_positions", positions, "a list of integers >= 0, one per DataLoader worker")
    if not any(positions):
        return None
    for name, value in (("num_workers", workers), ("batch_size", batch_size), ("num_replicas", sampler.num_replicas)):
        if integer_field(state, name, 1) != value:
            raise ResumeStateError(
                f"state was saved mid-epoch with {name}={state[name]}; this loader has {value}: resume "
                "with the same DataLoader settings"
            )
    epoch = integer_field(state, "epoch", 0, MAX_EPOCH)
    next_worker = integer_field(state, "next_worker", 0, workers - 1)
    settings = sampler.plan_settings
    count = per_rank(sample_size(settings.num_examples, settings.keep_ratio(epoch)), sampler.num_replicas)
    base, extra = divmod(count, workers)  # the sizes of PlanSlice.worker_slice's parts
    sizes = [base + (worker < extra) for worker in range(workers)]
    if len(positions) != workers or any(p > size for p, size in zip(positions, sizes, strict=True)):
        raise _refuse("worker_positions", positions, f"{workers} positions within the parts' sizes {sizes}")
    return epoch, [int(p) for p in positions], next_worker  # type: ignore[return-value]


def find_snapshot(store: ScoreTable, saved: int, epoch: int) -> ScoreSnapshot | None:
    """The persisted snapshot of version ``saved`` that a resumed ``epoch`` was planned from, if the
    store's current scores are not that version already (then ``None``: the plan takes them).

    Without it (a crash before the snapshot reached disk, or the run went on past the checkpoint) the
    epoch is replanned from the current scores, with a ``RuntimeWarning`` saying so. A sharded store
    refuses regions restored from a stale copy (``PartitionedScoreStore.saved_snapshot``).
    """
    if store.version == saved:
        return None
    persisted = store.saved_snapshot(resuming=saved)
    if persisted is not None and persisted.version == saved:
        return persisted
    warnings.warn(
        f"resuming epoch {epoch}: the score snapshot (version {saved}) it was planned from is no longer in "
        f"{store.path} (the run went on past this checkpoint's epoch, or stopped before the snapshot reached disk), "
        "so the epoch is replanned from the current scores: the remaining order of this epoch will differ",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def resumed_from(fields: dict[str, Any], world: int) -> tuple[int, int] | None:
    """``(saved world size, delivered per rank)`` when resuming the validated ``fields`` at ``world``
    continues an epoch elastically (saved mid-epoch at another world size, or already an elastic
    resume), else ``None``."""
    if fields["resumed_from"] is not None:
        return fields["resumed_from"]
    if fields["num_replicas"] != world and fields["position"] > 0:
        return fields["num_replicas"], fields["position"]
    return None
