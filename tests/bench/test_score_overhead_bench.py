"""The scorer-overhead bench (``python -m sadp_data.bench.score_overhead``) runs and reports what it says; no
timing is asserted (the machine is shared)."""

from __future__ import annotations

import math

import pytest


def test_the_time_loop_overhead_bench_reports_finite_shares() -> None:
    pytest.importorskip("spikingjelly")
    from sadp_data.bench.score_overhead import spikingjelly_overhead, time_loop_overhead

    results = {
        **time_loop_overhead(steps=2, batch_size=8, time_steps=3),
        **spikingjelly_overhead(steps=2, batch_size=8),
    }
    assert set(results) == {"time_loop_spiking", "time_loop_mean_logits", "mlp_snn", "conv_snn"}
    for figures in results.values():
        assert figures["step_time_s"] > 0 and figures["score_time_s"] > 0
        assert math.isclose(figures["overhead_fraction"], figures["scored_step_time_s"] / figures["step_time_s"] - 1)
        low, high = figures["overhead_interval"]
        assert low <= high and all(math.isfinite(value) for value in (low, high, figures["score_fraction"]))


def test_the_zoo_overhead_bench_times_a_time_loop_network_and_skips_a_missing_library(monkeypatch) -> None:
    pytest.importorskip("spikingjelly")
    from sadp_data.bench import zoo_models
    from sadp_data.bench.score_overhead import zoo_overhead

    def missing(entry: zoo_models.ZooEntry) -> zoo_models.ZooModel:
        raise ImportError("No module named 'absentlib'")

    absent = zoo_models.ZooEntry("absent_net", "absentlib", (1, 28, 28), 4, 10, missing)
    monkeypatch.setattr(zoo_models, "ZOO", (*zoo_models.ZOO, absent))
    results = zoo_overhead(("plif_fashion_singlestep", "absent_net"), steps=2, batch_size=4)
    reason = "absentlib does not import: ImportError: No module named 'absentlib'"
    assert results["zoo/absent_net"] == {"skipped": reason}
    figures = results["zoo/plif_fashion_singlestep"]
    assert figures["batch_size"] == 4 and figures["time_steps"] == 4
    assert figures["step_time_s"] > 0 and figures["score_time_s"] > 0
    assert math.isclose(figures["score_fraction"], figures["score_time_s"] / figures["step_time_s"])


def test_the_overhead_bench_writes_its_results_with_the_command(tmp_path) -> None:
    pytest.importorskip("spikingjelly")
    import json

    from sadp_data.bench.score_overhead import main

    out = tmp_path / "overhead.json"
    main(["--only", "zoo", "--steps", "2", "--batch-size", "4", "--json", str(out)])
    record = json.loads(out.read_text())
    assert (
        record["command"]
        == f"python -m sadp_data.bench.score_overhead --only zoo --steps 2 --batch-size 4 --json {out}"
    )
    assert record["machine"]["cpu_count"] >= 1
    assert "zoo/plif_fashion_singlestep" in record["results"]
