"""The GPU bench's first part: ``plan_epoch`` on the device against ``torch.randperm`` and ``torch.multinomial``.

Each N runs in a fresh child process (``python -m sadp_data.bench.gpu_plan N DEVICE``), so a backend that
dies costs that N's figures only; inside the child every task is tried on its own and one that fails (out of
device memory, say) is recorded as ``"skipped"`` with the reason. Scores are log-normal(0, 1)
float32 made on the device (no host round trip, even at N = 10⁹); the numba.cuda backend reads the same
tensor through ``__cuda_array_interface__`` (under ``NUMBA_ENABLE_CUDASIM=1`` a host copy instead).

The bandwidth bound of a plan is one read of the float32 scores and one write of the plan (int64 order
and float32 weights, K of each): ``(4 N + 12 K) / bandwidth``, with the bandwidth measured in the same run
by a device-to-device copy (``copy_``, which reads and writes its bytes once each).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

KEEP_RATIO = 0.7
PLAN_BACKENDS = ("cuda", "torch")
#: ``torch.multinomial`` takes at most 2²⁴ categories.
MULTINOMIAL_LIMIT = 1 << 24


def plan_bytes(count: int, size: int) -> int:
    """Bytes a plan must move at the least: read N float32 scores, write K int64 indices and K float32 weights."""
    return 4 * count + 12 * size


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_seconds(call, repeats: int, device: str) -> float:
    """Median wall time of ``repeats`` calls of ``call``, the device synchronised before and after each."""
    import statistics

    times = []
    for _ in range(repeats):
        _sync(device)
        begin = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def measure_bandwidth(device: str, megabytes: int, repeats: int = 5) -> dict[str, float]:
    """Device-to-device copy of ``megabytes`` MB: bytes read plus written per second."""
    import torch

    source = torch.empty(megabytes * (1 << 20) // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = _median_seconds(lambda: target.copy_(source), repeats, device)
    moved = 2 * source.numel() * 4
    return {"bytes": moved, "seconds": seconds, "bytes_per_s": moved / seconds}


def _scores(count: int, device: str):
    import torch

    torch.manual_seed(0)
    return torch.empty(count, dtype=torch.float32, device=device).log_normal_(0.0, 1.0)


def _numba_view(scores):
    """The scores as a numba.cuda device array: zero-copy on a GPU, a host copy under the simulator."""
    from numba import cuda

    if scores.is_cuda:
        return cuda.as_cuda_array(scores)
    return cuda.to_device(scores.numpy())


def _task(name: str, count: int, device: str, repeats: int) -> dict[str, Any]:
    """One backend or baseline at one N: ``seconds`` (median), and for backends ``first_call_s``."""
    import torch

    from sadp_data.kernels import plan_epoch, sample_size

    size = sample_size(count, KEEP_RATIO)
    scores = _scores(count, device)
    row: dict[str, Any] = {"n": count, "backend": name}
    if name == "torch.randperm":
        call = lambda: torch.randperm(count, device=device)  # noqa: E731
    elif name == "torch.multinomial":
        call = lambda: torch.multinomial(scores, size, replacement=False)  # noqa: E731
    else:
        data = _numba_view(scores) if name == "cuda" else scores
        warm = _numba_view(scores[:1000]) if name == "cuda" else scores[:1000]
        begin = time.perf_counter()
        plan_epoch(warm, KEEP_RATIO, 0, 0, backend=name)
        _sync(device)
        row["first_call_s"] = time.perf_counter() - begin
        call = lambda: plan_epoch(data, KEEP_RATIO, 0, 1, backend=name)  # noqa: E731
        row["bytes"] = plan_bytes(count, size)
    call()  # the allocator's first blocks of this size are not part of the figure
    row["seconds"] = _median_seconds(call, repeats, device)
    return row


def run_size(count: int, device: str) -> list[dict[str, Any]]:
    """Every task at one N (in this process); a task that fails (out of memory, say) is skipped, with why."""
    import torch

    names = [*PLAN_BACKENDS, "torch.randperm"] + (["torch.multinomial"] if count <= MULTINOMIAL_LIMIT else [])
    repeats = 3 if count <= 10**8 else 2
    rows = []
    for name in names:
        try:
            rows.append(_task(name, count, device, repeats))
        except Exception as error:  # one task's failure (out of memory, no NVVM for numba.cuda) spares the others
            text = str(error)
            out_of_memory = isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "OUT_OF_MEMORY" in text
            reason = "out of memory" if out_of_memory else type(error).__name__
            rows.append({"n": count, "backend": name, "skipped": f"{reason}: {text[:300]}"})
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _in_child(arguments: list[str], timeout_s: float) -> Any:
    """Run this module with ``arguments`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    command = [sys.executable, "-m", "sadp_data.bench.gpu_plan", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=max(1.0, timeout_s))
    if done.returncode != 0:
        raise RuntimeError(f"child {' '.join(arguments)} exited with {done.returncode}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_plan_part(sizes: tuple[int, ...], device: str, copy_mb: int, deadline: float) -> dict[str, Any]:
    """Bandwidth, then every N in its own child until ``deadline`` (``time.monotonic()``); ratios and bound shares.

    An N that fails, or that starts too late, is listed under ``skipped`` with the reason.
    """
    bandwidth = _in_child(["bandwidth", str(copy_mb), device], deadline - time.monotonic())
    rows: list[dict[str, Any]] = []
    for count in sizes:
        left = deadline - time.monotonic()
        if left < 5:
            rows.append({"n": count, "backend": "all", "skipped": "time budget spent before this N started"})
            continue
        try:
            rows += _in_child([str(count), device], left)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            rows.append({"n": count, "backend": "all", "skipped": str(error)[-300:]})
    _add_ratios(rows, bandwidth["bytes_per_s"])
    return {
        "keep_ratio": KEEP_RATIO,
        "scores": "lognormal(0, 1) float32, made on the device",
        "bandwidth": bandwidth,
        "bound": "(4 N + 12 K) bytes / measured copy bandwidth: read the scores once, write the plan once",
        "rows": rows,
    }


def _add_ratios(rows: list[dict[str, Any]], bytes_per_s: float) -> None:
    """Per backend row: time over each baseline's at the same N, and the bandwidth bound over the time."""
    base = {(r["backend"], r["n"]): r["seconds"] for r in rows if "seconds" in r}
    for row in rows:
        if "seconds" not in row or row["backend"] not in PLAN_BACKENDS:
            continue
        row["bound_s"] = row["bytes"] / bytes_per_s
        row["fraction_of_bound"] = row["bound_s"] / row["seconds"]
        for baseline, key in (("torch.randperm", "vs_randperm"), ("torch.multinomial", "vs_multinomial")):
            if (baseline, row["n"]) in base:
                row[key] = row["seconds"] / base[(baseline, row["n"])]


def format_plan_table(part: dict[str, Any]) -> str:
    """Markdown: one row per N and backend or baseline."""
    lines = [
        f"copy bandwidth: {part['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s",
        "| N | backend | seconds | × randperm | × multinomial | share of bandwidth bound |",
        "|---|---|---|---|---|---|",
    ]
    for row in part["rows"]:
        if "seconds" not in row:
            lines.append(f"| {row['n']:.0e} | {row['backend']} | skipped: {row['skipped'][:80]} | | | |")
            continue
        cells = [row.get(key) for key in ("vs_randperm", "vs_multinomial", "fraction_of_bound")]
        text = ["" if value is None else f"{value:.3f}" for value in cells]
        lines.append(f"| {row['n']:.0e} | {row['backend']} | {row['seconds']:.5f} | " + " | ".join(text) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "bandwidth":
        print(json.dumps(measure_bandwidth(sys.argv[3], int(sys.argv[2]))))
    else:
        print(json.dumps(run_size(int(sys.argv[1]), sys.argv[2])))
