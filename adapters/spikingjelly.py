"""spikingjelly integration: the SNNs the demo and benchmarks train, and state reset.

Models are built from ``spikingjelly.activation_based`` layers in multi-step mode: the input is
repeated over ``T`` time steps (direct encoding), hidden layers are LIF neurons with an arctan
surrogate gradient, and the readout is a non-spiking ``Linear`` whose outputs are averaged over
time — the setting of DESIGN §1.1, where the spike-aware score is the exact readout gradient norm.
"""

from __future__ import annotations

import torch
from torch import nn


def _lif() -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")


class ConvSNN(nn.Module):
    """Two conv–BN–LIF–pool blocks and a linear readout; input ``[B, C, H, W]``, output mean logits ``[B, classes]``."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (16, 32),
        num_classes: int = 10,
        time_steps: int = 4,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        from spikingjelly.activation_based import functional, layer

        first, second = channels
        self.time_steps = time_steps
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
        self.classifier = layer.Linear(second * (image_size // 4) ** 2, num_classes)
        functional.set_step_mode(self, "m")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        frames = images.unsqueeze(0).expand(self.time_steps, *images.shape)
        return self.classifier(self.features(frames)).mean(0)


def reset(model: nn.Module) -> None:
    """Reset every neuron's state (call after each batch)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
