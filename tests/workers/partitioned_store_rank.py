"""One gloo rank training-loop-shaped over a ``PartitionedScoreStore`` (tests/distributed/test_partitioned_store.py).

Usage: python partitioned_store_rank.py RANK WORLD WORKDIR, with MASTER_ADDR/MASTER_PORT set. Reads
``WORKDIR/case.json`` (N, seed, keep) and the scores every example will get (``scores.npy``,
memory-mapped: a rank touches only the examples it delivers). Per rank it:

1. opens its region and a sampler; in the warm-up epoch (0) scores the examples it delivers, in
   batches, through ``store.update`` (routed to the owners), as a scorer would;
2. plans the pruned epoch 1, default SADP and ``weight_power=1``, recording its slices and the
   traced memory from opening the store: what is held after the plan and the peak on the way;
3. pushes a few scores of examples it does not own through a ``SpikeAwareScorer`` and records them
   and its region after the exchange (for the routing check);
4. checkpoints mid-epoch, closes, reopens and resumes, recording the remaining order.

Writes ``rank{RANK}.npz`` and ``rank{RANK}.json``.
"""

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from _traced import finish, settle
from torch import nn

import sadp_data as sd
from sadp_data.distributed.partitioned_plan import LocalComm, partitioned_plan_epoch

BATCH = 4096


def sampler_for(store, case, **options):
    return sd.SADPSampler(store, keep_ratio=case["keep"], epochs=4, seed=case["seed"], schedule="constant", **options)


def warm_up(path: Path, rank: int) -> None:
    """Compile the kernels and import what the first use imports, so the traced peak is the data's."""
    with sd.ScoreStore.create(path, 16, owner_rank=rank) as store:
        store.update(np.arange(16), np.ones(16, np.float32))
    partitioned_plan_epoch(np.ones(16, np.float32), 0.5, 0, 1, 16, comm=LocalComm(), rank=0, world=1)


def main(rank: int, world: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    case = json.loads((workdir / "case.json").read_text())
    scores = np.load(workdir / "scores.npy", mmap_mode="r")
    out: dict[str, np.ndarray] = {}
    warm_up(workdir / f"warm{rank}.zarr", rank)
    tracemalloc.start()
    store = sd.PartitionedScoreStore.open(workdir / "regions", case["N"], fingerprint="test")
    sampler = sampler_for(store, case)
    sampler.set_epoch(0)
    for start in range(0, len(sampler), BATCH):  # equal slices: every rank updates equally often
        index = sampler.rank_order()[start : start + BATCH].copy()  # no view keeps the epoch alive
        store.update(index, np.asarray(scores[index]))
    sampler.set_epoch(1)
    out["order"], out["weights"] = sampler.rank_slice().order, sampler.rank_slice().weights
    store.flush()  # the writer thread's chunk buffers are not what the rank holds
    settle()  # nor the buffers gloo's threads have not handed back yet
    resident, peak = tracemalloc.get_traced_memory()  # tracing stays on: see _traced
    weighted = sampler_for(store, case, method_options={"weight_power": 1.0})
    weighted.set_epoch(1)
    out["ht_order"], out["ht_weights"] = weighted.rank_slice().order, weighted.rank_slice().weights
    stats = sampler.stats()[-1]

    scorer = sd.SpikeAwareScorer(nn.Linear(4, 3), store)
    assert scorer.exchange is None  # no all-gather: the store routes
    foreign = (np.arange(8, dtype=np.int64) * 997 + (rank + 1) * 65536 + 5) % case["N"]
    values = np.full(8, 100.0 + rank, np.float32)
    store.update(foreign, values, epoch=1)  # sync_every=1: routed now, collectively
    out["pushed_index"], out["pushed_value"] = foreign, values
    out["region_scores"], out["region_last"] = store.scores().copy(), store.last_epoch().copy()

    iterator = iter(sampler)
    delivered = [next(iterator) for _ in range(100)]
    state = json.loads(json.dumps(sampler.state_dict()))
    store.close()
    again = sd.PartitionedScoreStore.open(workdir / "regions", case["N"], fingerprint="test")
    resumed = sampler_for(again, case)
    resumed.load_state_dict(state)
    out["resumed"] = np.array(delivered + list(resumed), dtype=np.int64)
    bad = np.array([np.nan if rank == world - 1 else 2.5], np.float32)  # the last rank diverged
    try:
        again.update(np.array([again.lo + 7]), bad, epoch=1)  # in its own region
        outcome = "no error"
    except (ValueError, IndexError) as error:  # on every rank, none left waiting in the exchange
        outcome = str(error)
    out["after_bad"] = again.scores().copy()
    again.close()
    np.savez(workdir / f"rank{rank}.npz", **out)
    report = {"resident": resident, "peak": peak, "owned": store.hi - store.lo, "stats": stats}
    report["position"] = state["position"]
    report["bad"] = outcome
    (workdir / f"rank{rank}.json").write_text(json.dumps(report))
    finish()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
