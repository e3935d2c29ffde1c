"""Scale bench: per-rank memory and plan time of the partitioned score table against the replicated one.

``sadp-data bench scale --json bench/results/scale.json`` starts ``world`` gloo processes on this
machine (127.0.0.1) twice, once per design, each planning one pruned epoch (keep 0.5) of N examples:

* ``replicated`` (today's data-parallel design): every rank holds the whole score table (float32
  scores, uint32 seen counts, int32 last-scored epochs: 12 B an example, as a ``ScoreStore``
  mirror does), plans the whole epoch with ``plan_epoch`` (numba) and takes its slice;
* ``sharded``: rank r holds only its ``partition_bounds`` block of the table and plans with
  ``partitioned_plan.partitioned_plan_epoch`` (numpy), exchanging per-block figures and the picks.

Scores are a counter-based hash of the global index, so a rank can make its block alone. Per rank:
``plan_s`` (barrier to barrier), the score table's bytes, and the resident set's peak growth over
the process's state before the table was made (``ru_maxrss``: the table plus the planning
temporaries; the scores are made a million at a time, so their hashing adds only a few MB) per
example of N, whose ratio sharded ÷ replicated is held to ``RESIDENT_SHARE``. Each rank hashes its
slice of the plan; the two designs' hashes must be equal (the sharded plan is bit-identical).
Trade-off of the bench: the ranks share 2 cores, so ``plan_s`` is the slowest rank's time with W
processes on 2 cores, not a cluster's.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DESIGNS = ("sharded", "replicated")
TABLE_BYTES_PER_EXAMPLE = 12  # float32 score + uint32 seen + int32 last epoch
KEEP_RATIO, SEED, EPOCH = 0.5, 0, 3
#: The most a sharded rank's resident growth may be of a replicated rank's (the table, 1/W of it, and
#: the planning temporaries over O(N/W) examples and O(K/W) picks); measured at W = 4, N = 10⁸.
RESIDENT_SHARE = 0.35


def _scores(lo: int, hi: int):
    """Scores of examples ``[lo, hi)``: positive, heavy-tailed, a pure function of the index.

    Made a million at a time, so the hashing's temporaries stay out of the measured peak.
    """
    import numpy as np

    from sadp_data.kernels import reference

    scores = np.empty(hi - lo, dtype=np.float32)
    key = reference.epoch_keys(12345, 0).offset
    for start in range(lo, hi, 1 << 20):
        stop = min(hi, start + (1 << 20))
        bits = reference.random_bits(key, np.arange(start, stop, dtype=np.uint64))
        uniform = (bits >> np.uint64(40)).astype(np.float64) / float(1 << 24)
        scores[start - lo : stop - lo] = 0.01 + uniform**3 * 4.0
    return scores


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rank(rank: int, world: int, count: int, design: str, out: Path) -> None:
    """One rank of one design (runs in its own process)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from sadp_data.distributed import partition_bounds, rank_positions
    from sadp_data.distributed.partitioned_plan import TorchComm, partitioned_plan_epoch
    from sadp_data.kernels import plan_epoch, sample_size

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if design == "replicated":
        plan_epoch(np.ones(1 << 12, np.float32), KEEP_RATIO, SEED, EPOCH, backend="numba")  # compile first
    baseline = _peak_rss()
    lo, hi = (0, count) if design == "replicated" else partition_bounds(count, world)[rank]
    scores = _scores(lo, hi)
    seen = np.ones(hi - lo, dtype=np.uint32)
    last_epoch = np.full(hi - lo, EPOCH - 1, dtype=np.int32)
    table = scores.nbytes + seen.nbytes + last_epoch.nbytes
    dist.barrier()
    start = time.perf_counter()
    if design == "replicated":
        order, weights = plan_epoch(scores, KEEP_RATIO, SEED, EPOCH, seen=seen, backend="numba")
        positions = rank_positions(sample_size(count, KEEP_RATIO), rank, world)
        order, weights = np.asarray(order)[positions], np.asarray(weights)[positions]
    else:
        comm = TorchComm()
        order, weights = partitioned_plan_epoch(
            scores, KEEP_RATIO, SEED, EPOCH, count, seen=seen, comm=comm, rank=rank, world=world
        )
    dist.barrier()
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(np.ascontiguousarray(order, np.int64).tobytes())
    digest.update(np.ascontiguousarray(weights, np.float32).tobytes())
    figures = {
        "rank": rank,
        "plan_s": seconds,
        "table_bytes": table,
        "resident_growth_bytes": _peak_rss() - baseline,
        "slice": int(order.shape[0]),
        "sha256": digest.hexdigest(),
    }
    (out / f"{design}-{rank}.json").write_text(json.dumps(figures))
    del last_epoch
    dist.destroy_process_group()


def _launch(world: int, count: int, design: str, out: Path, timeout_s: float) -> list[dict[str, Any]]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sadp_data.bench.scale"]
    processes = [
        subprocess.Popen([*command, str(rank), str(world), str(count), design, str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world)
    ]  # fmt: skip
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout_s)
            if process.returncode != 0:
                raise RuntimeError(
                    f"scale bench: a {design} rank failed (exit {process.returncode}):\n{output[-3000:]}"
                )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return [json.loads((out / f"{design}-{rank}.json").read_text()) for rank in range(world)]


def run_scale_bench(num_examples: int = 10**8, world: int = 4, timeout_s: float = 1800) -> dict[str, Any]:
    """Both designs at ``num_examples`` and ``world`` ranks; ``{"results": [...], "identical", "targets"}``.

    Each result: ``design, world_size, num_examples, resident_bytes_per_example_per_rank`` (the
    largest rank's peak growth ÷ N), ``score_table_bytes_per_example_per_rank``, ``plan_s`` (the
    slowest rank) and ``ranks`` (every rank's figures).
    """
    from sadp_data.bench.targets import target

    results = []
    with tempfile.TemporaryDirectory(prefix="sadp-scale-") as scratch:
        ranks = {design: _launch(world, num_examples, design, Path(scratch), timeout_s) for design in DESIGNS}
    for design in DESIGNS:
        results.append(
            {
                "design": design,
                "world_size": world,
                "num_examples": num_examples,
                "resident_bytes_per_example_per_rank": max(r["resident_growth_bytes"] for r in ranks[design])
                / num_examples,
                "score_table_bytes_per_example_per_rank": max(r["table_bytes"] for r in ranks[design]) / num_examples,
                "plan_s": max(r["plan_s"] for r in ranks[design]),
                "ranks": ranks[design],
            }
        )
    identical = [r["sha256"] for r in ranks["sharded"]] == [r["sha256"] for r in ranks["replicated"]]
    sharded, replicated = results
    ratio = sharded["score_table_bytes_per_example_per_rank"] / replicated["score_table_bytes_per_example_per_rank"]
    targets = {
        "identical": target("sharded plan slices equal the replicated ones (1 = yes)", float(identical), 1.0, ">="),
        "table_share": target(
            f"partitioned score table per rank ÷ replicated (≈ 1/{world})", ratio, 1.05 / world, "<="
        ),
    }
    if replicated["resident_bytes_per_example_per_rank"] > 0:  # small N: the peak RSS may not grow past start-up
        resident = sharded["resident_bytes_per_example_per_rank"] / replicated["resident_bytes_per_example_per_rank"]
        targets["resident_share"] = target(
            "sharded resident memory per rank ÷ replicated", resident, RESIDENT_SHARE, "<="
        )
    return {
        "backend": "scale",
        "results": results,
        "identical": identical,
        "targets": targets,
        "keep_ratio": KEEP_RATIO,
    }


def format_scale_table(result: dict[str, Any]) -> str:
    lines = [
        "| design | W | N | score table B/example/rank | resident B/example/rank | plan (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['design']} | {row['world_size']} | {row['num_examples']:.0e} | "
            f"{row['score_table_bytes_per_example_per_rank']:.2f} | {row['resident_bytes_per_example_per_rank']:.2f} | "
            f"{row['plan_s']:.2f} |"
        )
    lines.append(f"\nsharded slices bit-identical to the replicated ones: {result['identical']}")
    return "\n".join(lines)


if __name__ == "__main__":
    _rank(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
