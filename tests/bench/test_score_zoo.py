"""`sadp-data bench score --zoo`: exact per-example gradient norms, the JSON shape, skipped libraries."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadp_data.bench import score_zoo
from sadp_data.bench.score_zoo import ZooConfig, exact_gradient_norms, run_zoo_bench, variant_scores
from sadp_data.bench.zoo_models import ZOO, ZooEntry, ZooModel, per_example_ce, rate_coded, synthetic_images
from sadp_data.scoring.scorer import SCORE_VARIANTS

pytest.importorskip("scipy")

STEP_KEYS = ("step_share", "step_share_ci", "step_call_share")
TINY = replace(ZooConfig.quick(), examples=16, timed_stages=())


def _spikes(current: torch.Tensor) -> torch.Tensor:
    """Heaviside spikes with a sigmoid surrogate gradient (straight-through)."""
    surrogate = torch.sigmoid(4 * (current - 0.5))
    return surrogate + ((current > 0.5).float() - surrogate).detach()


class TimeLoopNet(nn.Module):
    """``[T, B, 1, 28, 28]`` → per step (optionally ``fc1`` and spikes) → ``readout`` → mean over time."""

    def __init__(self, hidden: int | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden) if hidden else None
        self.readout = nn.Linear(hidden or 784, 10)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        steps = [frame.flatten(1) for frame in inputs]
        if self.fc1 is not None:
            steps = [_spikes(self.fc1(frame)) for frame in steps]
        return torch.stack([self.readout(frame) for frame in steps]).mean(0)


def _entry(name: str, hidden: int | None) -> ZooEntry:
    def build(entry: ZooEntry) -> ZooModel:
        return ZooModel(TimeLoopNet(hidden), rate_coded(entry.time_steps), per_example_ce)

    return ZooEntry(name, "torch", (1, 28, 28), 4, 10, build)


def test_exact_norms_through_the_shared_batch_match_one_forward_per_example() -> None:
    entry = _entry("hidden", 32)
    torch.manual_seed(0)
    zoo = entry.build(entry)
    images, labels = synthetic_images(entry.input_shape, 10, 6, seed=1)
    inputs = zoo.make_input(images, torch.Generator().manual_seed(1))
    norms, share, _ = exact_gradient_norms(zoo, inputs, labels, zoo.model.readout, seed=0)
    expected, expected_share = [], []
    for i in range(6):
        zoo.model.zero_grad()
        per_example_ce(zoo.model(inputs[:, i : i + 1]), labels[i : i + 1]).sum().backward()
        total = sum(float(p.grad.pow(2).sum()) for p in zoo.model.parameters())
        expected.append(total**0.5)
        expected_share.append(sum(float(p.grad.pow(2).sum()) for p in zoo.model.readout.parameters()) / total)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)
    np.testing.assert_allclose(share, expected_share, rtol=1e-4)
    assert 0.0 < share.min() and share.max() < 1.0  # fc1 carries part of the gradient


def test_a_linear_readout_alone_is_ranked_exactly_and_holds_the_whole_gradient() -> None:
    entry = _entry("linear", None)
    torch.manual_seed(0)
    zoo = entry.build(entry)
    images, labels = synthetic_images(entry.input_shape, 10, 16, seed=2)
    inputs = zoo.make_input(images, torch.Generator().manual_seed(2))
    scores, layer = variant_scores(zoo, inputs, labels, seed=0)
    assert layer is zoo.model.readout and set(scores) == set(SCORE_VARIANTS)
    norms, share, _ = exact_gradient_norms(zoo, inputs, labels, layer, seed=0)
    np.testing.assert_allclose(scores["spike_aware"], norms, rtol=1e-4)
    np.testing.assert_allclose(share, 1.0, rtol=1e-6)
    assert all(p.grad is None for p in zoo.model.parameters())  # nothing left behind

    result = run_zoo_bench(TINY, zoo=[entry], show_progress=False)
    stage = result["models"][0]["stages"]["trained"]
    assert stage["variants"]["spike_aware"]["spearman"] == pytest.approx(1.0)
    assert stage["variants"]["spike_aware"]["pearson"] == pytest.approx(1.0, abs=1e-6)
    assert stage["readout_share"]["median"] == pytest.approx(1.0)


def test_a_model_scored_with_layer_gets_every_variant_and_the_full_gradient_equals_the_exact_norm() -> None:
    """A zoo model that needs ``layer=`` for the readout scores (norse's LIFConvNet) must not pass it to
    ``full_gradient``, which scores every layer and refuses ``layer=``."""
    entry = _entry("named-readout", 32)
    torch.manual_seed(0)
    zoo = replace(entry.build(entry), layer="readout")
    images, labels = synthetic_images(entry.input_shape, 10, 8, seed=3)
    inputs = zoo.make_input(images, torch.Generator().manual_seed(3))
    scores, layer = variant_scores(zoo, inputs, labels, seed=0)
    assert set(scores) == set(SCORE_VARIANTS) and layer is zoo.model.readout
    norms, _, _ = exact_gradient_norms(zoo, inputs, labels, layer, seed=0)
    np.testing.assert_allclose(scores["full_gradient"], norms, rtol=1e-4)


def test_a_library_that_does_not_import_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snntorch", None)  # import snntorch raises ImportError
    config = replace(TINY, models=("snntorch_leaky_mlp",))
    (model,) = run_zoo_bench(config, show_progress=False)["models"]
    assert model["name"] == "snntorch_leaky_mlp" and "stages" not in model
    assert model["skipped"].startswith("snntorch does not import: ModuleNotFoundError: import of snntorch halted")


def test_unknown_model_names_are_refused_with_the_zoo() -> None:
    with pytest.raises(ValueError, match=r"unknown zoo model.*nope.*spiking_resnet18"):
        run_zoo_bench(replace(TINY, models=("nope",)), show_progress=False)


def test_cli_writes_the_zoo_json_and_plot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sadp_data.cli import main

    monkeypatch.setattr(score_zoo, "ZOO", (_entry("linear", None), _entry("hidden", 16)))
    out = tmp_path / "zoo.json"
    assert main(["bench", "score", "--zoo", "--quick", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert result["command"].startswith("sadp-data bench score --zoo") and "exact_norm" in result
    assert result["variants"] == list(SCORE_VARIANTS) and result["run"]["suite"] == "score"
    assert result["machine"]["cpu_count"] >= 1
    for model in result["models"]:
        assert set(model["stages"]) == {"init", "trained"}
        for name, stage in model["stages"].items():
            for variant, figures in stage["variants"].items():
                assert set(figures) == {
                    "spearman",
                    "spearman_ci",
                    "pearson",
                    "step_share",
                    "step_share_ci",
                    "step_call_share",
                }
                low, high = figures["spearman_ci"]
                assert -1.0 <= low <= high <= 1.0
                timed = name == "trained"  # ZooConfig.quick() times the trained stage only
                assert (figures["step_share"] is not None) == timed, (model["name"], name, variant)
    with pytest.raises(SystemExit):
        main(["bench", "score", "store", "--zoo", "--quick"])


@pytest.mark.slow
def test_a_spikingjelly_and_a_time_loop_model_run_through_the_zoo_bench() -> None:
    pytest.importorskip("spikingjelly.activation_based")
    pytest.importorskip("snntorch")
    config = replace(ZooConfig.quick(), models=("plif_fashion_multistep", "snntorch_leaky_mlp"), examples=8)
    result = run_zoo_bench(config, show_progress=False)
    assert [m["name"] for m in result["models"]] == ["plif_fashion_multistep", "snntorch_leaky_mlp"]
    for model in result["models"]:
        assert "failed" not in model and "skipped" not in model, model
        trained = model["stages"]["trained"]
        assert 0.0 < trained["readout_share"]["median"] <= 1.0
        assert trained["exact_norm"]["median"] > 0.0
        assert trained["variants"]["spike_aware"]["step_share"] is not None


def test_every_zoo_entry_names_its_library() -> None:
    assert {entry.library for entry in ZOO} == {"spikingjelly", "snntorch", "norse"}
    assert len({entry.name for entry in ZOO}) == len(ZOO)
