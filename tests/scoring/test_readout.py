"""Readout detection and time layout with model structures nobody here wrote (norse, snntorch, spikingjelly's zoo).

Every structure is rebuilt in plain torch so the tests run without those packages; the tests with the real
packages are skipped where they are not installed.
"""

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sadp_data import SpikeAwareScorer
from sadp_data.scoring.readout import ReadoutError

D, H, C = 8, 12, 5


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _exact_norms(model: nn.Module, readout: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """‖∂ℓ_i/∂(W, b)‖ of the readout, one example at a time."""
    norms = []
    for i in range(x.shape[0]):
        model.zero_grad()
        _ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in readout.parameters()))))
    return np.asarray(norms)


def _score(scorer: SpikeAwareScorer, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    out = model(x)
    scorer.step(torch.arange(x.shape[0]), out, y, _ce(out, y))
    return scorer.last_scores.numpy()


class LeakyIntegrator(nn.Module):
    """A leaky integrator without weights: ``v ← v + (i − v)/τ``; returns ``(v, state)`` like norse's cells."""

    def forward(self, current: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v = current / 2 if state is None else state + (current - state) / 2
        return v, v


class LeakyLinearCell(nn.Module):
    """Weights inside a stateful cell (norse's ``LILinearCell``): not an ``nn.Linear``, returns ``(v, state)``."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.input_weights = nn.Parameter(torch.randn(classes, features) / features**0.5)
        self.integrator = LeakyIntegrator()

    def forward(self, spikes: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.integrator(F.linear(spikes, self.input_weights), state)


def _spikes(current: torch.Tensor) -> torch.Tensor:
    """Heaviside spikes with a sigmoid surrogate gradient (straight-through)."""
    surrogate = torch.sigmoid(4 * (current - 0.5))
    return surrogate + ((current > 0.5).float() - surrogate).detach()


class SingleStepNet(nn.Module):
    """fc1 → spikes → readout, stepped by a Python loop; the readout is ``LeakyLinearCell`` or Linear + integrator."""

    def __init__(self, readout: str, steps: int = 4) -> None:
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(D, H)
        if readout == "cell":
            self.out = LeakyLinearCell(H, C)
        else:
            self.fc2, self.out = nn.Linear(H, C, bias=False), LeakyIntegrator()
        self.split = readout != "cell"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, voltages = None, []
        for _ in range(self.steps):
            spikes = _spikes(self.fc1(x))
            v, state = self.out(self.fc2(spikes) if self.split else spikes, state)
            voltages.append(v)
        return torch.stack(voltages).amax(0)


def test_detection_refuses_a_hidden_linear_when_a_weighted_cell_runs_after_it() -> None:
    torch.manual_seed(0)
    model = SingleStepNet("cell")
    scorer = SpikeAwareScorer(model)
    with pytest.raises(ReadoutError, match=r"'fc1' \(Linear\).*'out' \(LeakyLinearCell\).*runs after it.*layer="):
        _score(scorer, model, torch.rand(3, D), torch.randint(0, C, (3,)))


def test_a_readout_returning_a_tuple_is_refused_naming_it_and_the_fix() -> None:
    torch.manual_seed(0)
    model = SingleStepNet("cell")
    scorer = SpikeAwareScorer(model, layer="out")
    with pytest.raises(ReadoutError, match=r"'out' \(LeakyLinearCell\) returned a tuple.*nn\.Linear"):
        _score(scorer, model, torch.rand(3, D), torch.randint(0, C, (3,)))


def test_the_linear_plus_weightless_cell_form_is_detected_and_scored_exactly() -> None:
    """The fix the refusal names: the affine map as its own nn.Linear, the state in a cell without weights."""
    torch.manual_seed(1)
    model = SingleStepNet("split")
    x, y = torch.rand(5, D) * 3, torch.randint(0, C, (5,))
    expected = _exact_norms(model, model.fc2, x, y)
    scorer = SpikeAwareScorer(model)
    np.testing.assert_allclose(_score(scorer, model, x, y), expected, rtol=1e-4, atol=1e-7)
    assert scorer.layer is model.fc2


class LearnedNeuron(nn.Module):
    """An output neuron with a learnable decay and threshold (snntorch's ``Leaky(learn_beta=True)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta, self.threshold = nn.Parameter(torch.tensor(0.9)), nn.Parameter(torch.ones(C))

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        return _spikes(self.beta * current / self.threshold)


class WithOwnMatrix(nn.Module):
    """fc1 → fc2 → a learned output neuron; the model itself owns a weight matrix (a learned input projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Parameter(torch.eye(D))
        self.fc1, self.fc2, self.neuron = nn.Linear(D, H), nn.Linear(H, C), LearnedNeuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.fc2(_spikes(self.fc1(x @ self.projection))))


def test_neuron_parameters_after_the_readout_and_an_enclosing_model_with_weights_are_not_readouts() -> None:
    torch.manual_seed(2)
    model = WithOwnMatrix()
    scorer = SpikeAwareScorer(model)
    _score(scorer, model, torch.rand(4, D) * 3, torch.randint(0, C, (4,)))
    assert scorer.layer is model.fc2


class BatchFirstNet(nn.Module):
    """The hidden spikes of every step stacked batch-first ``[B, T, H]``, one plain ``nn.Linear`` call, mean over T."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.fc1, self.readout = nn.Linear(D, H), nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.linspace(0, 1, self.steps).reshape(1, -1, 1)
        spikes = _spikes(self.fc1(x).unsqueeze(1) + noise)  # [B, T, H]: every step differs
        return self.readout(spikes).mean(1)


def test_batch_first_readout_with_as_many_steps_as_examples_must_be_declared() -> None:
    torch.manual_seed(3)
    batch = 6
    model = BatchFirstNet(steps=batch)
    x, y = torch.rand(batch, D) * 2, torch.randint(0, C, (batch,))
    expected = _exact_norms(model, model.readout, x, y)
    with pytest.raises(ReadoutError, match=r"\[6, 6, 12\].*time_axis=0.*time_axis=1"):
        _score(SpikeAwareScorer(model), model, x, y)
    declared = SpikeAwareScorer(model, time_axis=1)
    np.testing.assert_allclose(_score(declared, model, x, y), expected, rtol=1e-4, atol=1e-7)
    for loss in (None, "cross_entropy"):
        scorer = SpikeAwareScorer(model, time_axis=1, loss=loss)
        np.testing.assert_allclose(_score(scorer, model, x, y), expected, rtol=1e-4, atol=1e-7)


def test_a_declared_time_axis_is_checked_against_the_recorded_shapes() -> None:
    torch.manual_seed(4)
    model = BatchFirstNet(steps=3)
    x, y = torch.rand(5, D) * 2, torch.randint(0, C, (5,))
    expected = _exact_norms(model, model.readout, x, y)
    np.testing.assert_allclose(_score(SpikeAwareScorer(model), model, x, y), expected, rtol=1e-4, atol=1e-7)
    with pytest.raises(ReadoutError, match=r"time_axis=0.*\[5, 3, 12\].*5 examples"):
        _score(SpikeAwareScorer(model, time_axis=0), model, x, y)
    with pytest.raises(ValueError, match="time_axis must be None, 0 or 1"):
        SpikeAwareScorer(model, time_axis=2)


def test_spikingjelly_multi_step_readouts_are_time_major_even_with_as_many_steps_as_examples() -> None:
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional
    from test_scorer import MultiStepMLP, T

    torch.manual_seed(5)
    batch = T
    model = MultiStepMLP()
    x, y = torch.rand(batch, D) * 3, torch.randint(0, C, (batch,))
    expected = []
    for i in range(batch):
        model.zero_grad()
        _ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        functional.reset_net(model)
        expected.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.readout.parameters()))))
    scores = _score(SpikeAwareScorer(model), model, x, y)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-7)


def _without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """spikingjelly's ResNet/VGG zoo imports torchvision only for ``load_state_dict_from_url`` (pretrained
    weights); where torchvision cannot be imported, torch.hub's function of the same name stands in."""
    try:
        import torchvision.models  # noqa: F401
    except (ImportError, RuntimeError):
        utils = types.ModuleType("torchvision.models.utils")
        utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        models = types.ModuleType("torchvision.models")
        models.utils = utils
        package = types.ModuleType("torchvision")
        package.models = models
        for name, module in (("torchvision", package), ("torchvision.models", models), (utils.__name__, utils)):
            monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("arch", ["spiking_resnet.spiking_resnet18", "sew_resnet.sew_resnet18"])
def test_spikingjelly_zoo_resnets_are_scored_at_their_fc(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("spikingjelly.activation_based")
    _without_torchvision(monkeypatch)
    import importlib

    from spikingjelly.activation_based import functional, neuron, surrogate

    module, builder = arch.split(".")
    build = getattr(importlib.import_module(f"spikingjelly.activation_based.model.{module}"), builder)
    extra = {"cnf": "ADD"} if module == "sew_resnet" else {}
    torch.manual_seed(6)
    model = build(num_classes=C, spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(), **extra)
    functional.set_step_mode(model, "m")
    model.eval()  # batch-norm statistics frozen: each example is scored as if alone
    steps, batch = 2, 2
    x, y = torch.rand(steps, batch, 3, 32, 32) * 2, torch.randint(0, C, (batch,))
    expected = []
    for i in range(batch):
        model.zero_grad()
        _ce(model(x[:, i : i + 1]).mean(0), y[i : i + 1]).sum().backward()
        functional.reset_net(model)
        expected.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.fc.parameters()))))
    scorer = SpikeAwareScorer(model)
    out = model(x).mean(0)
    scorer.step(torch.arange(batch), out, y, _ce(out, y))
    assert scorer.layer is model.fc
    np.testing.assert_allclose(scorer.last_scores.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_norse_lilinearcell_readout_is_refused_and_linear_plus_licell_is_scored() -> None:
    norse = pytest.importorskip("norse.torch")

    class NorseNet(nn.Module):
        def __init__(self, split: bool) -> None:
            super().__init__()
            self.fc1, self.lif, self.split = nn.Linear(D, H), norse.LIFCell(), split
            self.fc2, self.out = (nn.Linear(H, C), norse.LICell()) if split else (None, norse.LILinearCell(H, C))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = out = None
            voltages = []
            for _ in range(4):
                z, hidden = self.lif(self.fc1(x), hidden)
                v, out = self.out(self.fc2(z) if self.split else z, out)
                voltages.append(v)
            return torch.stack(voltages).amax(0) * 10

    torch.manual_seed(7)
    x, y = torch.rand(4, D) * 3, torch.randint(0, C, (4,))
    model = NorseNet(split=False)
    with pytest.raises(ReadoutError, match=r"'fc1'.*'out' \(LILinearCell\)"):
        _score(SpikeAwareScorer(model), model, x, y)
    with pytest.raises(ReadoutError, match=r"'out' \(LILinearCell\) returned a tuple"):
        _score(SpikeAwareScorer(model, layer="out"), model, x, y)
    model = NorseNet(split=True)
    expected = _exact_norms(model, model.fc2, x, y)
    np.testing.assert_allclose(_score(SpikeAwareScorer(model), model, x, y), expected, rtol=1e-4, atol=1e-7)


def test_snntorch_leaky_output_neurons_with_learned_decay_keep_the_linear_readout() -> None:
    snn = pytest.importorskip("snntorch")

    class SnnTorchNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(D, H), snn.Leaky(beta=0.9)
            self.fc2, self.lif2 = nn.Linear(H, C), snn.Leaky(beta=0.9, learn_beta=True, learn_threshold=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mem1, mem2, potentials = self.lif1.init_leaky(), self.lif2.init_leaky(), []
            for _ in range(4):
                spikes, mem1 = self.lif1(self.fc1(x), mem1)
                _, mem2 = self.lif2(self.fc2(spikes), mem2)
                potentials.append(mem2)
            return torch.stack(potentials).sum(0)

    torch.manual_seed(8)
    model = SnnTorchNet()
    x, y = torch.rand(4, D) * 3, torch.randint(0, C, (4,))
    expected = _exact_norms(model, model.fc2, x, y)
    scorer = SpikeAwareScorer(model)
    np.testing.assert_allclose(_score(scorer, model, x, y), expected, rtol=1e-4, atol=1e-7)
    assert scorer.layer is model.fc2
