"""One rank of the InfoBatch drop-in under gloo: ``python compat_ddp.py RANK WORLD OUT`` (MASTER_ADDR/PORT set);
writes OUT/rankR.json."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from sadp_data.adapters.infobatch import InfoBatch


def main() -> None:
    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = TensorDataset(torch.arange(101, dtype=torch.float32))
    trainset = InfoBatch(data, 4, prune_ratio=0.5, delta=0.75)
    loader = DataLoader(trainset, batch_size=8, sampler=trainset.sampler)
    epochs = []
    for _ in range(4):
        indices, steps, length = [], 0, len(loader)  # before the epoch: its planned batch count
        for (x,) in loader:
            indices += x.long().tolist()
            loss = trainset.update((x - 50.0).abs() / 50.0 + 0.01 * trainset.epoch)  # a loss per example
            steps += 1
            del loss
        epochs.append({"plan": trainset._plan[0].tolist(), "indices": indices, "steps": steps, "len": length})
    record = {"epochs": epochs, "scores": trainset.scores.tolist(), "seen": trainset._seen.tolist()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
