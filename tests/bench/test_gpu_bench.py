"""`bash bench/gpu.sh --dry-run`: the GPU bench's every part, end to end at tiny sizes on the CPU, and its JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("spikingjelly.activation_based")

ROOT = Path(__file__).resolve().parents[2]


def _numbers(value: object) -> list[float]:
    """Every int and float anywhere in a parsed JSON value."""
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


@pytest.mark.slow
def test_gpu_script_dry_run_measures_every_part_and_writes_the_json(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu (dry run)" and result["dry_run"] is True
    assert result["versions"]["zoo_torchvision"] == "stub" or result["versions"]["zoo_torchvision"].startswith(
        "torchvision "
    )
    assert all(math.isfinite(n) for n in _numbers(result)), "every figure is a finite number"

    plan = result["plan"]
    assert plan["bandwidth"]["bytes_per_s"] > 0
    rows = {row["backend"]: row for row in plan["rows"]}
    assert set(rows) == {"cuda", "torch", "torch.randperm", "torch.multinomial"}, plan["rows"]
    assert all(row["seconds"] > 0 for row in rows.values())
    for backend in ("cuda", "torch"):
        row = rows[backend]
        assert row["bound_s"] == pytest.approx(row["bytes"] / plan["bandwidth"]["bytes_per_s"])
        assert row["fraction_of_bound"] == pytest.approx(row["bound_s"] / row["seconds"])
        assert row["vs_randperm"] > 0 and row["vs_multinomial"] > 0 and row["first_call_s"] > 0

    scorer = {row["model"]: row for row in result["scorer"]["rows"]}
    assert set(scorer) == {"spiking_resnet18", "sew_resnet18"}, result["scorer"]["rows"]
    for row in scorer.values():
        assert {"step_s", "plain_step_s", "scorer_s", "share", "share_by_difference"} <= set(row), row
        assert row["share"] == pytest.approx(row["scorer_s"] / row["step_s"])

    (wrap,) = result["wrap"]["rows"]
    assert {"epoch_s_keep_1.0", "epoch_s_keep_0.5", "measured_speedup", "theoretical_speedup"} <= set(wrap), wrap
    assert wrap["theoretical_speedup"] == pytest.approx(2.0)
    assert wrap["efficiency"] == pytest.approx(wrap["measured_speedup"] / wrap["theoretical_speedup"])
    assert result["run"]["wall_s"] > 0
