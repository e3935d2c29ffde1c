"""sadp-data: spike-aware data pruning for spiking neural networks.

Wrap a DataLoader with an importance sampler, score examples with a forward hook, and train on the
examples that matter. By default each epoch keeps a fraction of the data on a keep-ratio schedule,
drawn with probability rising with the spike-aware score, and trains on it unweighted;
Horvitz–Thompson weights (an unbiased gradient, at a variance cost) are opt-in with
``method_options={"weight_power": 1.0}``::

    store = sd.ScoreStore.create("scores.zarr", num_examples=len(train_set))
    sampler = sd.SADPSampler(store, keep_ratio=0.7, epochs=E)
    loader = sd.wrap(DataLoader(train_set, batch_size=B), sampler)
    scorer = sd.SpikeAwareScorer(model, store)

Also here: ``open_store`` (a store for a data-parallel run), ``InfoBatch`` (a drop-in for InfoBatch's
API) and ``FetchOptions`` (how scored shards are read from object storage; imported on first use).
"""

from importlib import import_module
from typing import Any

from .compat import InfoBatch
from .distributed import open_store
from .kernels import plan_epoch
from .loader import SADPLoader, wrap
from .plan import EpochPlan, PlanSettings, PlanSlice
from .sampler import SADPSampler
from .schedule import KeepRatioSchedule
from .score_table import ScoreTable
from .scorer import SpikeAwareScorer
from .sharded_store import ShardedScoreStore
from .store import ScoreSnapshot, ScoreStore, ScoreStoreError, dataset_fingerprint

__version__ = "0.1.0"

#: Public names whose modules load on first access (``import sadp_data`` stays as light as the core).
_LAZY = {"FetchOptions": ".fetch"}

__all__ = [
    "EpochPlan",
    "FetchOptions",
    "InfoBatch",
    "KeepRatioSchedule",
    "PlanSettings",
    "PlanSlice",
    "SADPLoader",
    "SADPSampler",
    "ScoreSnapshot",
    "ScoreStore",
    "ScoreStoreError",
    "ScoreTable",
    "ShardedScoreStore",
    "SpikeAwareScorer",
    "dataset_fingerprint",
    "open_store",
    "plan_epoch",
    "wrap",
]


def __getattr__(name: str) -> Any:
    """The lazily imported public names (``_LAZY``), loaded once and then kept in the module."""
    if name not in _LAZY:
        raise AttributeError(f"module 'sadp_data' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
