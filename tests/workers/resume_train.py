"""A training run that checkpoints every step; the parent test kills it with SIGKILL and resumes it.

Usage: python resume_train.py WORKDIR run|resume SECONDS_PER_STEP [SHARDS]. Without SHARDS it trains
on in-memory tensors through ``sd.wrap`` and keeps its sidecar in WORKDIR/scores.zarr; with SHARDS (a
scored-shards folder or URL) it streams them through ``ScoredShards`` with 2 DataLoader workers and
their own sidecar. Writes WORKDIR/progress (one line per step), WORKDIR/checkpoint.pt (atomically
replaced every step) and, when it finishes, WORKDIR/final.json with every example index delivered to
the training loop, in order.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sadp_data as sd

EPOCHS = 4


def examples() -> tuple[np.ndarray, np.ndarray]:
    """The 480 training examples: 20 features, 4 classes."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(480, 20)).astype(np.float32), rng.integers(0, 4, 480)


def make_loader(workdir: Path, shards: str | None) -> tuple[sd.SADPSampler, object]:
    options = dict(keep_ratio=0.5, epochs=EPOCHS, batch_size=16, seed=1, anneal_fraction=0.25)
    if shards is None:
        inputs, labels = (torch.from_numpy(a) for a in examples())
        store = sd.ScoreStore.open(workdir / "scores.zarr", flush_interval=0.05)
        sampler = sd.SADPSampler(store, **options)
        return sampler, sd.wrap(DataLoader(TensorDataset(inputs, labels), batch_size=16), sampler)
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.shards import ShardIndex

    store = ShardIndex.load(shards).open_store(flush_interval=0.05)
    sampler = ScoredShards.sampler_for(shards, store=store, **options)
    dataset = ScoredShards(shards, sampler).decode().to_tuple("x.npy", "y.cls")
    return sampler, dataset.loader(16, num_workers=2)


def main(workdir: Path, mode: str, pause: float, shards: str | None) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler, loader = make_loader(workdir, shards)
    store = sampler.store
    scorer = sd.SpikeAwareScorer(model, store)
    delivered: list[int] = []
    first_epoch = 0
    if mode == "resume":
        checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        loader.load_state_dict(checkpoint["loader"])
        delivered = checkpoint["delivered"]
        first_epoch = checkpoint["loader"]["epoch"]
    progress = open(workdir / "progress", "a")
    for epoch in range(first_epoch, EPOCHS):
        sampler.set_epoch(epoch)  # keeps a restored position within the restored epoch
        for x, y, index, weight in loader:
            out = model(x)
            loss = scorer.step(index, out, y, F.cross_entropy(out, y, reduction="none"), weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            delivered.extend(index.tolist())
            state = loader.state_dict()  # flushes the store: the checkpoint never runs ahead of the scores
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "loader": state,
                "delivered": delivered,
                "store_version": store.version,
            }
            torch.save(checkpoint, workdir / "checkpoint.tmp")
            os.replace(workdir / "checkpoint.tmp", workdir / "checkpoint.pt")
            progress.write(f"{epoch} {state['position']}\n")
            progress.flush()
            time.sleep(pause)
    store.close()
    (workdir / "final.json").write_text(json.dumps(delivered))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
