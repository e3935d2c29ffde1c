"""One gloo rank planning an epoch from its own shard of the scores (``sadp_data.distributed.partitioned_plan``).

Usage: python partitioned_plan_rank.py RANK WORLD WORKDIR, with MASTER_ADDR/MASTER_PORT set. Reads
``WORKDIR/case.json`` (N, K, smoothing, seed, epoch), memory-maps ``scores.npy`` and ``seen.npy`` and
touches only its ``partition_bounds`` slice; writes ``rank{RANK}.npz`` (its slice of the plan) and
``rank{RANK}.json`` (the tracemalloc peak of the call and its shard's length).
"""

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from _traced import finish

from sadp_data.distributed.partitioned_plan import TorchComm, partition_bounds, partitioned_plan
from sadp_data.kernels import reference


def main(rank: int, world: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    case = json.loads((workdir / "case.json").read_text())
    lo, hi = partition_bounds(case["N"], world)[rank]
    scores = np.load(workdir / "scores.npy", mmap_mode="r")[lo:hi]
    seen = np.load(workdir / "seen.npy", mmap_mode="r")[lo:hi]
    keys = reference.epoch_keys(case["seed"], case["epoch"])
    tracemalloc.start()
    order, weights = partitioned_plan(
        scores, seen, case["N"], case["K"], case["smoothing"], keys, rank, world, TorchComm()
    )
    peak = tracemalloc.get_traced_memory()[1]  # tracing stays on: see _traced
    np.savez(workdir / f"rank{rank}.npz", order=order, weights=weights)
    (workdir / f"rank{rank}.json").write_text(json.dumps({"peak": peak, "shard": hi - lo}))
    finish()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
