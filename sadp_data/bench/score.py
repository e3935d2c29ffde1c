"""Score fidelity: how well each score variant ranks examples by their true gradient norm.

For every setting — model (conv SNN, MLP SNN) × loss (cross-entropy on the outputs, MSE on them
against one-hot targets) × readout (non-spiking mean logits, spiking LIF output neurons) × training
stage (initialisation, after 1 epoch, after ``epochs`` epochs) — the bench takes ``examples`` held-out
Fashion-MNIST test images and computes

* the exact per-example gradient norm over *all* parameters (one backward per example, batch norm
  in eval mode so examples do not interact), and the exact readout-layer gradient norm;
* every score variant of ``SpikeAwareScorer`` on the same examples in one batched pass;
* Spearman and Pearson correlation of each variant with the true norm, and the number of examples
  whose ``spike_aware`` score falls below the exact readout-layer norm (relative tolerance 1e-4:
  the score *is* that norm, so this must be 0).

It also measures the scoring overhead on the demo model: the time of the hook plus
``scorer.step`` (score and enqueue to a ``ScoreStore``) divided by the time of a whole training step.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from sadp_data.scoring.scorer import SCORE_VARIANTS, SpikeAwareScorer
from sadp_data.sources.datasets import FashionMNIST
from sadp_data.store import ScoreStore

#: The variants this bench compares in one batched pass (``full_gradient`` needs its own scorer's layer hooks).
VARIANTS = tuple(name for name in SCORE_VARIANTS if name != "full_gradient")


@dataclass(frozen=True)
class ScoreBenchConfig:
    """Sizes of the fidelity bench (defaults: ≤ 10 min on 2 CPU cores)."""

    train_size: int = 6000
    examples: int = 256
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    time_steps: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> ScoreBenchConfig:
        return cls(train_size=512, examples=48, epochs=2)


def _build(model_kind: str, spiking_readout: bool, time_steps: int) -> nn.Module:
    from sadp_data.adapters.spikingjelly import ConvSNN, MlpSNN

    if model_kind == "conv":
        return ConvSNN(time_steps=time_steps, spiking_readout=spiking_readout)
    return MlpSNN(time_steps=time_steps, spiking_readout=spiking_readout)


def _loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(outputs, targets, reduction="none")
    return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[1]).to(outputs.dtype), reduction="none").mean(1)


def _bn_eval(model: nn.Module) -> None:
    """Training mode everywhere except batch norm (fixed statistics: examples do not interact)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _exact_norms(model: nn.Module, readout: nn.Linear, images, labels, loss_kind) -> tuple[np.ndarray, np.ndarray]:
    from sadp_data.adapters.spikingjelly import reset

    _bn_eval(model)
    params = [p for p in model.parameters() if p.requires_grad]
    total, head = [], []
    for i in range(images.shape[0]):
        model.zero_grad(set_to_none=True)
        _loss(loss_kind, model(images[i : i + 1]), labels[i : i + 1]).sum().backward()
        reset(model)
        total.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in params if p.grad is not None))))
        head.append(float(torch.sqrt(readout.weight.grad.pow(2).sum() + readout.bias.grad.pow(2).sum())))
    model.zero_grad(set_to_none=True)
    return np.asarray(total), np.asarray(head)


def _variant_scores(model: nn.Module, images, labels, loss_kind, chunk: int = 64) -> dict[str, np.ndarray]:
    from sadp_data.adapters.spikingjelly import reset

    _bn_eval(model)
    scorer = SpikeAwareScorer(model)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    for start in range(0, images.shape[0], chunk):
        x, y = images[start : start + chunk], labels[start : start + chunk]
        outputs = model(x)
        scores = scorer.compute(_loss(loss_kind, outputs, y), outputs, y, variants=VARIANTS)
        reset(model)
        for name, values in scores.items():
            parts[name].append(values.numpy())
    scorer.remove()
    return {name: np.concatenate(values) for name, values in parts.items()}


def _train_epoch(model: nn.Module, optimizer, train: FashionMNIST, loss_kind: str, config, epoch: int) -> None:
    from sadp_data.adapters.spikingjelly import reset

    model.train()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    for start in range(0, len(train), config.batch_size):
        batch = order[start : start + config.batch_size]
        images = train.images[batch].unsqueeze(1).float().div_(255.0)
        loss = _loss(loss_kind, model(images), train.labels[batch]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reset(model)


def _correlations(
    scores: dict[str, np.ndarray], truth: np.ndarray
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Spearman and Pearson of each variant with the truth; ``None`` where a variant is constant.

    A constant score (e.g. the loss of a spiking readout that never fires) carries no ranking at
    all; it is reported as ``null`` rather than a number.
    """
    spearman: dict[str, float | None] = {}
    pearson: dict[str, float | None] = {}
    for name, values in scores.items():
        if np.ptp(values) == 0 or np.ptp(truth) == 0:
            spearman[name] = pearson[name] = None
            continue
        spearman[name] = float(stats.spearmanr(values, truth).statistic)
        pearson[name] = float(stats.pearsonr(values, truth).statistic)
    return spearman, pearson


def measure_overhead(config: ScoreBenchConfig, steps: int = 20, batch_size: int = 128) -> dict[str, float]:
    """Scoring time (hook + score + enqueue) ÷ training-step time on the demo model, medians.

    ``score_time_s`` is the time of ``scorer.step`` (readout gradients, norms, validation and the
    store update); ``hook_time_s`` the cost of the forward hook: one readout call on the readout's
    real input through the module (its hooks run) less the same ``F.linear`` without hooks, median of
    200 pairs (timing whole forward passes with and without the hook cannot resolve microseconds on
    a shared machine).
    """
    from sadp_data.adapters.spikingjelly import ConvSNN, reset

    torch.manual_seed(config.seed)
    model = ConvSNN(time_steps=config.time_steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    images = torch.rand(batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (batch_size,))
    indices = torch.arange(batch_size)
    weights = torch.ones(batch_size)
    step_times, score_times = [], []
    with tempfile.TemporaryDirectory() as scratch:
        store = ScoreStore.create(Path(scratch) / "s.zarr", batch_size)
        scorer = SpikeAwareScorer(model, store)
        for step in range(steps + 3):
            start = time.perf_counter()
            outputs = model(images)
            per_example = F.cross_entropy(outputs, labels, reduction="none")
            before = time.perf_counter()
            loss = scorer.step(indices, outputs, labels, per_example, weights)
            scoring = time.perf_counter() - before
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            reset(model)
            if step >= 3:  # the first steps pay one-off costs (layer detection, allocations)
                step_times.append(time.perf_counter() - start)
                score_times.append(scoring)
        captured: list[torch.Tensor] = []
        capture = scorer.layer.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        model(images)
        capture.remove()
        readout_input, layer = captured[-1].detach(), scorer.layer
        hook_times = []
        for _ in range(200):  # the readout with the scorer's hook, less the same readout call without hooks
            begin = time.perf_counter()
            layer(readout_input)
            hooked = time.perf_counter() - begin
            begin = time.perf_counter()
            F.linear(readout_input, layer.weight, layer.bias)
            hook_times.append(hooked - (time.perf_counter() - begin))
            scorer.discard_pending()
        reset(model)
        store.close()
    step_time, score_time = float(np.median(step_times)), float(np.median(score_times))
    hook_time = float(np.median(hook_times))
    return {
        "step_time_s": step_time,
        "score_time_s": score_time,
        "hook_time_s": hook_time,
        "overhead_fraction": (score_time + hook_time) / step_time,
    }


def run_score_bench(
    config: ScoreBenchConfig, data_dir: str | Path | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Run every setting; returns ``{"settings": [...], "overhead_fraction": float, ...}``."""
    train = FashionMNIST(data_dir, "train", limit=config.train_size)
    test = FashionMNIST(data_dir, "test", limit=config.examples)
    images = test.images.unsqueeze(1).float().div_(255.0)
    labels = test.labels
    stages = [0, 1, config.epochs]
    combos = [(m, lo, r) for m in ("conv", "mlp") for lo in ("ce", "mse") for r in (False, True)]
    settings: list[dict[str, Any]] = []
    samples: dict[str, dict[str, np.ndarray]] = {}
    with tqdm(total=len(combos) * len(stages), desc="bench score", unit="setting", disable=not show_progress) as bar:
        for model_kind, loss_kind, spiking in combos:
            torch.manual_seed(config.seed)
            model = _build(model_kind, spiking, config.time_steps)
            optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
            readout = model.readout.classifier
            trained = 0
            for stage in stages:
                while trained < stage:
                    _train_epoch(model, optimizer, train, loss_kind, config, trained)
                    trained += 1
                truth, head = _exact_norms(model, readout, images, labels, loss_kind)
                scores = _variant_scores(model, images, labels, loss_kind)
                spearman, pearson = _correlations(scores, truth)
                violations = int(np.sum(scores["spike_aware"] < head * (1 - 1e-4) - 1e-12))
                name = (
                    f"{model_kind}/{loss_kind}/{'spiking' if spiking else 'nonspiking'}-readout/"
                    f"{'init' if stage == 0 else f'epoch{stage}'}"
                )
                settings.append(
                    {
                        "name": name,
                        "model": model_kind,
                        "loss": loss_kind,
                        "spiking_readout": spiking,
                        "epochs_trained": stage,
                        "spearman": spearman,
                        "pearson": pearson,
                        "bound_violations": violations,
                        "n_examples": int(images.shape[0]),
                        "readout_share_of_norm": float(np.median(head / np.maximum(truth, 1e-30))),
                    }
                )
                samples[name] = {"truth": truth, **scores}
                bar.update(1)
    overhead = measure_overhead(config)
    return {
        "settings": settings,
        "overhead_fraction": overhead["overhead_fraction"],
        "overhead": overhead,
        "config": config.__dict__,
        "_samples": samples,
    }


def _cell(value: float | None) -> str:
    return "constant" if value is None else f"{value:.3f}"


def format_score_table(result: dict[str, Any]) -> str:
    """Spearman per variant and setting, as a Markdown table."""
    header = "| setting | " + " | ".join(VARIANTS) + " | violations |"
    lines = [header, "|---" * (len(VARIANTS) + 2) + "|"]
    for setting in result["settings"]:
        cells = " | ".join(_cell(setting["spearman"][name]) for name in VARIANTS)
        lines.append(f"| {setting['name']} | {cells} | {setting['bound_violations']} |")
    overhead = result["overhead"]
    lines.append("")
    lines.append(
        f"scoring overhead: {1000 * overhead['score_time_s']:.2f} ms score + {1000 * overhead['hook_time_s']:.2f} ms "
        f"hook per step of "
        f"{1000 * overhead['step_time_s']:.1f} ms = {100 * result['overhead_fraction']:.2f} %"
    )
    return "\n".join(lines)


def plot_scores(result: dict[str, Any], path: str | Path) -> None:
    """A grid of log-log scatter plots: spike-aware score vs true gradient norm, one per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["_samples"])
    columns = 6
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.7 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        data = result["_samples"][name]
        axis.loglog(data["truth"], data["spike_aware"], ".", markersize=3, alpha=0.6, label="spike_aware")
        axis.loglog(data["truth"], data["loss"], ".", markersize=3, alpha=0.4, label="loss")
        setting = next(s for s in result["settings"] if s["name"] == name)
        axis.set_title(f"{name}\nρ={_cell(setting['spearman']['spike_aware'])}", fontsize=7)
        axis.tick_params(labelsize=6)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=6)
    figure.supxlabel("true per-example gradient norm (all parameters)")
    figure.supylabel("score")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
