"""Score variants and the fused cross-entropy CUDA kernel (on the simulator in CI)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sadp_data import SpikeAwareScorer
from sadp_data.scoring._closed_form import (
    cross_entropy_scores,
    cross_entropy_scores_torch,
    mean_logit_scores,
    mean_logit_scores_torch,
    simulate_cross_entropy_scores,
)

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional
from test_scorer import B, C, MultiStepMLP


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cuda_kernel_matches_torch_reference(scale: float) -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((257, 11)) * scale).astype(np.float32)
    targets = rng.integers(0, 11, 257)
    rate_sq = rng.random(257).astype(np.float32) * 5
    simulated = simulate_cross_entropy_scores(logits, targets, rate_sq)
    reference = cross_entropy_scores_torch(
        torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(rate_sq)
    )
    for name in ("grad_bound", "rate"):
        np.testing.assert_allclose(simulated[name], reference[name].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fused_cpu_kernel_matches_torch_reference(layout: str) -> None:
    rng = np.random.default_rng(1)
    steps, rows, classes, features = 5, 67, 11, 130
    logits = torch.from_numpy((rng.standard_normal((steps, rows, classes)) * 8).astype(np.float32))
    spikes = torch.from_numpy((rng.random((steps, rows, features)) < 0.3).astype(np.float32))
    spikes[:, :3] = torch.from_numpy(rng.random((steps, 3, features)).astype(np.float32))  # graded inputs too
    if layout == "transposed":  # batch-major storage, time-major view: the kernel reads strided arrays
        logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
        spikes = spikes.transpose(0, 1).contiguous().transpose(0, 1)
    outputs = logits.mean(dim=0)
    outputs[7, 2] += 0.5  # one entry off the time-mean: the gap both report
    targets = torch.from_numpy(rng.integers(0, classes, rows))
    fused, gap, scale = mean_logit_scores(logits, outputs, targets, spikes)
    reference, ref_gap, ref_scale = mean_logit_scores_torch(logits, outputs, targets, spikes)
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=2e-5, atol=1e-6)
    assert gap == pytest.approx(ref_gap, rel=1e-4) and gap == pytest.approx(0.5, rel=1e-3)
    assert scale == pytest.approx(ref_scale, rel=1e-6)
    with pytest.raises(ValueError, match=r"class indices in \[0, 11\)"):
        mean_logit_scores(logits, outputs, torch.full((rows,), 11), spikes)
    wide, *_ = mean_logit_scores(logits.double(), outputs.double(), targets, spikes.double())  # torch path
    np.testing.assert_allclose(wide.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)


def test_variants_agree_where_theory_says_they_must() -> None:
    torch.manual_seed(3)
    model = MultiStepMLP()
    scorer = SpikeAwareScorer(model)
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    out = model(x)
    loss = F.cross_entropy(out, y, reduction="none")
    scores = scorer.compute(loss, out, y, variants=("spike_aware", "rate", "grad_bound", "loss"))
    # Non-spiking readout of mean logits: the rate form is the exact readout gradient norm.
    torch.testing.assert_close(scores["rate"], scores["spike_aware"], rtol=1e-5, atol=1e-7)
    delta = torch.softmax(out, 1) - F.one_hot(y, C)
    torch.testing.assert_close(scores["grad_bound"], delta.norm(dim=1).detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores["loss"], loss.detach())
    assert torch.all(scores["spike_aware"] >= scores["grad_bound"] - 1e-6)  # sqrt(1 + ‖r̄‖²) ≥ 1


def test_closed_form_cross_entropy_path_matches_autograd() -> None:
    torch.manual_seed(4)
    model = MultiStepMLP()
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    autograd = SpikeAwareScorer(model, score="rate")
    out = model(x)
    expected = autograd.scores(F.cross_entropy(out, y, reduction="none"), out, y)
    autograd.remove()
    functional.reset_net(model)
    closed = SpikeAwareScorer(model, score="rate", loss="cross_entropy", layer="readout")
    out = model(x)
    torch.testing.assert_close(closed.scores(F.cross_entropy(out, y, reduction="none"), out, y), expected)


def test_spiking_readout_rate_form_ignores_the_surrogate_but_spike_aware_does_not() -> None:
    torch.manual_seed(5)
    model = MultiStepMLP(spiking_readout=True)
    scorer = SpikeAwareScorer(model)
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    out = model(x)
    loss = F.mse_loss(out, F.one_hot(y, C).float(), reduction="none").mean(1)
    scores = scorer.compute(loss, out, y, variants=("spike_aware", "rate"))
    assert not torch.allclose(scores["spike_aware"], scores["rate"])


def test_variant_errors() -> None:
    model = MultiStepMLP()
    with pytest.raises(ValueError, match="score must be one of"):
        SpikeAwareScorer(model, score="entropy")
    with pytest.raises(ValueError, match="loss must be None or 'cross_entropy'"):
        SpikeAwareScorer(model, loss="mse")
    scorer = SpikeAwareScorer(model, score="grad_bound")
    out = model(torch.rand(B, 8))
    with pytest.raises(ValueError, match="need the outputs"):
        scorer.compute(out.sum(1), None)
    with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
        cross_entropy_scores(torch.zeros(2, 5), torch.tensor([0, 5]))
