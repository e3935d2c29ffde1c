"""The interface every data-pruning method implements, and the helpers they share.

A method plans one epoch: from a ``PlanRequest`` (score snapshot, seed, epoch, keep ratio) it returns
``(order, weights)``: ``order`` the int64 indices of exactly ``K = sample_size(N, keep_ratio)``
distinct examples in visiting order, ``weights`` the float32 loss weights of those examples. A plan
is a pure function of the request: every random choice comes from a generator seeded by
``(seed, epoch, method)`` (``method_rng``) or from the kernels' counter-based streams, so every
process that plans the same epoch from the same snapshot gets identical arrays.

The shared helpers keep methods comparable: ``shuffle`` puts every method's selection in the same
kind of per-epoch order, and at ``keep_ratio = 1`` (warm-up and anneal epochs) every method's plan is
identical to ``plan_epoch``'s full-data plan on the exact backends (all but ``torch``), so runs of
different methods differ only where they prune.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..kernels import get_backend, sample_size
from ..kernels.arrays import to_host
from ..kernels.reference import epoch_keys

#: Stands in for the epoch in a seed-only random stream (no run reaches this epoch), so a method's
#: seed-only stream never coincides with one of its per-epoch streams.
NO_EPOCH = 2**32 - 1


def _shape(array: Any) -> tuple[int, ...]:
    return tuple(array.shape) if hasattr(array, "shape") else np.shape(array)


@dataclass(frozen=True, eq=False)
class PlanRequest:
    """Everything a method may use to plan one epoch; validated on construction.

    Attributes:
        scores: float32[N] snapshot of the store's scores (``None`` when the sampler has no store).
        seen: uint32[N] times each example was scored (``None``: no store; with scores, all seen).
        num_examples: N.
        keep_ratio: in (0, 1]; the plan has exactly ``K = sample_size(num_examples, keep_ratio)`` examples.
        seed, epoch: non-negative; select the random streams.
        epochs: total epochs of the run (``None`` when open-ended).
        smoothing: λ of SADP, in [0, 1] (used by ``sadp`` and ``loss_proportional``).
        backend: kernel backend for ``plan_epoch`` and the shuffle (``"auto"``, ``"numpy"``, ...).
        last_epoch: int32[N] epoch of each example's latest score (-1: never; ``None``: unknown).

    Equality is identity (the fields hold arrays).
    """

    scores: np.ndarray | None
    seen: np.ndarray | None
    num_examples: int
    keep_ratio: float
    seed: int
    epoch: int
    epochs: int | None
    smoothing: float
    backend: str
    last_epoch: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_examples, int | np.integer) or self.num_examples <= 0:
            raise ValueError(f"num_examples must be a positive integer, got {self.num_examples!r}")
        sample_size(self.num_examples, self.keep_ratio)  # raises for a keep_ratio outside (0, 1]
        if self.seed < 0 or self.epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={self.seed}, epoch={self.epoch}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive or None, got {self.epochs}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {self.smoothing}")
        for label, array in (("scores", self.scores), ("seen", self.seen), ("last_epoch", self.last_epoch)):
            if array is not None and _shape(array) != (self.num_examples,):
                raise ValueError(f"{label} must have shape ({self.num_examples},), got {_shape(array)}")

    @property
    def sample_size(self) -> int:
        """K: the exact number of examples the plan contains."""
        return sample_size(self.num_examples, self.keep_ratio)


class Method(ABC):
    """A data-pruning method: plans each epoch's examples and their loss weights.

    Subclasses are frozen dataclasses whose fields are the method's options, so ``repr`` shows them
    and two methods with equal options compare equal.
    """

    #: Registry key, e.g. ``"infobatch"``.
    name: ClassVar[str]
    #: What the scorer must record in the store for this method: ``"spike_aware"``, ``"loss"``, or
    #: ``None`` (the method does not read scores).
    score: ClassVar[str | None]
    #: The keep-ratio schedule shape ``SADPSampler`` uses for this method unless told otherwise
    #: (``schedule=None``): ``"constant"`` for the baselines, as they were published.
    default_schedule: ClassVar[str] = "constant"

    @abstractmethod
    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        """``(order, weights)``: int64[K] distinct indices in visiting order and float32[K] loss weights.

        A pure function of ``request`` (and the method's options).
        """

    def plan_with_info(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``plan(request)`` plus what the method decided on the way (for ``SADPSampler.stats``).

        The dict holds JSON-able numbers (e.g. the smoothing SADP used); the default is empty.
        """
        order, weights = self.plan(request)
        return order, weights, {}


def method_rng(method: Method, seed: int, epoch: int | None) -> np.random.Generator:
    """The generator of ``method``'s random choices: ``SeedSequence([seed, epoch, crc32(method.name)])``.

    ``epoch=None`` gives the method's seed-only stream (``NO_EPOCH`` in the epoch's place). The
    stream constant is never 0, so no stream coincides with ``plan_epoch``'s ``SeedSequence([seed, epoch])``
    (numpy pads short entropy with zeros).
    """
    stream = zlib.crc32(method.name.encode()) or 1
    return np.random.default_rng(np.random.SeedSequence([seed, NO_EPOCH if epoch is None else epoch, stream]))


def shuffle(
    indices: np.ndarray, request: PlanRequest, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The selected ``indices`` (and their ``weights``, default 1) in the epoch's visiting order.

    The permutation is the kernels' keyed shuffle (``reference.shuffle_permutation``) under the key
    ``plan_epoch`` uses for its own shuffle (``EpochKeys.shuffle``), so ``shuffle(arange(N))`` is
    exactly the full-data order of ``plan_epoch`` on every exact backend. It runs on the request's
    backend when that one is exact with numpy results (``numpy``, ``numba``), else on the fastest
    such backend (for ``cuda``: the same permutation without a device round trip; for ``torch``:
    the reference's permutation, not torch's own key-sort order).
    """
    kernels = get_backend(request.backend)
    if not (kernels.exact and kernels.arrays == "numpy"):
        kernels = get_backend("auto")
    indices = np.asarray(indices, dtype=np.int64)
    weights = np.ones(indices.shape[0], np.float32) if weights is None else np.asarray(weights, np.float32)
    permutation = kernels.shuffle_permutation(indices.shape[0], epoch_keys(request.seed, request.epoch).shuffle)
    return indices[permutation], weights[permutation]


def top_k(keys: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` largest ``keys`` (ascending int64), ties at the cut broken uniformly at random.

    O(N) (a partition, not a sort). ``rng`` is consumed only when there is a tie at the cut, so a
    selection without ties is fully deterministic. ``+inf`` keys rank first.
    """
    keys = np.asarray(keys)
    count = keys.shape[0]
    if not 0 <= k <= count:
        raise ValueError(f"k must be in [0, {count}], got {k}")
    if k == count:
        return np.arange(count, dtype=np.int64)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    cut = np.partition(keys, count - k)[count - k]
    above = np.flatnonzero(keys > cut)
    tied = np.flatnonzero(keys == cut)
    chosen = rng.choice(tied, k - above.shape[0], replace=False)
    return np.sort(np.concatenate([above, chosen])).astype(np.int64)


def require_scores(request: PlanRequest, method: Method) -> None:
    """Raise ``ValueError`` naming ``method`` and the score it needs when the request carries no scores."""
    if request.scores is None:
        raise ValueError(
            f"method {method.name!r} needs the {method.score!r} score of every example: "
            "pass a ScoreStore (PlanRequest.scores is None)"
        )


def score_arrays(request: PlanRequest, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, seen)`` of the request as host float64[N] and uint64[N] arrays.

    ``seen`` is all ones when the request has scores but no counts. Raises ``ValueError`` naming the
    method when the request carries no scores (``require_scores``), or when a score is not finite.
    """
    require_scores(request, method)
    scores = to_host(request.scores).astype(np.float64)
    if not np.isfinite(scores).all():
        position = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"score {scores[position]} at position {position} is not finite (method {method.name!r})")
    if request.seen is None:
        return scores, np.ones(request.num_examples, dtype=np.uint64)
    return scores, to_host(request.seen).astype(np.uint64)


def unseen_first(keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``keys`` with never-scored examples (``seen == 0``) set to ``+inf``, so rankings take them first."""
    return np.where(seen > 0, keys, np.inf)
