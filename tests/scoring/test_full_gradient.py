"""``score="full_gradient"``: the exact per-example gradient norm over every covered layer, from the training backward.

The reference is a per-example loop of ``torch.autograd.grad(loss_i, params)`` through the same batch
forward (batch norm in eval mode, so examples do not interact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sadp_data import SpikeAwareScorer
from sadp_data.store import ScoreStore

C = 3


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _spikes(current: torch.Tensor) -> torch.Tensor:
    surrogate = torch.sigmoid(4 * (current - 0.5))
    return surrogate + ((current > 0.5).float() - surrogate).detach()


class TimeLoopMLP(nn.Module):
    """Single-step SNN stepped by a Python loop: every layer runs once per time step on ``[B, ·]``."""

    def __init__(self, steps: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.steps = steps
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 7, bias=bias), nn.Linear(7, 5), nn.Linear(5, C, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v1 = v2 = 0
        out = []
        for _ in range(self.steps):
            v1 = 0.5 * v1 + self.fc1(x)
            s1 = _spikes(v1)
            v2 = 0.5 * v2 + self.fc2(s1)
            out.append(self.fc3(_spikes(v2)))
        return torch.stack(out).mean(0)


class Conv1dNet(nn.Module):
    """Conv1d with groups, reflect padding and no bias, then a linear readout; a spiking nonlinearity between."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1, groups=2, bias=False, padding_mode="reflect")
        self.conv2 = nn.Conv1d(6, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 4, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_spikes(self.conv2(_spikes(self.conv(x)))).flatten(1))


class SmallMapConvNet(nn.Module):
    """Convolutions on small feature maps, stepped by a Python loop: the ghost-norm path on unfolded patches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, groups=2, bias=False)
        self.fc = nn.Linear(16, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.fc(_spikes(self.conv2(_spikes(self.conv(x)))).flatten(1)) for _ in range(2)]).sum(0)


def _exact(model: nn.Module, out: torch.Tensor, y: torch.Tensor, params: list[nn.Parameter]) -> np.ndarray:
    losses = _ce(out, y)
    norms = []
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        norms.append(float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None))))
    return np.asarray(norms)


def _scored(scorer, model, x, y, weights=None, factor: float = 1.0, reset=None) -> np.ndarray:
    out = model(x)
    loss = scorer.step(torch.arange(x.shape[0]), out, y, _ce(out, y), weights)
    (loss * factor).backward()
    if reset is not None:
        reset(model)
    return scorer.last_scores.numpy()


def _check(model, x, y, reset=None, weights=None, factor=1.0) -> None:
    expected = _exact(model, model(x), y, list(model.parameters()))
    if reset is not None:
        reset(model)
    scorer = SpikeAwareScorer(model, score="full_gradient")
    scores = _scored(scorer, model, x, y, weights, factor, reset)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-7)
    scorer.remove()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("weights", "factor"), [(None, 1.0), (torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25]), 1.0), (None, 7.5)]
)
def test_time_loop_mlp_equals_the_exact_per_example_norm(bias, weights, factor) -> None:
    torch.manual_seed(0)
    model = TimeLoopMLP(bias=bias)
    x, y = torch.rand(5, 6) * 2, torch.randint(0, C, (5,))
    _check(model, x, y, weights=weights, factor=factor)


def test_conv1d_groups_reflect_padding_and_no_bias() -> None:
    torch.manual_seed(1)
    model = Conv1dNet()
    x, y = torch.rand(4, 4, 8) * 2, torch.randint(0, C, (4,))
    _check(model, x, y)


def test_conv2d_ghost_norm_on_small_feature_maps() -> None:
    torch.manual_seed(8)
    model = SmallMapConvNet()
    x, y = torch.rand(4, 4, 6, 6) * 2, torch.randint(0, C, (4,))
    _check(model, x, y)


def _sj_conv_net(container: bool) -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def lif() -> nn.Module:
        return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m")

    if container:
        conv = [layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)), lif()]
    else:
        conv = [layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4), lif()]
    net = nn.Sequential(*conv, layer.Conv2d(4, 4, 3, stride=2), lif(), layer.Flatten(), layer.Linear(4 * 3 * 3, C))
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics and affine parameters
                module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    return net.eval()


class _MeanOverTime(nn.Module):
    def __init__(self, net: nn.Module, steps: int = 3) -> None:
        super().__init__()
        self.net, self.steps = net, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1) * 2).mean(0)


@pytest.mark.parametrize("container", [False, True])
def test_spikingjelly_multi_step_conv_snn(container: bool) -> None:
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional

    torch.manual_seed(2)
    model = _MeanOverTime(_sj_conv_net(container))
    x, y = torch.rand(4, 2, 8, 8), torch.randint(0, C, (4,))
    _check(model, x, y, reset=functional.reset_net)


def test_scores_do_not_depend_on_batch_size_weights_or_gradient_accumulation() -> None:
    torch.manual_seed(3)
    model = TimeLoopMLP()
    x, y = torch.rand(6, 6) * 2, torch.randint(0, C, (6,))
    scorer = SpikeAwareScorer(model, score="full_gradient")
    whole = _scored(scorer, model, x, y)
    parts = []
    for half in (slice(0, 3), slice(3, 6)):  # accumulation: two micro-batches, each loss halved
        parts.append(_scored(scorer, model, x[half], y[half], weights=torch.tensor([4.0, 1.0, 0.1]), factor=0.5))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4)


def test_parameters_and_grads_are_bit_identical_to_training_without_the_scorer() -> None:
    torch.manual_seed(4)
    plain, hooked = TimeLoopMLP(), TimeLoopMLP()
    hooked.load_state_dict(plain.state_dict())
    scorer = SpikeAwareScorer(hooked, score="full_gradient")
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, hooked)]
    for _ in range(3):
        x, y = torch.rand(4, 6) * 2, torch.randint(0, C, (4,))
        for model, optimizer in zip((plain, hooked), optimizers, strict=True):
            optimizer.zero_grad()
            out = model(x)
            loss = scorer.step(torch.arange(4), out, y, _ce(out, y)) if model is hooked else _ce(out, y).mean()
            loss.backward()
            for a, b in zip(plain.parameters(), hooked.parameters(), strict=True):
                if model is hooked:
                    assert torch.equal(a.grad, b.grad)
            optimizer.step()
        assert scorer.last_scores is not None and scorer.last_scores.shape == (4,)
    assert scorer.full_gradient.hook_seconds > 0  # the bench's score time counts the norms computed in backward
    for a, b in zip(plain.parameters(), hooked.parameters(), strict=True):
        assert torch.equal(a, b)


def test_scores_reach_the_store_with_the_epoch_of_their_step_before_the_next_epoch_is_planned(tmp_path) -> None:
    torch.manual_seed(5)
    model = TimeLoopMLP()
    x, y = torch.rand(8, 6) * 2, torch.randint(0, C, (8,))
    with ScoreStore.create(tmp_path / "s.zarr", num_examples=8) as store:
        scorer = SpikeAwareScorer(model, store, score="full_gradient")
        store.begin_epoch(0, 1.0)
        for batch in (torch.arange(0, 4), torch.arange(4, 8)):  # the last batch of epoch 0
            out = model(x[batch])
            scorer.step(batch, out, y[batch], _ce(out, y[batch])).backward()
        snapshot = store.begin_epoch(1, 0.5)
        expected = _exact(model, model(x), y, list(model.parameters()))
        np.testing.assert_allclose(snapshot.scores, expected, rtol=1e-4)
        assert (snapshot.last_epoch == 0).all()


def test_compute_and_rescore_without_a_training_backward() -> None:
    torch.manual_seed(6)
    model = TimeLoopMLP()
    x, y = torch.rand(5, 6) * 2, torch.randint(0, C, (5,))
    expected = _exact(model, model(x), y, list(model.parameters()))
    scorer = SpikeAwareScorer(model, score="full_gradient")
    out = model(x)
    scores = scorer.compute(_ce(out, y), variants=("full_gradient",))["full_gradient"]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4)
    assert scorer.rescore([(x, y, torch.arange(5))]) == 5
    np.testing.assert_allclose(scorer.last_scores.numpy(), expected, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="full_gradient"):
        scorer.compute(_ce(model(x), y), variants=("spike_aware",))


def test_last_k_layers_and_the_uncovered_parameters() -> None:
    torch.manual_seed(7)
    model = TimeLoopMLP()
    model.decay = nn.Parameter(torch.ones(1))  # e.g. a PLIF neuron's learnable time constant
    x, y = torch.rand(5, 6) * 2, torch.randint(0, C, (5,))
    expected = _exact(model, model(x), y, [*model.fc2.parameters(), *model.fc3.parameters()])
    scorer = SpikeAwareScorer(model, score="full_gradient", full_gradient_layers=2)
    np.testing.assert_allclose(_scored(scorer, model, x, y), expected, rtol=1e-4)
    assert sorted(scorer.full_gradient.uncovered) == ["decay", "fc1.bias", "fc1.weight"]


def test_remove_takes_every_hook_off() -> None:
    model = TimeLoopMLP()
    scorer = SpikeAwareScorer(model, score="full_gradient")
    scorer.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    out = model(torch.rand(2, 6))
    assert out._backward_hooks is None or not out._backward_hooks


def test_misuse_is_refused_with_the_fix() -> None:
    model = TimeLoopMLP()
    with pytest.raises(ValueError, match="full_gradient_layers=k"):
        SpikeAwareScorer(model, layer="fc3", score="full_gradient")
    with pytest.raises(ValueError, match="full_gradient_layers applies"):
        SpikeAwareScorer(model, full_gradient_layers=1)
    scorer = SpikeAwareScorer(model, score="full_gradient")
    x, y = torch.rand(3, 6), torch.randint(0, C, (3,))
    out = model(x)
    scorer.step(torch.arange(3), out, y, _ce(out, y))
    with pytest.raises(RuntimeError, match="backward\\(\\) on that scalar"):
        _ce(out, y).mean().backward()


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_rows_add_up_to_the_batch_gradient(training: bool) -> None:
    """Batch norm in training mode couples examples: each example's term is its share, and the shares add up."""
    from sadp_data.scoring.gradient_norms import call_terms

    torch.manual_seed(9)
    norm = nn.BatchNorm2d(3).train(training)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 3, 5, 5) * 2 + 1  # [T, B, C, H, W], flattened as a multi-step layer does
    out = norm(x.flatten(0, 1)).view_as(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    lead, _, _, vector = call_terms(norm, x, grad)
    assert lead == (2, 4)
    torch.testing.assert_close(vector.sum((0, 1)), torch.cat([norm.weight.grad, norm.bias.grad]), rtol=1e-4, atol=1e-4)
