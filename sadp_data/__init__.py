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

from . import _moved
from .distributed import open_store
from .distributed.partitioned_store import PartitionedScoreStore
from .kernels import plan_epoch
from .loader import SADPLoader, wrap
from .plan import EpochPlan, PlanSettings, PlanSlice
from .sampler import SADPSampler
from .schedule import KeepRatioSchedule
from .scoring.scorer import SpikeAwareScorer
from .store import ScoreSnapshot, ScoreStore, ScoreStoreError, dataset_fingerprint
from .store.table import ScoreTable

__version__ = "0.1.0"

_moved.install()
#: Public names whose modules load on first access (``import sadp_data`` stays as light as the core; the
#: InfoBatch drop-in is an adapter, which the core never imports).
_LAZY = {"FetchOptions": ".remote.fetch", "InfoBatch": ".adapters.infobatch"}
_renamed = _moved.renamed(__name__, {"ShardedScoreStore": "PartitionedScoreStore"})

__all__ = [
    "EpochPlan",
    "FetchOptions",
    "InfoBatch",
    "KeepRatioSchedule",
    "PartitionedScoreStore",
    "PlanSettings",
    "PlanSlice",
    "SADPLoader",
    "SADPSampler",
    "ScoreSnapshot",
    "ScoreStore",
    "ScoreStoreError",
    "ScoreTable",
    "SpikeAwareScorer",
    "dataset_fingerprint",
    "open_store",
    "plan_epoch",
    "wrap",
]


def __getattr__(name: str) -> Any:
    """The lazily imported public names (``_LAZY``), loaded once and then kept in the module; old names warn."""
    if name not in _LAZY:
        return _renamed(name)
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
