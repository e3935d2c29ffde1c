"""spikingjelly integration: the SNNs the demo and benchmarks train, and state reset.

Models are built from ``spikingjelly.activation_based`` layers in multi-step mode: the input is
repeated over ``T`` time steps (direct encoding), hidden layers are LIF neurons with an arctan
surrogate gradient, and the readout is a non-spiking ``Linear`` whose outputs are averaged over
time — the setting of docs/method.md §1, where the spike-aware score is the exact readout gradient norm.
"""

from __future__ import annotations

import torch
from torch import nn


def _lif() -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")


class _Readout(nn.Module):
    """Linear readout applied at every step, then averaged over time; optionally through LIF neurons.

    Non-spiking: the output is the mean logit ``(1/T) Σ_t z_t``. Spiking: the output is the firing
    rate of LIF output neurons driven by ``z_t`` (as in spikingjelly's examples trained with MSE on
    rates).
    """

    def __init__(self, features: int, num_classes: int, spiking: bool) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer

        self.classifier = layer.Linear(features, num_classes)
        self.output_neurons = _lif() if spiking else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.classifier(hidden)
        if self.output_neurons is not None:
            z = self.output_neurons(z)
        return z.mean(0)


class MlpSNN(nn.Module):
    """Fully connected SNN: flatten, ``Linear–LIF`` hidden layers, readout; input ``[B, ...]``."""

    def __init__(
        self,
        in_features: int = 784,
        hidden: tuple[int, ...] = (256,),
        num_classes: int = 10,
        time_steps: int = 4,
        spiking_readout: bool = False,
    ) -> None:
        super().__init__()
        from spikingjelly.activation_based import functional, layer

        self.time_steps = time_steps
        blocks: list[nn.Module] = [layer.Flatten()]
        width = in_features
        for size in hidden:
            blocks += [layer.Linear(width, size), _lif()]
            width = size
        self.features = nn.Sequential(*blocks)
        self.readout = _Readout(width, num_classes, spiking_readout)
        functional.set_step_mode(self, "m")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        frames = images.unsqueeze(0).expand(self.time_steps, *images.shape)
        return self.readout(self.features(frames))


class ConvSNN(nn.Module):
    """Two conv–BN–LIF–pool blocks and a readout; input ``[B, C, H, W]``, output ``[B, classes]``.

    The output is the mean logit over time, or with ``spiking_readout=True`` the firing rate of LIF
    output neurons. Static images are repeated over ``time_steps``; with ``sequence_input=True`` the
    input is already a sequence ``[B, T, C, H, W]`` (e.g. event frames) and is fed one step at a time.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (16, 32),
        num_classes: int = 10,
        time_steps: int = 4,
        image_size: int = 28,
        spiking_readout: bool = False,
        sequence_input: bool = False,
    ) -> None:
        super().__init__()
        from spikingjelly.activation_based import functional, layer

        first, second = channels
        self.time_steps = time_steps
        self.sequence_input = sequence_input
        self.features = nn.Sequential(
            layer.Conv2d(in_channels, first, 3, padding=1, bias=False),
            layer.BatchNorm2d(first),
            _lif(),
            layer.MaxPool2d(2),
            layer.Conv2d(first, second, 3, padding=1, bias=False),
            layer.BatchNorm2d(second),
            _lif(),
            layer.MaxPool2d(2),
            layer.Flatten(),
        )
        self.readout = _Readout(second * (image_size // 4) ** 2, num_classes, spiking_readout)
        functional.set_step_mode(self, "m")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.sequence_input:
            frames = images.transpose(0, 1)
        else:
            frames = images.unsqueeze(0).expand(self.time_steps, *images.shape)
        return self.readout(self.features(frames))


def reset(model: nn.Module) -> None:
    """Reset every neuron's state (call after each batch)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
