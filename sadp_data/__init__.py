"""sadp-data: spike-aware data pruning for spiking neural networks.

Wrap a DataLoader with an importance sampler, score examples with a forward hook, and train on the
examples that matter: each epoch draws examples with probability proportional to their score, used
unweighted by default (``weight_power=1`` gives Horvitz–Thompson weights, an unbiased gradient)::

    store = sd.ScoreStore.create("scores.zarr", num_examples=len(train_set))
    sampler = sd.SADPSampler(store, keep_ratio=0.7, epochs=E)
    loader = sd.wrap(DataLoader(train_set, batch_size=B), sampler)
    scorer = sd.SpikeAwareScorer(model, store)
"""

from . import _moved
from .distributed.partitioned_store import PartitionedScoreStore
from .kernels import plan_epoch
from .loader import SADPLoader, wrap
from .plan import EpochPlan, PlanSlice
from .sampler import SADPSampler
from .schedule import KeepRatioSchedule
from .scoring.scorer import SpikeAwareScorer
from .store import ScoreSnapshot, ScoreStore, ScoreStoreError, dataset_fingerprint

__version__ = "0.1.0"

_moved.install()
__getattr__ = _moved.renamed(__name__, {"ShardedScoreStore": "PartitionedScoreStore"})

__all__ = [
    "EpochPlan",
    "KeepRatioSchedule",
    "PartitionedScoreStore",
    "PlanSlice",
    "SADPLoader",
    "SADPSampler",
    "ScoreSnapshot",
    "ScoreStore",
    "ScoreStoreError",
    "SpikeAwareScorer",
    "dataset_fingerprint",
    "plan_epoch",
    "wrap",
]
