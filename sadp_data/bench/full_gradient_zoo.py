"""``full_gradient`` vs ``spike_aware`` on spikingjelly's zoo ResNets: share of a training step, and ranking fidelity.

Both ResNets (``spiking_resnet18``, ``sew_resnet18``; LIF neurons, multi-step, images repeated over ``T``)
are trained for ``train_steps`` steps on synthetic class-template data (a fixed random image per class
plus noise), then, with batch norm in eval mode, ``examples`` held-out examples are scored by both
variants and by the exact per-example gradient norm over all parameters (one backward per example).
The overhead is ``bench.score_overhead.measure_step_overhead``'s (interleaved steps, medians), run for
each variant twice in alternating order. Run ``python -m sadp_data.bench.full_gradient_zoo`` (JSON).
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from sadp_data.bench.gpu import build_model, zoo_torchvision
from sadp_data.bench.score_overhead import measure_step_overhead
from sadp_data.scoring.scorer import SpikeAwareScorer

MODELS = ("spiking_resnet18", "sew_resnet18")


def _templates(classes: int, image: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(classes, 3, image, image, generator=generator), generator


def _batch(templates: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, templates.shape[0], (size,), generator=generator)
    noise = torch.rand(size, *templates.shape[1:], generator=generator)
    return (templates[labels] + noise).mul(1.5), labels


def _exact_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, reset) -> np.ndarray:
    norms = []
    for i in range(images.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images[i : i + 1]), labels[i : i + 1]).backward()
        reset(model)
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))))
    model.zero_grad(set_to_none=True)
    return np.asarray(norms)


def _scores(model: nn.Module, score: str, images: torch.Tensor, labels: torch.Tensor, reset) -> np.ndarray:
    scorer = SpikeAwareScorer(model, score=score)
    out = model(images)
    scorer.step(torch.arange(images.shape[0]), out, labels, F.cross_entropy(out, labels, reduction="none")).backward()
    reset(model)
    model.zero_grad(set_to_none=True)
    scorer.remove()
    return scorer.last_scores.numpy()


def fidelity(
    name: str,
    train_steps: int = 32,
    examples: int = 32,
    batch_size: int = 16,
    time_steps: int = 2,
    image: int = 16,
    classes: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Spearman of ``full_gradient`` and ``spike_aware`` with the exact full per-example norm after training,
    and ``full_gradient``'s largest relative deviation from it (it covers every parameter of these nets)."""
    from sadp_data.adapters.spikingjelly import reset

    torch.manual_seed(seed)
    model = build_model(name, time_steps, image, classes)
    templates, generator = _templates(classes, image, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(train_steps):
        images, labels = _batch(templates, batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        reset(model)
    model.eval()
    images, labels = _batch(templates, examples, generator)
    exact = _exact_norms(model, images, labels, reset)
    full = _scores(model, "full_gradient", images, labels, reset)
    readout = _scores(model, "spike_aware", images, labels, reset)
    return {
        "spearman_full_gradient": float(stats.spearmanr(full, exact)[0]),
        "spearman_spike_aware": float(stats.spearmanr(readout, exact)[0]),
        "max_relative_error_full_gradient": float(np.max(np.abs(full - exact) / exact)),
    }


def overhead(
    name: str, steps: int = 20, batch_size: int = 16, time_steps: int = 2, image: int = 32, rounds: int = 2
) -> dict[str, list[float]]:
    """``overhead_fraction`` (scored step ÷ plain step − 1) per variant, ``rounds`` runs each, alternating."""
    from sadp_data.adapters.spikingjelly import reset

    result: dict[str, list[float]] = {"spike_aware": [], "full_gradient": []}
    for round_ in range(rounds):
        for score in ("spike_aware", "full_gradient") if round_ % 2 == 0 else ("full_gradient", "spike_aware"):
            torch.manual_seed(round_)
            model = build_model(name, time_steps, image)
            figures = measure_step_overhead(
                model, lambda out: out, steps, batch_size, reset=reset, score=score, image_shape=(3, image, image)
            )
            result[score].append(figures["overhead_fraction"])
    return result


def main() -> None:
    """Print both measurements for both ResNets as JSON."""
    zoo_torchvision()
    print(json.dumps({name: {"fidelity": fidelity(name), "overhead": overhead(name)} for name in MODELS}, indent=2))


if __name__ == "__main__":
    main()
