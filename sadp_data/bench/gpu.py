"""The GPU bench (``bash bench/gpu.sh``, or ``python -m sadp_data.bench.gpu``): three parts, one JSON.

1. ``plan``: ``plan_epoch`` on the device (numba.cuda and torch backends) against ``torch.randperm`` and
   ``torch.multinomial`` for N = 10⁶ … 10⁹ where memory allows, as ratios and as a share of the
   bandwidth bound (``sadp_data.bench.gpu_plan``).
2. ``scorer``: ``SpikeAwareScorer.step``'s share of a training step of spikingjelly's ``spiking_resnet18`` and
   ``sew_resnet18`` (batch 128, T = 4, 3×32×32, multi-step, torch neuron backend). Three kinds of step
   run interleaved: with the scorer (``step_s``), with a plain mean loss instead (``plain_step_s``), and
   with the scorer between two device synchronisations (``scorer_s``: its own time, without overlap).
   ``share`` is ``scorer_s / step_s``; ``share_by_difference`` is ``1 − plain_step_s / step_s``.
3. ``wrap``: one epoch of synthetic device-resident data through ``sadp_data.wrap`` at keep 0.5 against
   keep 1.0, with the bench harness's training step (``harness.epoch_steps``: scorer, store, weighted
   loss); ``efficiency`` is the measured speedup over the theoretical one (N / K).

The zoo imports torchvision only to download pretrained weights; where torchvision does not import, a
stub module holding torch.hub's ``load_state_dict_from_url`` stands in (the JSON says which was used).
``--dry-run`` runs all three parts at tiny sizes on the CPU (numba.cuda under ``NUMBA_ENABLE_CUDASIM=1``)
and still writes the JSON, with ``"device": "cpu (dry run)"``. Every part stops starting new work when
its share of ``--budget-s`` is spent; the JSON is rewritten after each part, so a cut-short run keeps
what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ZOO = ("spiking_resnet18", "sew_resnet18")
#: Untimed epochs of the wrap part: the first plans from a filled store and from the scorer's own scores
#: (each a first call of its own) land on no timed epoch.
WRAP_WARM_EPOCHS = 2


@dataclass(frozen=True)
class GpuBenchSizes:
    """Sizes of every part: the full run, or ``dry_run()`` for a CPU check of the whole script."""

    plan_sizes: tuple[int, ...] = (10**6, 10**7, 10**8, 10**9)
    copy_mb: int = 2048
    batch: int = 128
    time_steps: int = 4
    image: int = 32
    warm_steps: int = 3
    timed_steps: int = 10
    wrap_examples: int = 128 * 64
    wrap_epochs: int = 3
    wrap_models: tuple[str, ...] = ("conv", ZOO[0])

    @classmethod
    def dry_run(cls) -> GpuBenchSizes:
        return cls(
            plan_sizes=(2000,),
            copy_mb=4,
            batch=4,
            time_steps=2,
            image=8,
            warm_steps=1,
            timed_steps=1,
            wrap_examples=16,
            wrap_epochs=1,
            wrap_models=("conv",),
        )


def zoo_torchvision() -> str:
    """Make spikingjelly's model zoo importable; returns ``torchvision <version>`` or ``stub``."""
    try:
        import torchvision

        return f"torchvision {torchvision.__version__}"
    except (ImportError, RuntimeError):
        from sadp_data.bench.zoo_models import torchvision_stubs

        sys.modules.update(torchvision_stubs())
        return "stub"


class StaticInput(nn.Module):
    """Wraps a multi-step zoo model: images ``[B, C, H, W]`` repeated over T steps in, mean logits out."""

    def __init__(self, net: nn.Module, time_steps: int) -> None:
        super().__init__()
        self.net, self.time_steps = net, time_steps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.unsqueeze(0).expand(self.time_steps, *images.shape)).mean(0)


def build_model(name: str, time_steps: int, image: int = 32, num_classes: int = 10) -> nn.Module:
    """``conv`` (the demo's ConvSNN for 3×image×image) or a zoo ResNet in multi-step mode with LIF neurons."""
    if name == "conv":
        from sadp_data.adapters.spikingjelly import ConvSNN

        return ConvSNN(in_channels=3, num_classes=num_classes, time_steps=time_steps, image_size=image)
    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet, spiking_resnet

    module, extra = (sew_resnet, {"cnf": "ADD"}) if name.startswith("sew") else (spiking_resnet, {})
    net = getattr(module, name)(
        num_classes=num_classes, spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(), **extra
    )
    functional.set_step_mode(net, "m")
    return StaticInput(net, time_steps)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_scorer_share(name: str, device: str, sizes: GpuBenchSizes, scratch: Path) -> dict[str, Any]:
    """Step time with and without ``scorer.step``, and the scorer's own time, for one zoo model."""
    import torch
    import torch.nn.functional as F

    from sadp_data.adapters.spikingjelly import reset
    from sadp_data.scoring.scorer import SpikeAwareScorer
    from sadp_data.store import ScoreStore

    torch.manual_seed(0)
    model = build_model(name, sizes.time_steps, sizes.image).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    store = ScoreStore.create(scratch / f"scorer-{name}", sizes.batch)
    scorer = SpikeAwareScorer(model, store, loss="cross_entropy")
    images = torch.rand(sizes.batch, 3, sizes.image, sizes.image, device=device)
    labels = torch.randint(0, 10, (sizes.batch,), device=device)
    indices = torch.arange(sizes.batch)

    def step(kind: str) -> float:
        outputs = model(images)
        per_example = F.cross_entropy(outputs, labels, reduction="none")
        scorer_seconds = 0.0
        if kind == "plain":
            scorer.discard_pending()
            loss = per_example.mean()
        else:
            if kind == "scorer":
                _sync(device)
            begin = time.perf_counter()
            loss = scorer.step(indices, outputs, labels, per_example)
            if kind == "scorer":
                _sync(device)
                scorer_seconds = time.perf_counter() - begin
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reset(model)
        return scorer_seconds

    def timed(kind: str) -> tuple[float, float]:
        _sync(device)
        begin = time.perf_counter()
        scorer_seconds = step(kind)
        _sync(device)
        return time.perf_counter() - begin, scorer_seconds

    for _ in range(sizes.warm_steps):
        for kind in ("step", "plain", "scorer"):
            step(kind)
    times: dict[str, list[float]] = {"step": [], "plain": [], "scorer": []}
    for _ in range(sizes.timed_steps):
        for kind in times:
            whole, own = timed(kind)
            times[kind].append(own if kind == "scorer" else whole)
    scorer.remove()
    store.close()
    step_s, plain_s, scorer_s = (statistics.median(times[kind]) for kind in ("step", "plain", "scorer"))
    return {
        "model": name,
        "step_s": step_s,
        "plain_step_s": plain_s,
        "scorer_s": scorer_s,
        "share": scorer_s / step_s,
        "share_by_difference": 1.0 - plain_s / step_s,
    }


def measure_wrap_epoch(name: str, device: str, sizes: GpuBenchSizes, scratch: Path) -> dict[str, Any]:
    """Epoch time through ``wrap`` at keep 0.5 and 1.0 (medians over timed epochs after ``WRAP_WARM_EPOCHS``)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from sadp_data import wrap
    from sadp_data.kernels import sample_size
    from sadp_data.sampler import SADPSampler
    from sadp_data.scoring.scorer import SpikeAwareScorer
    from sadp_data.store import ScoreStore

    from .harness import Run, epoch_steps
    from .loader_common import fill_scores
    from .training_data import DemoConfig

    count = sizes.wrap_examples
    config = DemoConfig(train_size=count, batch_size=sizes.batch, time_steps=sizes.time_steps, epochs=10**6)
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(
        torch.rand(count, 3, sizes.image, sizes.image, generator=generator).to(device),
        torch.randint(0, 10, (count,), generator=generator).to(device),
    )
    runs = {}
    for keep in (1.0, 0.5):
        torch.manual_seed(0)
        model = build_model(name, sizes.time_steps, sizes.image).to(device)
        store = ScoreStore.create(scratch / f"wrap-{name}-{keep}", count)
        fill_scores(store, count)
        sampler = SADPSampler(store, keep, num_examples=count, batch_size=sizes.batch, warmup_epochs=0)
        loader = wrap(DataLoader(dataset, batch_size=sizes.batch), sampler)
        scorer = SpikeAwareScorer(model, store, loss="cross_entropy")
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        runs[keep] = Run(f"keep {keep}", model, optimizer, loader, sampler, scorer, store)
    for epoch in range(WRAP_WARM_EPOCHS + sizes.wrap_epochs):
        for keep in (1.0, 0.5) if epoch % 2 else (0.5, 1.0):
            run = runs[keep]
            _sync(device)
            begin = time.perf_counter()
            run.sampler.set_epoch(epoch)
            for _ in epoch_steps(run, epoch, config):
                pass
            _sync(device)
            if epoch >= WRAP_WARM_EPOCHS:
                run.time_per_epoch.append(time.perf_counter() - begin)
    for run in runs.values():
        run.scorer.remove()
        run.store.close()
    full, pruned = (statistics.median(runs[keep].time_per_epoch) for keep in (1.0, 0.5))
    theoretical = count / sample_size(count, 0.5)
    return {
        "model": name,
        "examples": count,
        "epoch_s_keep_1.0": full,
        "epoch_s_keep_0.5": pruned,
        "measured_speedup": full / pruned,
        "theoretical_speedup": theoretical,
        "efficiency": full / pruned / theoretical,
    }


def _part(result: dict[str, Any], key: str, names: tuple[str, ...], measure, deadline: float) -> None:
    """Fill ``result[key]`` with ``measure(name)`` per name; a name past ``deadline`` or that fails is skipped."""
    rows = result[key]["rows"]
    for name in names:
        if time.monotonic() > deadline:
            rows.append({"model": name, "skipped": "time budget spent before this model started"})
            continue
        try:
            rows.append(measure(name))
        except Exception as error:  # one model's failure must not cost the other parts their figures
            rows.append({"model": name, "skipped": f"{type(error).__name__}: {str(error)[:300]}"})


def run_gpu_bench(dry_run: bool, output: Path, budget_s: float) -> dict[str, Any]:
    """Every part in turn, the JSON at ``output`` rewritten after each; returns the result."""
    started, start_clock = time.time(), time.monotonic()
    import numba
    import spikingjelly  # noqa: F401
    import torch

    from .gpu_plan import run_plan_part

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU check")
    device = "cpu" if dry_run else "cuda"
    sizes = GpuBenchSizes.dry_run() if dry_run else GpuBenchSizes()
    result: dict[str, Any] = {
        "device": "cpu (dry run)" if dry_run else torch.cuda.get_device_name(0),
        "dry_run": dry_run,
        "versions": {"torch": torch.__version__, "numba": numba.__version__, "zoo_torchvision": zoo_torchvision()},
        "sizes": asdict(sizes),
        "scorer": {
            "rows": [],
            "settings": "see sizes; multi-step LIF (torch), SGD, loss=cross_entropy",
        },
        "wrap": {"rows": [], "settings": "device-resident TensorDataset, wrap(DataLoader), scorer and store"},
    }

    def write() -> None:
        result["run"] = {
            "command": " ".join(sys.argv),
            "started": started,
            "wall_s": time.monotonic() - start_clock,
            "platform": platform.platform(),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")

    def deadline(share: float) -> float:
        return start_clock + share * budget_s

    result["plan"] = run_plan_part(sizes.plan_sizes, device, sizes.copy_mb, deadline(0.6))
    write()
    with tempfile.TemporaryDirectory() as scratch:
        _part(result, "scorer", ZOO, lambda n: measure_scorer_share(n, device, sizes, Path(scratch)), deadline(0.75))
        write()
        _part(result, "wrap", sizes.wrap_models, lambda n: measure_wrap_epoch(n, device, sizes, Path(scratch)), 1e18)
    write()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sadp_data.bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (numba.cuda simulated)")
    parser.add_argument("--json", default=None, help="where the JSON goes (default bench/results/gpu.json)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget the parts share")
    args = parser.parse_args(argv)
    if args.dry_run:  # the plan part's children, fresh interpreters, simulate numba.cuda from their first import
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from .suite import default_results_dir

    output = Path(args.json) if args.json else default_results_dir() / "gpu.json"
    result = run_gpu_bench(args.dry_run, output, args.budget_s)
    from .gpu_plan import format_plan_table

    print(f"device: {result['device']}\n{format_plan_table(result['plan'])}")
    for key in ("scorer", "wrap"):
        for row in result[key]["rows"]:
            print(key, json.dumps(row))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
