"""One of two gloo ranks (``tests/test_faults.py``): rank 1 opens rank 0's sidecar for writing and reports.

Usage: python rank_opens_writer.py RANK WORKDIR. Rank 1 prints "opened" or "refused: <the error>".
"""

import sys

import torch.distributed as dist

from sadp_data import ScoreStore
from sadp_data.store import ScoreStoreError

rank, workdir = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=2)
if rank == 0:
    store = ScoreStore.create(f"{workdir}/s.zarr", 10)
dist.barrier()
if rank == 1:
    try:
        ScoreStore.open(f"{workdir}/s.zarr", "r+")
        print("opened")
    except ScoreStoreError as error:
        print("refused:", error)
dist.barrier()
