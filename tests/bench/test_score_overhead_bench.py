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
