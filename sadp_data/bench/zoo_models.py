"""The model zoo of ``sadp-data bench score --zoo``: spikingjelly, snntorch and norse networks on synthetic data.

Each ``ZooEntry`` builds a ``ZooModel``: the network as its users run it, wrapped so that one call maps
the input batch to the tensor the loss is computed from (spikingjelly's multi-step ``model(x).mean(0)``,
a Python loop over time steps for single-step models, snntorch's and norse's state-passing loops); an
input maker (direct encoding, rate coding or event frames drawn from a fixed generator); the
per-example loss; the neuron-state reset run after each batch; and ``layer=`` where the scorer needs it.
Sizes are cut to run on two CPU cores (``channels`` of the parametric-LIF nets, 32×32 or 28×28
inputs); architectures are the libraries' own.

The data are synthetic and learnable, made in-process: one smooth pattern per class (a random
low-resolution image upsampled, from a seed fixed per input shape, so training and held-out data
share it) mixed with uniform noise per example. Nothing is downloaded.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


@dataclass
class ZooModel:
    """A built zoo network and what a training loop needs around it."""

    model: nn.Module
    make_input: Callable[[Tensor, torch.Generator], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    reset: Callable[[nn.Module], None] | None = None
    layer: str | None = None
    note: str | None = None
    learning_rate: float | None = None  # the library tutorial's, where it differs from ZooConfig's


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model by name: its library (imported by ``build``; an ``ImportError`` marks it skipped)."""

    name: str
    library: str
    input_shape: tuple[int, ...]
    time_steps: int
    classes: int
    build: Callable[[ZooEntry], ZooModel]


def synthetic_images(shape: tuple[int, ...], classes: int, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` images in [0, 1] of ``shape`` with labels: a fixed per-class pattern (60 %) plus noise (40 %).

    The class patterns depend only on ``shape`` and ``classes``; ``seed`` draws the labels and the noise.
    """
    channels, height, width = shape
    patterns = torch.rand(classes, channels, 4, 4, generator=torch.Generator().manual_seed(1000 + classes + height))
    patterns = F.interpolate(patterns, size=(height, width), mode="bilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    noise = torch.rand(count, *shape, generator=generator)
    return 0.6 * patterns[labels] + 0.4 * noise, labels


def model_inputs(entry: ZooEntry, built: ZooModel, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` synthetic examples for ``entry``, encoded as its network takes them (``make_input``), and labels."""
    images, labels = synthetic_images(entry.input_shape, entry.classes, count, seed)
    return built.make_input(images, torch.Generator().manual_seed(seed)), labels


def readout_layer(variant: str, built: ZooModel) -> str | None:
    """The model's ``layer=`` for the readout variants; ``full_gradient`` scores every layer and takes none."""
    return None if variant == "full_gradient" else built.layer


def build_or_skip(entry: ZooEntry) -> ZooModel | str:
    """``entry`` built, or why it is skipped when its library does not import."""
    try:
        return entry.build(entry)
    except ImportError as error:
        return f"{entry.library} does not import: {type(error).__name__}: {error}"


def repeat_over_time(time_steps: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Direct encoding: the static image at every step, ``[T, B, ...]``."""
    return lambda images, generator: images.unsqueeze(0).repeat(time_steps, *([1] * images.dim()))


def rate_coded(time_steps: int, gain: float = 1.0) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Rate coding (as snntorch's ``spikegen.rate``): Bernoulli spikes, ``P = gain × pixel``, ``[T, B, ...]``."""

    def encode(images: Tensor, generator: torch.Generator) -> Tensor:
        probabilities = (gain * images).clamp(0, 1).unsqueeze(0).expand(time_steps, *images.shape)
        return torch.bernoulli(probabilities, generator=generator)

    return encode


def per_example_ce(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def torchvision_stubs() -> dict[str, types.ModuleType]:
    """Stand-ins for ``torchvision``, ``torchvision.models`` and ``torchvision.models.utils``, for
    ``sys.modules``: spikingjelly's zoo imports torchvision only for ``load_state_dict_from_url``, which
    torch.hub provides under the same name."""
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    models = types.ModuleType("torchvision.models")
    models.utils = utils  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.models = models  # type: ignore[attr-defined]
    return {"torchvision": package, "torchvision.models": models, utils.__name__: utils}


@contextmanager
def _torchvision_or_stub() -> Iterator[None]:
    """spikingjelly's model package imports torchvision only for ``load_state_dict_from_url`` (pretrained
    weights, unused here); where torchvision does not import, torch.hub's function of that name stands in
    for the import and the stub modules are taken out of ``sys.modules`` afterwards."""
    try:
        import torchvision.models  # noqa: F401
    except (ImportError, RuntimeError):
        pass
    else:
        yield
        return
    stubs = torchvision_stubs()
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def _spikingjelly() -> tuple[types.SimpleNamespace, types.ModuleType, types.ModuleType, types.ModuleType]:
    """``(the zoo builders used here, neuron, surrogate, functional)`` of spikingjelly's ``activation_based``."""
    with _torchvision_or_stub():
        from spikingjelly.activation_based import functional, neuron, surrogate
        from spikingjelly.activation_based.model import parametric_lif_net, sew_resnet, spiking_resnet, spiking_vgg
    models = types.SimpleNamespace(
        spiking_resnet18=spiking_resnet.spiking_resnet18,
        sew_resnet18=sew_resnet.sew_resnet18,
        spiking_vgg11_bn=spiking_vgg.spiking_vgg11_bn,
        parametric_lif_net=parametric_lif_net,
    )
    return models, neuron, surrogate, functional


class MeanOverTime(nn.Module):
    """A multi-step network's output ``[T, B, C]`` averaged over time, as spikingjelly's examples train it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs).mean(0)


class SingleStepLoop(nn.Module):
    """A single-step network called once per time step in a Python loop, outputs averaged over time."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: Tensor) -> Tensor:
        return torch.stack([self.net(frame) for frame in inputs]).mean(0)


def _sj_model(entry: ZooEntry, make: Callable[..., nn.Module], single_step: bool = False, **kwargs) -> ZooModel:
    _, neuron, surrogate, functional = _spikingjelly()
    kwargs.setdefault("spiking_neuron", neuron.LIFNode)
    net = make(surrogate_function=surrogate.ATan(), detach_reset=True, **kwargs)
    functional.set_step_mode(net, "s" if single_step else "m")
    model = SingleStepLoop(net) if single_step else MeanOverTime(net)
    return ZooModel(model, repeat_over_time(entry.time_steps), per_example_ce, reset=functional.reset_net)


def _spiking_resnet18(entry: ZooEntry) -> ZooModel:
    return _sj_model(entry, _spikingjelly()[0].spiking_resnet18, num_classes=entry.classes)


def _sew_resnet18(entry: ZooEntry) -> ZooModel:
    return _sj_model(entry, _spikingjelly()[0].sew_resnet18, num_classes=entry.classes, cnf="ADD")


def _spiking_vgg11_bn(entry: ZooEntry) -> ZooModel:
    return _sj_model(entry, _spikingjelly()[0].spiking_vgg11_bn, num_classes=entry.classes)


def _plif_fashion(single_step: bool) -> Callable[[ZooEntry], ZooModel]:
    def build(entry: ZooEntry) -> ZooModel:
        model, neuron, _, _ = _spikingjelly()
        return _sj_model(
            entry,
            model.parametric_lif_net.FashionMNISTNet,
            single_step,
            channels=16,
            spiking_neuron=neuron.ParametricLIFNode,
        )

    return build


def _dvs_gesture(entry: ZooEntry) -> ZooModel:
    built = _sj_model(entry, _spikingjelly()[0].parametric_lif_net.DVSGestureNet, channels=8)
    built.make_input = rate_coded(entry.time_steps, gain=0.5)  # sparse event frames, both polarities
    return built


class SnnTorchLeakyMLP(nn.Module):
    """snntorch's tutorial-5 network: 784-H-10 ``Leaky`` neurons, a Python loop over time, membrane record."""

    def __init__(self, time_steps: int, hidden: int = 1000, classes: int = 10) -> None:
        import snntorch

        super().__init__()
        self.time_steps = time_steps
        self.fc1, self.lif1 = nn.Linear(784, hidden), snntorch.Leaky(beta=0.95)
        self.fc2, self.lif2 = nn.Linear(hidden, classes), snntorch.Leaky(beta=0.95)

    def forward(self, inputs: Tensor) -> Tensor:
        flat = inputs.flatten(1)
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        membranes = []
        for _ in range(self.time_steps):
            spikes, mem1 = self.lif1(self.fc1(flat), mem1)
            _, mem2 = self.lif2(self.fc2(spikes), mem2)
            membranes.append(mem2)
        return torch.stack(membranes, dim=1)  # [B, T, C]


def _snntorch_rate_loss() -> Callable[[Tensor, Tensor], Tensor]:
    """snntorch's ``ce_rate_loss`` per example: cross-entropy at every step, averaged over time, on ``[B, T, C]``."""
    import snntorch.functional as SF

    rate_loss = SF.ce_rate_loss(reduction="none")
    return lambda outputs, targets: rate_loss(outputs.transpose(0, 1), targets)


def _snntorch_mlp(entry: ZooEntry) -> ZooModel:
    model = SnnTorchLeakyMLP(entry.time_steps, classes=entry.classes)
    return ZooModel(model, lambda images, generator: images, _snntorch_rate_loss())


class SnnTorchConvNet(nn.Module):
    """snntorch's tutorial-7 convolutional net (``init_hidden=True`` neurons in an ``nn.Sequential``)."""

    def __init__(self, time_steps: int, classes: int = 10) -> None:
        import snntorch
        from snntorch import surrogate

        super().__init__()
        self.time_steps = time_steps
        spike_grad = surrogate.fast_sigmoid(slope=25)
        self.net = nn.Sequential(
            nn.Conv2d(1, 12, 5),
            nn.MaxPool2d(2),
            snntorch.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True),
            nn.Conv2d(12, 64, 5),
            nn.MaxPool2d(2),
            snntorch.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, classes),
            snntorch.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True, output=True),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        from snntorch import utils

        utils.reset(self.net)
        return torch.stack([self.net(frame)[0] for frame in inputs], dim=1)  # output spikes [B, T, C]


def _snntorch_conv(entry: ZooEntry) -> ZooModel:
    model = SnnTorchConvNet(entry.time_steps, entry.classes)  # static input at every step, as in tutorial 7
    return ZooModel(model, repeat_over_time(entry.time_steps), _snntorch_rate_loss(), learning_rate=1e-2)


class NorseSequentialMLP(nn.Module):
    """norse's ``SequentialState`` (Linear, LIFCell, Linear, LICell) stepped over time; max voltage decodes."""

    def __init__(self, hidden: int = 256, classes: int = 10) -> None:
        import norse.torch as norse

        super().__init__()
        self.net = norse.SequentialState(
            nn.Linear(784, hidden), norse.LIFCell(), nn.Linear(hidden, classes), norse.LICell()
        )

    def forward(self, inputs: Tensor) -> Tensor:
        state, voltages = None, []
        for frame in inputs:
            voltage, state = self.net(frame.flatten(1), state)
            voltages.append(voltage)
        return torch.stack(voltages).amax(0)


def _norse_mlp(entry: ZooEntry) -> ZooModel:
    return ZooModel(NorseSequentialMLP(classes=entry.classes), rate_coded(entry.time_steps), per_example_ce)


class NorseLIFConvNet(nn.Module):
    """norse's MNIST task model ``LIFConvNet`` (``norse.task.mnist``, which imports torchvision, rebuilt from
    its parts): a constant-current LIF encoder, ``ConvNet4``, max voltage over time, log-softmax."""

    def __init__(self, time_steps: int, input_scale: float = 20.0) -> None:
        from norse.torch.models.conv import ConvNet4
        from norse.torch.module.encode import ConstantCurrentLIFEncoder

        super().__init__()
        self.encoder = ConstantCurrentLIFEncoder(seq_length=time_steps)
        self.rsnn = ConvNet4()
        self.input_scale = input_scale

    def forward(self, inputs: Tensor) -> Tensor:
        spikes = self.encoder(inputs.flatten(1) * self.input_scale)
        voltages = self.rsnn(spikes.reshape(spikes.shape[0], inputs.shape[0], 1, 28, 28))
        return torch.log_softmax(voltages.amax(0), dim=1)


def _norse_conv(entry: ZooEntry) -> ZooModel:
    return ZooModel(
        NorseLIFConvNet(entry.time_steps),
        lambda images, generator: images,
        lambda outputs, targets: F.nll_loss(outputs, targets, reduction="none"),
        layer="rsnn.fc1",
        note="the readout LILinearCell (weights inside a stateful cell, returns a tuple) is refused by the "
        "scorer; scored at the last nn.Linear, rsnn.fc1",
    )


#: The zoo, in the order the bench runs it.
ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("spiking_resnet18", "spikingjelly", (3, 32, 32), 4, 10, _spiking_resnet18),
    ZooEntry("sew_resnet18_add", "spikingjelly", (3, 32, 32), 4, 10, _sew_resnet18),
    ZooEntry("spiking_vgg11_bn", "spikingjelly", (3, 32, 32), 4, 10, _spiking_vgg11_bn),
    ZooEntry("plif_fashion_multistep", "spikingjelly", (1, 28, 28), 4, 10, _plif_fashion(False)),
    ZooEntry("plif_fashion_singlestep", "spikingjelly", (1, 28, 28), 4, 10, _plif_fashion(True)),
    ZooEntry("dvs_gesture_net", "spikingjelly", (2, 128, 128), 4, 11, _dvs_gesture),
    ZooEntry("snntorch_leaky_mlp", "snntorch", (1, 28, 28), 25, 10, _snntorch_mlp),
    ZooEntry("snntorch_conv", "snntorch", (1, 28, 28), 8, 10, _snntorch_conv),
    ZooEntry("norse_sequential_mlp", "norse", (1, 28, 28), 8, 10, _norse_mlp),
    ZooEntry("norse_lif_convnet", "norse", (1, 28, 28), 16, 10, _norse_conv),
)
