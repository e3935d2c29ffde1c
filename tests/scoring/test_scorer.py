"""SpikeAwareScorer: the score is the exact readout gradient norm of each example's loss."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sadp_data import ScoreStore, SpikeAwareScorer
from sadp_data.scoring.gradient_norms import readout_gradient_norm

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

T, B, H, C = 4, 6, 12, 5


def _lif(step_mode: str = "m") -> nn.Module:
    return neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode=step_mode)


class MultiStepMLP(nn.Module):
    """[B, D] -> repeat T -> Linear -> LIF -> Linear readout (optionally -> LIF) -> mean over T."""

    def __init__(self, spiking_readout: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Sequential(layer.Linear(8, H), _lif())
        self.readout = layer.Linear(H, C)
        self.output_neurons = _lif() if spiking_readout else None
        functional.set_step_mode(self, "m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.readout(self.hidden(x.unsqueeze(0).repeat(T, 1, 1)))
        if self.output_neurons is not None:
            z = self.output_neurons(z)
        return z.mean(0)


class SingleStepMLP(nn.Module):
    """The same network stepped through time by a Python loop (single-step mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif, self.fc2 = nn.Linear(8, H), _lif("s"), nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.fc2(self.lif(self.fc1(x))) for _ in range(T)]).mean(0)


def _exact_readout_norms(model: nn.Module, readout: nn.Linear, x, y, loss_fn) -> np.ndarray:
    norms = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        functional.reset_net(model)
        norms.append(float(torch.sqrt(readout.weight.grad.pow(2).sum() + readout.bias.grad.pow(2).sum())))
    return np.asarray(norms)


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _mse_rates(out, y):
    return F.mse_loss(out, F.one_hot(y, C).float(), reduction="none").mean(1)


@pytest.mark.parametrize(
    ("model_factory", "loss_fn"),
    [
        (lambda: MultiStepMLP(), _ce),
        (lambda: MultiStepMLP(spiking_readout=True), _mse_rates),
        (lambda: MultiStepMLP(spiking_readout=True), _ce),
        (SingleStepMLP, _ce),
    ],
    ids=["multistep-ce", "spiking-readout-mse", "spiking-readout-ce", "singlestep-ce"],
)
def test_score_equals_exact_readout_gradient_norm(model_factory, loss_fn) -> None:
    torch.manual_seed(0)
    model = model_factory()
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    readout = model.readout if hasattr(model, "readout") else model.fc2
    expected = _exact_readout_norms(model, readout, x, y, loss_fn)
    scorer = SpikeAwareScorer(model)
    out = model(x)
    scorer.step(torch.arange(B), out, y, loss_fn(out, y))
    functional.reset_net(model)
    assert scorer.layer is readout
    np.testing.assert_allclose(scorer.last_scores.numpy(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("time_steps", "inputs", "classes"), [(4, 64, 10), (25, 100, 3)], ids=["ghost", "per-example"])
def test_readout_gradient_norm_is_exact_in_both_forms(time_steps, inputs, classes) -> None:
    """The ghost norm (``[T, T]`` Gram matrices) and the materialised per-example gradient, whichever
    ``matrix_sq_norms`` picks for the shape, both equal ``‖Σ_t δ_t s_tᵀ‖² + ‖Σ_t δ_t‖²`` formed directly."""
    generator = torch.Generator().manual_seed(0)
    spikes = (torch.rand(time_steps, 7, inputs, generator=generator) > 0.7).float()
    deltas = torch.randn(time_steps, 7, classes, generator=generator)
    weight_grads = torch.einsum("tbc,tbh->bch", deltas, spikes)
    expected = (weight_grads.pow(2).sum((1, 2)) + deltas.sum(0).pow(2).sum(1)).sqrt()
    np.testing.assert_allclose(readout_gradient_norm(spikes, deltas, True).numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        readout_gradient_norm(spikes, deltas, False).numpy(), weight_grads.pow(2).sum((1, 2)).sqrt().numpy(), rtol=1e-5
    )


def test_nonspiking_readout_matches_design_closed_form() -> None:
    """‖δ‖·sqrt(1 + ‖r̄‖²) with δ = softmax(o) − onehot(y) and r̄ the hidden firing rates (docs/method.md §1)."""
    torch.manual_seed(1)
    model = MultiStepMLP()
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    rates = {}

    def record_rates(module, inputs, output) -> None:
        rates["r"] = inputs[0].mean(0).detach()

    model.readout.register_forward_hook(record_rates)
    scorer = SpikeAwareScorer(model)
    out = model(x)
    scores = scorer.scores(_ce(out, y))
    delta = torch.softmax(out, 1) - F.one_hot(y, C)
    closed = delta.norm(dim=1) * torch.sqrt(1 + rates["r"].pow(2).sum(1))
    torch.testing.assert_close(scores, closed.detach(), rtol=1e-5, atol=1e-7)


def test_step_returns_weighted_mean_and_feeds_the_store(tmp_path: Path) -> None:
    model = MultiStepMLP()
    with ScoreStore.create(tmp_path / "s.zarr", 100) as store:
        scorer = SpikeAwareScorer(model, store)
        x, y = torch.rand(B, 8), torch.randint(0, C, (B,))
        idx, w = torch.arange(10, 10 + B), torch.linspace(0.5, 2.0, B)
        out = model(x)
        per_example = _ce(out, y)
        loss = scorer.step(idx, out, y, per_example, w)
        torch.testing.assert_close(loss, (per_example * w).mean())
        loss.backward()
        store.flush()
        np.testing.assert_allclose(store.scores()[10 : 10 + B], scorer.last_scores.numpy())
        assert store.seen()[10 : 10 + B].tolist() == [1] * B


def test_no_grad_passes_are_ignored_and_eval_mode_forwards_score() -> None:
    torch.manual_seed(3)
    model = MultiStepMLP()
    scorer = SpikeAwareScorer(model, layer="readout")
    with torch.no_grad():
        model(torch.rand(B, 8))
    functional.reset_net(model)
    with pytest.raises(RuntimeError, match="no classifier forward pass was recorded"):
        scorer.scores(torch.ones(B, requires_grad=True))
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    out = model(x)
    expected = scorer.scores(_ce(out, y))
    functional.reset_net(model)
    model.eval()  # e.g. frozen batch-norm statistics: scored the same way
    out = model(x)
    torch.testing.assert_close(scorer.scores(_ce(out, y)), expected)


def test_rescore_scores_batches_without_training(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = MultiStepMLP()
    model.eval()
    store = ScoreStore.create(tmp_path / "s.zarr", 20)
    scorer = SpikeAwareScorer(model, store, layer="readout")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(20, 8) * 3, torch.randint(0, C, (20,))
    batches = [(x[i : i + 5], y[i : i + 5], torch.arange(i, i + 5)) for i in (0, 5, 10)]
    assert scorer.rescore(batches, _ce, reset=functional.reset_net) == 15
    seen = store.seen()
    assert seen[:15].tolist() == [1] * 15 and seen[15:].tolist() == [0] * 5
    out = model(x[:5])
    torch.testing.assert_close(torch.from_numpy(store.scores()[:5].copy()), scorer.scores(_ce(out, y[:5])))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    store.close()


def test_errors_explain_what_to_do() -> None:
    model = MultiStepMLP()
    scorer = SpikeAwareScorer(model)
    x, y = torch.rand(B, 8), torch.randint(0, C, (B,))
    out = model(x)
    with pytest.raises(ValueError, match="reduction='none'"):
        scorer.step(torch.arange(B), out, y, F.cross_entropy(out, y))
    with pytest.raises(ValueError, match=r"mean\(1\)"):
        scorer.step(torch.arange(B), out, y, F.mse_loss(out, torch.zeros_like(out), reduction="none"))
    with pytest.raises(ValueError, match="outputs has 6 rows but there are 3 indices"):
        scorer.step(torch.arange(3), out, y[:3], _ce(out, y)[:3])
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        SpikeAwareScorer(nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(ValueError, match="no layer named 'head'"):
        SpikeAwareScorer(model, layer="head")
    detached = SpikeAwareScorer(model, layer="hidden.0")
    out = model(x)
    loss = _ce(out.detach().requires_grad_(), y)
    with pytest.raises(RuntimeError, match="does not feed this loss"):
        detached.scores(loss)


def test_remove_takes_the_hooks_off() -> None:
    model = MultiStepMLP()
    scorer = SpikeAwareScorer(model)
    scorer.remove()
    model(torch.rand(B, 8))
    assert not model.readout._forward_hooks


@pytest.mark.parametrize("spiking_readout", [False, True])
def test_declared_cross_entropy_gives_the_same_spike_aware_score_without_autograd(spiking_readout, monkeypatch) -> None:
    """With loss='cross_entropy', a mean-logit readout takes the closed form (no autograd.grad); a spiking
    readout, whose outputs are not the mean logits, keeps the exact autograd path. Scores agree either way."""
    torch.manual_seed(2)
    model = MultiStepMLP(spiking_readout)
    x, y = torch.rand(B, 8) * 3, torch.randint(0, C, (B,))
    exact = SpikeAwareScorer(model)
    out = model(x)
    expected = exact.scores(_ce(out, y), out, y)
    functional.reset_net(model)
    exact.remove()
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    fast = SpikeAwareScorer(model, loss="cross_entropy")
    out = model(x)
    scores = fast.scores(_ce(out, y), out, y)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)
    assert len(calls) == (1 if spiking_readout else 0)
