"""One gloo rank of ``tests/distributed/test_partitioned_store.py``'s fault cases: a malformed call and a lost region.

Usage: python partition_faults_rank.py RANK WORLD WORKDIR, with MASTER_ADDR/MASTER_PORT set. Each case
must raise on every rank at the same collective (none left waiting); what each rank raised is written
to ``WORKDIR/rank{RANK}.json``.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

import sadp_data as sd
from sadp_data.distributed._partition_shuffle import TorchComm

N = 2 * 65536


def outcome(call) -> str:
    try:
        call()
    except (IndexError, TypeError, ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def main(rank: int, world: int, workdir: Path) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    report: dict[str, str] = {}
    folder = workdir / "regions"
    store = sd.PartitionedScoreStore.open(folder, N, fingerprint="f", comm=TorchComm())
    everyone = np.arange(N)
    report["malformed"] = outcome(  # the last rank's scores are one short: every rank stops at this route
        lambda: store.update(everyone, np.ones(N - (rank == world - 1), np.float32), epoch=0)
    )
    report["after"] = outcome(lambda: store.update(everyone, np.full(N, 2.0, np.float32), epoch=0))
    report["region_scores"] = str(sorted(set(store.scores().tolist())))
    store.close()
    dist.barrier()
    if rank == 0:  # the last rank's region is lost (say, node-local storage after a move)
        shutil.rmtree(folder / f"w{world}-r{world - 1}.zarr")
    dist.barrier()
    again = sd.PartitionedScoreStore.open(folder, N, fingerprint="f", comm=TorchComm())
    report["lost_region"] = outcome(lambda: again.begin_epoch(1, 0.5))
    again.close()
    (workdir / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
