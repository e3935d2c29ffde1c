"""Kernel bench: time and peak memory of ``plan_epoch`` per backend and N, against the baselines.

Every measurement runs in a fresh child process, so peak resident memory (``ru_maxrss``) is that of
one plan at one N: the float32 scores (generated in chunks, never as float64), the plan, and the
interpreter. Times are medians of ``repeats`` calls after one warm-up call on a small input (which
loads the compiled kernels: that one-off cost is reported separately as ``first_call_s``).
Baselines run the same way: ``torch.randperm(N)`` (the shuffle every DataLoader already pays),
``numpy.choice`` (``Generator.choice(N, K, replace=False, p=...)``, N ≤ 10⁶) and
``torch.multinomial`` (``replacement=False``, N ≤ 2²⁴, its category limit).

Scores are log-normal(0, 1), a heavy-ish right tail like gradient norms; keep ratio 0.7, smoothing 0.1.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any

KEEP_RATIO = 0.7
SIZES = (10**5, 10**6, 10**7, 10**8)
#: Largest N per backend/baseline on a CPU (beyond it the run is long and adds nothing).
CPU_LIMITS = {"numpy": 10**7, "torch": 10**7, "numba": 10**8, "cuda": 10**8}
BASELINE_LIMITS = {"torch.randperm": 10**8, "numpy.choice": 10**6, "torch.multinomial": 1 << 24}


def _scores(count: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    scores = np.empty(count, dtype=np.float32)
    for start in range(0, count, 1 << 22):
        stop = min(count, start + (1 << 22))
        scores[start:stop] = rng.lognormal(0.0, 1.0, stop - start)
    return scores


def _child(task: str, count: int, repeats: int, device: str) -> dict[str, float]:
    """Runs in the child process: one backend or baseline at one N."""
    import resource
    import time

    import numpy as np
    import torch

    from sadp_data.kernels import plan_epoch, sample_size

    scores = _scores(count)
    size = sample_size(count, KEEP_RATIO)
    on_gpu = device.startswith("cuda")

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()
            if task == "cuda":
                from numba import cuda

                cuda.synchronize()

    if task.startswith("baseline:"):
        name = task.split(":", 1)[1]
        if name == "torch.randperm":
            call = lambda: torch.randperm(count, device=device)  # noqa: E731
        elif name == "numpy.choice":
            p = scores.astype(np.float64) / scores.sum(dtype=np.float64)
            rng = np.random.default_rng(0)
            call = lambda: rng.choice(count, size, replace=False, p=p)  # noqa: E731
        else:
            weights = torch.from_numpy(scores).to(device)
            call = lambda: torch.multinomial(weights, size, replacement=False)  # noqa: E731
        call()
    else:
        backend = task
        data, warm = scores, scores[:1000]
        if backend == "torch":
            data, warm = torch.from_numpy(scores).to(device), torch.from_numpy(warm).to(device)
        elif backend == "cuda":  # device arrays in, as a GPU training loop would hold them
            from numba import cuda

            data, warm = cuda.to_device(scores), cuda.to_device(warm)
        begin = time.perf_counter()
        plan_epoch(warm, KEEP_RATIO, 0, 0, backend=backend)
        sync()
        first = time.perf_counter() - begin

        def call():
            return plan_epoch(data, KEEP_RATIO, 0, 1, backend=backend)

    times = []
    for _ in range(repeats):
        sync()
        begin = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - begin)
    result = {
        "seconds": float(np.median(times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if not task.startswith("baseline:"):
        result["first_call_s"] = first
    return result


def _run_child(task: str, count: int, repeats: int, device: str) -> dict[str, float]:
    command = [sys.executable, "-m", "sadp_data.bench.kernels", task, str(count), str(repeats), device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kernel bench child {task} N={count} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_kernel_bench(
    sizes: tuple[int, ...] = SIZES,
    backends: tuple[str, ...] = ("numba", "numpy", "torch"),
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every backend and baseline at every size; returns the documented JSON shape."""
    from tqdm.auto import tqdm

    on_gpu = device.startswith("cuda")
    tasks = []
    for count in sizes:
        repeats = 3 if count <= 10**7 else 1
        for backend in backends:
            if on_gpu or count <= CPU_LIMITS.get(backend, 10**8):
                tasks.append((backend, count, repeats))
        for name, limit in BASELINE_LIMITS.items():
            if count <= limit and (not on_gpu or name != "numpy.choice"):
                tasks.append((f"baseline:{name}", count, repeats))
    results, baselines = [], []
    for task, count, repeats in tqdm(tasks, desc="bench kernels", disable=not progress):
        figures = _run_child(task, count, repeats, device)
        if task.startswith("baseline:"):
            baselines.append({"n": count, "name": task.split(":", 1)[1], "seconds": figures["seconds"]})
        else:
            results.append(
                {
                    "n": count,
                    "backend": task,
                    "plan_epoch_s": figures["seconds"],
                    "peak_rss_mb": figures["peak_rss_mb"],
                    "first_call_s": figures["first_call_s"],
                }
            )
    return {
        "results": results,
        "baselines": baselines,
        "ratios": _ratios(results, baselines),
        "settings": {"keep_ratio": KEEP_RATIO, "scores": "lognormal(0, 1) float32", "device": device},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
    }


def _ratios(results: list[dict], baselines: list[dict]) -> list[dict[str, Any]]:
    """``plan_epoch`` time over ``torch.randperm`` time, and ``numpy.choice`` time over ``plan_epoch``."""
    base = {(b["name"], b["n"]): b["seconds"] for b in baselines}
    ratios = []
    for row in results:
        entry = {"n": row["n"], "backend": row["backend"]}
        if ("torch.randperm", row["n"]) in base:
            entry["vs_randperm"] = row["plan_epoch_s"] / base[("torch.randperm", row["n"])]
        if ("numpy.choice", row["n"]) in base:
            entry["choice_speedup"] = base[("numpy.choice", row["n"])] / row["plan_epoch_s"]
        ratios.append(entry)
    return ratios


def format_kernel_table(result: dict[str, Any]) -> str:
    """Markdown tables: backends with their ratios, then baselines."""
    ratio = {(r["n"], r["backend"]): r for r in result["ratios"]}
    lines = [
        "| N | backend | plan_epoch (s) | × torch.randperm | numpy.choice ÷ plan | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        extra = ratio[(row["n"], row["backend"])]
        lines.append(
            f"| {row['n']:.0e} | {row['backend']} | {row['plan_epoch_s']:.4f} | "
            f"{extra.get('vs_randperm', float('nan')):.2f} | {extra.get('choice_speedup', float('nan')):.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    lines += ["", "| N | baseline | seconds |", "|---|---|---|"]
    lines += [f"| {b['n']:.0e} | {b['name']} | {b['seconds']:.4f} |" for b in result["baselines"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
