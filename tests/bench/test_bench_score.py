"""`sadp-data bench score --quick`: runs every setting and writes the documented JSON."""

import json
from pathlib import Path

import pytest

pytest.importorskip("spikingjelly.activation_based")
pytest.importorskip("scipy")


@pytest.mark.slow
def test_bench_score_quick_writes_the_documented_json(tmp_path: Path) -> None:
    from sadp_data.cli import main

    out, plot = tmp_path / "score.json", tmp_path / "score.png"
    assert main(["bench", "score", "--quick", "--no-progress", "--json", str(out), "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    assert len(result["settings"]) == 24
    names = {s["name"] for s in result["settings"]}
    assert "conv/ce/nonspiking-readout/init" in names and "mlp/mse/spiking-readout/epoch2" in names
    for setting in result["settings"]:
        assert set(setting["spearman"]) == set(setting["pearson"]) == {"spike_aware", "rate", "grad_bound", "loss"}
        assert setting["bound_violations"] == 0  # the score is the exact readout gradient norm
        assert setting["n_examples"] == 48
        for value in setting["spearman"].values():
            assert value is None or -1.0 <= value <= 1.0
    assert 0.0 < result["overhead_fraction"] < 1.0
    assert plot.stat().st_size > 10_000
