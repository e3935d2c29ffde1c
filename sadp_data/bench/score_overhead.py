"""Scoring overhead on models that call the readout once per time step, interleaved with a plain baseline.

snntorch's tutorial networks and norse's ``SequentialState`` networks run a Python loop over time
steps and call the readout ``nn.Linear`` once per step, so ``SpikeAwareScorer``'s forward hook fires
``T`` times per forward pass and ``step()`` sees ``T`` separate ``[B, C]`` calls. ``TimeLoopMLP``
mimics that pattern in plain torch (784-1000-10, a hand-written leaky integrate-and-fire neuron with
a fast-sigmoid surrogate gradient, ``T = 25``, outputs stacked to ``[T, B, 10]``; the loss is
cross-entropy on the spike count, as in snntorch's tutorial 5, or on the mean membrane potential of
the readout's logits).

``measure_step_overhead`` alternates steps with and without the scorer on the same model, the same
batch and the same optimizer, so the load of a shared machine reaches both alike; the overhead is
``median(with) / median(without) − 1``, with a bootstrap interval over steps. ``zoo_overhead`` does the
same for the zoo's networks with a Python time loop (snntorch, norse, spikingjelly single-step) at batch
128. Run it as ``python -m sadp_data.bench.score_overhead [--only time-loop|spikingjelly|zoo]`` (JSON on stdout).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sadp_data.scoring.scorer import SCORE_VARIANTS, SpikeAwareScorer


class _Spike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid surrogate backward (snntorch's default slope 25)."""

    @staticmethod
    def forward(ctx, membrane: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(membrane)
        return (membrane > 0).to(membrane.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (membrane,) = ctx.saved_tensors
        return grad / (25.0 * membrane.abs() + 1.0) ** 2


def _leaky(current: torch.Tensor, membrane: torch.Tensor, beta: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of snntorch's ``Leaky`` (threshold 1, reset by subtraction): ``(spikes, membrane)``."""
    reset = (membrane > 1.0).to(membrane.dtype).detach()
    membrane = beta * membrane + current - reset
    return _Spike.apply(membrane - 1.0), membrane


class TimeLoopMLP(nn.Module):
    """784-1000-10 LIF network with a Python time loop: ``fc2`` (the readout) runs once per step.

    ``forward`` returns the output spikes stacked ``[T, B, 10]`` when ``spiking_readout`` (snntorch's
    tutorial), else the time-mean of ``fc2``'s logits ``[B, 10]`` (a non-spiking readout).
    """

    def __init__(self, time_steps: int = 25, spiking_readout: bool = True) -> None:
        super().__init__()
        self.time_steps = time_steps
        self.spiking_readout = spiking_readout
        self.fc1 = nn.Linear(784, 1000)
        self.fc2 = nn.Linear(1000, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)
        mem1 = torch.zeros(flat.shape[0], 1000)
        mem2 = torch.zeros(flat.shape[0], 10)
        records = []
        for _ in range(self.time_steps):
            spikes1, mem1 = _leaky(self.fc1(flat), mem1)  # fc1 per step, as in snntorch's tutorial
            logits = self.fc2(spikes1)
            if self.spiking_readout:
                spikes2, mem2 = _leaky(logits, mem2)
                records.append(spikes2)
            else:
                records.append(logits)
        stacked = torch.stack(records)
        return stacked if self.spiking_readout else stacked.mean(0)


def _interval(ratios: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval of ``median(with) / median(without) − 1`` from paired step times."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, ratios.shape[0], (rounds, ratios.shape[0]))
    values = np.median(ratios[picks, 0], axis=1) / np.median(ratios[picks, 1], axis=1) - 1.0
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def measure_step_overhead(
    model: nn.Module,
    outputs_of: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 30,
    batch_size: int = 128,
    loss: str | None = "cross_entropy",
    reset: Callable[[nn.Module], None] | None = None,
    seed: int = 0,
    *,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    image_shape: tuple[int, ...] = (1, 28, 28),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    score: str = "spike_aware",
    layer: str | None = None,
    warmup: int = 3,
) -> dict[str, float]:
    """Median step time with and without the scorer, interleaved, and the scorer's share of a step.

    One step is forward, loss, (``scorer.step``), backward and an Adam update; the model's parameters
    are updated, so time a copy whose state may change. ``outputs_of`` maps the model's output to the
    tensor the loss is computed from. ``batch`` is ``(inputs, targets)`` (default: ``batch_size``
    random images of ``image_shape``, 10 classes), ``loss_fn`` the per-example loss (default
    cross-entropy), ``score`` and ``layer`` go to ``SpikeAwareScorer``; ``warmup`` pairs of steps are
    not timed (layer detection, allocator, numba). With ``score="full_gradient"`` the scoring runs in
    hooks during backward: ``score_time_s`` adds their time (``hook_seconds``) to the ``step()`` call's;
    the plain steps keep the layer hooks attached (their backward hooks return at once), so it slightly
    understates the cost. Returns ``step_time_s`` (without),
    ``scored_step_time_s`` (with), ``score_time_s`` (median time inside ``scorer.step``), ``overhead_fraction``
    (``scored / plain − 1``) with its 95 % bootstrap interval, and ``score_fraction`` (score time ÷ step time).
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, labels = (
        batch if batch is not None else (torch.rand(batch_size, *image_shape), torch.randint(0, 10, (batch_size,)))
    )
    per_example_loss = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="none"))
    indices = torch.arange(labels.shape[0])
    scorer = SpikeAwareScorer(model, loss=loss, score=score, layer=layer)
    plain, scored, score_times = [], [], []

    def hook_seconds() -> float:
        return 0.0 if scorer.full_gradient is None else scorer.full_gradient.hook_seconds

    def one_step(scored_step: bool) -> None:
        start = time.perf_counter()
        outputs = outputs_of(model(images))
        per_example = per_example_loss(outputs, labels)
        in_hooks = hook_seconds()
        if scored_step:
            before = time.perf_counter()
            total = scorer.step(indices, outputs, labels, per_example)
            score_times.append(time.perf_counter() - before)
        else:
            scorer.discard_pending()
            total = per_example.mean()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if scored_step:
            score_times[-1] += hook_seconds() - in_hooks
        optimizer.step()
        if reset is not None:
            reset(model)
        (scored if scored_step else plain).append(time.perf_counter() - start)

    for _ in range(warmup):
        one_step(True)
        one_step(False)
    plain.clear(), scored.clear(), score_times.clear()
    for step in range(steps):
        for scored_step in (step % 2 == 0, step % 2 == 1):  # alternate which goes first
            one_step(scored_step)
    scorer.remove()
    step_time, scored_time = float(np.median(plain)), float(np.median(scored))
    low, high = _interval(np.stack([np.asarray(scored), np.asarray(plain)], axis=1))
    score_time = float(np.median(score_times))
    return {
        "step_time_s": step_time,
        "scored_step_time_s": scored_time,
        "score_time_s": score_time,
        "overhead_fraction": scored_time / step_time - 1.0,
        "overhead_interval": [low, high],
        "score_fraction": score_time / step_time,
    }


def time_loop_overhead(
    steps: int = 30, batch_size: int = 128, time_steps: int = 25, score: str = "spike_aware"
) -> dict[str, dict[str, float]]:
    """``measure_step_overhead`` on ``TimeLoopMLP`` with a spiking readout (spike-count loss) and a
    non-spiking one (mean logits, where ``loss="cross_entropy"`` takes the closed form)."""
    torch.manual_seed(0)
    spiking = TimeLoopMLP(time_steps, spiking_readout=True)
    mean_logits = TimeLoopMLP(time_steps, spiking_readout=False)
    return {
        "time_loop_spiking": measure_step_overhead(spiking, lambda out: out.sum(0), steps, batch_size, score=score),
        "time_loop_mean_logits": measure_step_overhead(mean_logits, lambda out: out, steps, batch_size, score=score),
    }


def spikingjelly_overhead(
    steps: int = 30, batch_size: int = 128, time_steps: int = 4, score: str = "spike_aware"
) -> dict[str, dict[str, float]]:
    """``measure_step_overhead`` on the spikingjelly ``MlpSNN`` and ``ConvSNN`` (multi-step, one readout call)."""
    from sadp_data.adapters.spikingjelly import ConvSNN, MlpSNN, reset

    torch.manual_seed(0)
    return {
        name: measure_step_overhead(model, lambda out: out, steps, batch_size, reset=reset, score=score)
        for name, model in (("mlp_snn", MlpSNN(time_steps=time_steps)), ("conv_snn", ConvSNN(time_steps=time_steps)))
    }


#: The zoo's networks that call their readout once per time step from a Python loop.
TIME_LOOP_ZOO: tuple[str, ...] = (
    "plif_fashion_singlestep",
    "snntorch_leaky_mlp",
    "snntorch_conv",
    "norse_sequential_mlp",
    "norse_lif_convnet",
)


def zoo_overhead(
    names: tuple[str, ...] = TIME_LOOP_ZOO, steps: int = 30, batch_size: int = 128, score: str = "spike_aware"
) -> dict[str, dict[str, Any]]:
    """``measure_step_overhead`` on networks of ``bench.zoo_models.ZOO`` at a training batch size, keyed ``zoo/<name>``.

    The zoo bench times batch 16 and 6 steps, where the scorer's fixed per-step cost (a few Python calls
    and one small ``autograd.grad``) dominates a tiny step; this times the batch the libraries' tutorials
    train with, on the zoo's class-template images. A network whose library does not import gives
    ``{"skipped": reason}``.
    """
    from sadp_data.bench.zoo_models import ZOO, build_or_skip, model_inputs, readout_layer

    entries = {entry.name: entry for entry in ZOO}
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = entries[name]
        torch.manual_seed(0)
        built = build_or_skip(entry)
        if isinstance(built, str):
            result[f"zoo/{name}"] = {"skipped": built}
            continue
        inputs, labels = model_inputs(entry, built, batch_size, seed=0)
        figures = measure_step_overhead(
            built.model,
            lambda out: out,
            steps,
            batch=(inputs, labels),
            loss_fn=built.loss,
            reset=built.reset,
            score=score,
            layer=readout_layer(score, built),
        )
        result[f"zoo/{name}"] = {"batch_size": batch_size, "time_steps": entry.time_steps, **figures}
    return result


def main(argv: list[str] | None = None) -> None:
    """Print the time-loop, spikingjelly and time-loop zoo overheads as JSON (threads: torch's default);
    ``--json PATH`` also writes ``{"command", "machine", "results"}`` there."""
    import argparse
    import sys
    from pathlib import Path

    from sadp_data.bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--only", choices=("time-loop", "spikingjelly", "zoo"), default=None)
    parser.add_argument("--score", choices=SCORE_VARIANTS, default="spike_aware")
    parser.add_argument("--json", type=Path, default=None, help="also write the results with the command and machine")
    args = parser.parse_args(argv)
    result: dict[str, dict[str, Any]] = {}
    if args.only in (None, "time-loop"):
        result.update(time_loop_overhead(args.steps, args.batch_size, score=args.score))
    if args.only in (None, "spikingjelly"):
        result.update(spikingjelly_overhead(args.steps, args.batch_size, score=args.score))
    if args.only in (None, "zoo"):
        result.update(zoo_overhead(steps=args.steps, batch_size=args.batch_size, score=args.score))
    print(json.dumps(result, indent=2))
    if args.json is not None:
        command = "python -m sadp_data.bench.score_overhead " + " ".join(sys.argv[1:] if argv is None else argv)
        record = {"command": command.strip(), "machine": machine_info(), "results": result}
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
