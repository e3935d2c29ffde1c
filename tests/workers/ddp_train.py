"""One rank of a data-parallel run (gloo) of the demo SNN through sadp_data; writes what it saw as JSON.

Usage: python ddp_train.py RANK WORLD WORKDIR. The parent test starts WORLD of these and compares.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import sadp_data as sd
from sadp_data.adapters.spikingjelly import ConvSNN, reset
from sadp_data.distributed import open_store
from sadp_data.sources.datasets import FashionMNIST


def main(rank: int, world: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir / 'rendezvous'}", rank=rank, world_size=world)
    train = FashionMNIST(split="train", limit=201)
    store = open_store(workdir / "scores.zarr", num_examples=len(train))
    torch.manual_seed(0)
    model = DistributedDataParallel(ConvSNN(channels=(4, 8), time_steps=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = sd.SADPSampler(
        store, keep_ratio=0.5, epochs=3, batch_size=16, seed=3, warmup_epochs=1, anneal_fraction=1 / 3
    )
    loader = sd.wrap(DataLoader(train, batch_size=16), sampler)
    scorer = sd.SpikeAwareScorer(model.module, store, sync_every=2)
    report = {"rank": rank, "epochs": []}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices, steps = [], 0
        for x, y, index, weight in loader:
            out = model(x)
            loss = scorer.step(index, out, y, F.cross_entropy(out, y, reduction="none"), weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            reset(model.module)
            indices.extend(index.tolist())
            steps += 1
        plan = sampler.plan
        report["epochs"].append(
            {
                "steps": steps,
                "len": len(loader),
                "indices": indices,
                "plan": plan.order.tolist(),
                "snapshot_version": plan.snapshot_version,
            }
        )
    store.synchronize()  # push the last pending scores, as the next epoch's plan would
    dist.barrier()
    report["scores"] = store.scores().tolist()
    report["seen"] = store.seen().tolist()
    report["version"] = store.version
    store.close()
    (workdir / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
