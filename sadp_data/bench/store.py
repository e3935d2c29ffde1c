"""Store bench: what keeping scores costs a trainer — update throughput, memory, hook overhead.

* **Update throughput.** One epoch of a trainer's score updates into a real ``ScoreStore`` sidecar
  (a fresh one in a temporary folder): every example once, in a random order, in batches of
  ``batch`` indices (256 and 4,096: a training step's batch, and a large or gathered one), as the
  ``int64``/``float32`` numpy arrays ``SpikeAwareScorer.step`` passes. ``update_s`` is the time the
  training thread spends in ``update`` (the background writer runs meanwhile and competes for the
  interpreter lock, so its cost is in this figure); ``flush_s`` is the time until ``flush()``
  returns afterwards (everything on disk), reported separately. ``updates_per_s`` counts updates
  over ``update_s``; ``updates_per_s_with_flush`` over ``update_s + flush_s``: the sustained rate
  into the sidecar, which the target is checked against. Medians over ``rounds`` epochs.
* **Resident memory per example.** In a child process per N (so nothing else of the bench is
  resident): the growth of resident memory (``VmRSS``) from before ``ScoreStore.create`` to after
  one epoch of updates and a ``flush``. zarr, its thread pool and a writer thread are loaded by a
  small store first. The growth includes a fixed part (buffers, thread arenas: about 10 MB), so the
  per-example figure checked against the target is the marginal one, the slope between the
  smallest and largest N (the in-memory mirror alone is float32 score + uint32 seen + int32 epoch
  = 12 bytes); each N's growth divided by N is reported too.
* **Hook overhead per step.** ``bench.score.measure_overhead``: the forward hook plus
  ``scorer.step`` (scores and the store update) as a fraction of a whole training step of the demo
  model (batch 128).

Targets: ≥ 5 M updates/s into the sidecar in every configuration, ≤ 16 bytes of resident
memory per example, hook overhead ≤ 1 % of a training step. Misses are reported as such.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sadp_data.bench.targets import format_targets, target

TARGET_UPDATES_PER_S = 5e6
TARGET_BYTES_PER_EXAMPLE = 16.0
TARGET_OVERHEAD_FRACTION = 0.01


@dataclass(frozen=True)
class StoreBenchConfig:
    """Sizes of the store bench (defaults: about 1 min on 2 CPU cores)."""

    sizes: tuple[int, ...] = (10**6, 10**7)
    batches: tuple[int, ...] = (256, 4096)
    rounds: int = 3
    memory_sizes: tuple[int, ...] = (10**6, 10**7)
    overhead_steps: int = 20

    @classmethod
    def quick(cls) -> StoreBenchConfig:
        return cls(sizes=(10**6,), rounds=1, overhead_steps=5)


def _epoch_of_updates(count: int, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of a trainer's updates: every example once, shuffled, cut into batches."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(count).astype(np.int64)
    scores = rng.lognormal(0.0, 1.0, count).astype(np.float32)
    return [(order[start : start + batch], scores[start : start + batch]) for start in range(0, count, batch)]


def measure_updates(count: int, batch: int, rounds: int) -> dict[str, Any]:
    """Median update and flush times of one epoch of updates into a fresh sidecar of ``count`` examples."""
    from sadp_data.store import ScoreStore

    update_times, flush_times = [], []
    for round_number in range(rounds):
        batches = _epoch_of_updates(count, batch, round_number)
        with tempfile.TemporaryDirectory() as scratch:
            store = ScoreStore.create(Path(scratch) / "scores.zarr", count)
            start = time.perf_counter()
            for indices, scores in batches:
                store.update(indices, scores)
            updated = time.perf_counter()
            store.flush()
            flushed = time.perf_counter()
            store.close()
        update_times.append(updated - start)
        flush_times.append(flushed - updated)
    update_s, flush_s = statistics.median(update_times), statistics.median(flush_times)
    return {
        "n": count,
        "batch_size": batch,
        "updates": count,
        "update_s": update_s,
        "flush_s": flush_s,
        "updates_per_s": count / update_s,
        "updates_per_s_with_flush": count / (update_s + flush_s),
        "update_call_us": 1e6 * update_s / -(-count // batch),
    }


def _resident_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; ``ru_maxrss`` elsewhere, a peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(count: int) -> dict[str, float]:
    """Runs in a child process: resident-memory growth of a store of ``count`` examples."""
    import gc

    from sadp_data.store import ScoreStore

    with tempfile.TemporaryDirectory() as scratch:
        with ScoreStore.create(Path(scratch) / "warm.zarr", 1000) as warm:  # load zarr, its pools, the writer
            warm.update(np.arange(1000), np.ones(1000, dtype=np.float32))
        gc.collect()
        before = _resident_bytes()
        store = ScoreStore.create(Path(scratch) / "scores.zarr", count)
        rng = np.random.default_rng(0)
        batch = 4096
        for start in range(0, count, batch):
            size = min(batch, count - start)
            store.update(rng.integers(0, count, size), rng.random(size, dtype=np.float32))
        store.flush()
        gc.collect()
        after = _resident_bytes()
        store.close()
    return {"n": count, "rss_delta_bytes": after - before, "bytes_per_example": (after - before) / count}


def measure_memory(count: int) -> dict[str, float]:
    """``_memory_child`` in a fresh interpreter (``python -m sadp_data.bench.store memory N``)."""
    command = [sys.executable, "-m", "sadp_data.bench.store", "memory", str(count)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"store bench memory child (N={count}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def marginal_bytes_per_example(memory: list[dict]) -> float:
    """Resident bytes per additional example: the slope between the smallest and largest N measured
    (with one N, its growth divided by N, which includes the fixed part)."""
    low, high = min(memory, key=lambda row: row["n"]), max(memory, key=lambda row: row["n"])
    if high["n"] == low["n"]:
        return high["bytes_per_example"]
    return (high["rss_delta_bytes"] - low["rss_delta_bytes"]) / (high["n"] - low["n"])


def _targets(updates: list[dict], memory: list[dict], hook: dict[str, float]) -> dict[str, dict[str, Any]]:
    slowest = min(row["updates_per_s_with_flush"] for row in updates)
    per_example = marginal_bytes_per_example(memory)
    return {
        "updates_per_s": target(
            "score updates/s into the sidecar (update + flush), slowest configuration",
            slowest,
            TARGET_UPDATES_PER_S,
            ">=",
        ),
        "bytes_per_example": target(
            "resident bytes per example of an open store (marginal, over N)",
            per_example,
            TARGET_BYTES_PER_EXAMPLE,
            "<=",
        ),
        "hook_overhead_fraction": target(
            "hook + scorer.step as a fraction of a training step",
            hook["overhead_fraction"],
            TARGET_OVERHEAD_FRACTION,
            "<=",
        ),
    }


def run_store_bench(config: StoreBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run all three measurements; returns ``{"updates", "memory", "hook", "targets", "settings"}``."""
    from tqdm.auto import tqdm

    from sadp_data.bench.score import ScoreBenchConfig, measure_overhead

    tasks = [("updates", n, b) for n in config.sizes for b in config.batches]
    tasks += [("memory", n, 0) for n in config.memory_sizes] + [("hook", 0, 0)]
    updates, memory, hook = [], [], {}
    with tqdm(tasks, desc="bench store", disable=not progress) as bar:
        for kind, count, batch in bar:
            bar.set_postfix_str(kind if kind == "hook" else f"{kind} N={count:.0e}" + (f" B={batch}" if batch else ""))
            if kind == "updates":
                updates.append(measure_updates(count, batch, config.rounds))
            elif kind == "memory":
                memory.append(measure_memory(count))
            else:
                hook = measure_overhead(ScoreBenchConfig(), steps=config.overhead_steps)
    return {
        "updates": updates,
        "memory": memory,
        "hook": hook,
        "targets": _targets(updates, memory, hook),
        "settings": {**asdict(config), "scores": "lognormal(0, 1) float32", "order": "one shuffled epoch"},
    }


def format_store_table(result: dict[str, Any]) -> str:
    """Markdown tables: update throughput, memory per example, hook overhead, and the targets."""
    lines = [
        "| N | batch | update (s) | flush (s) | updates/s | with flush | µs per update call |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["updates"]:
        lines.append(
            f"| {row['n']:.0e} | {row['batch_size']} | {row['update_s']:.3f} | {row['flush_s']:.3f} | "
            f"{row['updates_per_s'] / 1e6:.2f} M | {row['updates_per_s_with_flush'] / 1e6:.2f} M | "
            f"{row['update_call_us']:.1f} |"
        )
    lines += ["", "| N | resident growth (MB) | growth ÷ N (bytes) |", "|---|---|---|"]
    for row in result["memory"]:
        lines.append(f"| {row['n']:.0e} | {row['rss_delta_bytes'] / 1e6:.1f} | {row['bytes_per_example']:.2f} |")
    lines.append(f"| marginal | | {marginal_bytes_per_example(result['memory']):.2f} |")
    hook = result["hook"]
    lines += [
        "",
        f"hook overhead: {1000 * hook['hook_time_s']:.3f} ms hook + {1000 * hook['score_time_s']:.2f} ms "
        f"scorer.step per {1000 * hook['step_time_s']:.1f} ms step = {100 * hook['overhead_fraction']:.2f} %",
        "",
        format_targets(result["targets"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] != ["memory"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m sadp_data.bench.store memory N")
    print(json.dumps(_memory_child(int(sys.argv[2]))))
