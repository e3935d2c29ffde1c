"""Score fidelity over a model zoo: ``sadp-data bench score --zoo``.

For every network of ``bench.zoo_models.ZOO`` (spikingjelly's ResNet-18, SEW ResNet-18, VGG-11-BN,
the parametric-LIF Fashion-MNIST net in multi-step and single-step mode and DVSGestureNet; snntorch's
``Leaky`` MLP and conv net; norse's ``SequentialState`` MLP and ``LIFConvNet``), at initialisation and
after ``train_steps`` Adam steps on synthetic data, the bench takes ``examples`` held-out examples and
measures

* the exact per-example gradient norm over all parameters, ``‖∂ℓ_i/∂θ‖``: one
  ``torch.autograd.grad(loss_i, params, retain_graph=True)`` per example through one shared batch
  forward in training mode (batch-norm normalises with the held-out batch's statistics, so this is
  example ``i``'s term of the batch gradient; dropout masks are drawn from a fixed seed);
* the readout's share of it, ``‖∂ℓ_i/∂θ_readout‖² / ‖∂ℓ_i/∂θ‖²`` (readout: the layer the scorer scores);
* every variant of ``sadp_data.scoring.scorer.SCORE_VARIANTS``, each from its own ``SpikeAwareScorer(model,
  score=v)`` used as a training loop uses it: forward (same seed, same batch), ``loss = scorer.step(...)``,
  ``loss.backward()``, then ``scorer.last_scores``;
* Spearman and Pearson correlation of each variant with the exact norm, Spearman with a 95 % bootstrap
  interval over examples (``scipy.stats.bootstrap``, percentile);
* the scorer's cost (at the stages in ``timed_stages``): ``bench.score_overhead.measure_step_overhead``
  training steps with and without the scorer interleaved (the model's state is restored afterwards).

JSON shape (``bench/results/score-zoo.json``)::

    {"config": {...ZooConfig...}, "command": str, "machine": {...}, "exact_norm": str, "variants": [str],
     "models": [{"name", "library", "input_shape", "time_steps", "classes", "batch_size",
                 "skipped": str (only when its library does not import; nothing else then),
                 "failed": str (only when building or scoring raised; the error),
                 "parameters", "layer", "note"?, "train_loss": {"first", "last"}, "wall_s",
                 "stages": {"init": STAGE, "trained": STAGE}}], "wall_s": float}
    STAGE = {"held_out_loss": float, "exact_norm": QUARTILES, "readout_share": QUARTILES,
             "variants": {variant: {"spearman", "spearman_ci": [lo, hi], "pearson",
                                    "step_share", "step_share_ci": [lo, hi], "step_call_share"}}}
    QUARTILES = {"median", "q25", "q75"}

``spearman``/``pearson`` are ``null`` where a variant's scores (or the norms) are constant.
``step_share`` is ``median(scored step) / median(plain step) − 1`` (everything the scorer adds, hooks,
``step()`` and work in ``backward()``), ``step_share_ci`` its bootstrap interval over steps and
``step_call_share`` the median time inside ``scorer.step`` ÷ the plain step; all three are ``null`` at
stages not in ``timed_stages``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from sadp_data.bench.score_overhead import measure_step_overhead
from sadp_data.bench.zoo_models import ZOO, ZooEntry, ZooModel, build_or_skip, model_inputs, readout_layer
from sadp_data.scoring.scorer import SCORE_VARIANTS, SpikeAwareScorer

EXACT_NORM = (
    "‖∂ℓ_i/∂θ‖ over all parameters: one torch.autograd.grad(loss_i, params, retain_graph=True) per example "
    "through one shared batch forward in training mode (batch norm uses the held-out batch's statistics; "
    "dropout masks from a fixed seed, the same as in every variant's forward)"
)
STAGES = ("init", "trained")


@dataclass(frozen=True)
class ZooConfig:
    """Sizes of the zoo bench (defaults: about 20 min on 2 CPU cores)."""

    examples: int = 32
    batch_size: int = 16
    train_steps: int = 40
    learning_rate: float = 1e-3
    timing_steps: int = 6
    timing_warmup: int = 2
    timed_stages: tuple[str, ...] = ("trained",)
    bootstrap_rounds: int = 1000
    seed: int = 0
    models: tuple[str, ...] | None = None

    @classmethod
    def quick(cls) -> ZooConfig:
        return cls(examples=8, batch_size=8, train_steps=3, timing_steps=1, bootstrap_rounds=200)


def _quartiles(values: np.ndarray) -> dict[str, float]:
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75)}


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman correlation along ``axis`` (Pearson of average ranks, so ties from resampling count right)."""
    rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def correlations(scores: np.ndarray, truth: np.ndarray, rounds: int, seed: int) -> dict[str, Any]:
    """Spearman (with a 95 % percentile bootstrap interval over examples) and Pearson of scores with truth.

    Constant scores or truth carry no ranking: every figure is then ``None``. Resamples in which
    either side is constant are left out of the interval.
    """
    if np.ptp(scores) == 0 or np.ptp(truth) == 0:
        return {"spearman": None, "spearman_ci": None, "pearson": None}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, truth.shape[0], (rounds, truth.shape[0]))
    resampled = _spearman(scores[picks], truth[picks], axis=1)
    low, high = np.nanquantile(resampled, [0.025, 0.975])
    return {
        "spearman": float(stats.spearmanr(scores, truth).statistic),
        "spearman_ci": [float(low), float(high)],
        "pearson": float(stats.pearsonr(scores, truth).statistic),
    }


def exact_gradient_norms(
    zoo: ZooModel, inputs: torch.Tensor, targets: torch.Tensor, readout: torch.nn.Module | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """``(‖∂ℓ_i/∂θ‖, readout share ‖∂ℓ_i/∂θ_readout‖² / ‖∂ℓ_i/∂θ‖², mean loss)`` per example, as ``EXACT_NORM`` says.

    Costs one forward and one backward through the whole batch graph per example; leaves no gradient
    on the parameters.
    """
    params = [p for p in zoo.model.parameters() if p.requires_grad]
    in_readout = {id(p) for p in readout.parameters()} if readout is not None else set()
    torch.manual_seed(seed)
    losses = zoo.loss(zoo.model(inputs), targets)
    total, head = [], []
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        squares = [(float(g.pow(2).sum()), id(p) in in_readout) for p, g in pairs]
        total.append(sum(s for s, _ in squares))
        head.append(sum(s for s, inside in squares if inside))
    mean_loss = float(losses.detach().mean())
    del losses
    if zoo.reset is not None:
        zoo.reset(zoo.model)
    total_sq = np.asarray(total)
    share = np.asarray(head) / np.maximum(total_sq, 1e-300) if readout is not None else None
    return np.sqrt(total_sq), share, mean_loss


def variant_scores(
    zoo: ZooModel, inputs: torch.Tensor, targets: torch.Tensor, seed: int
) -> tuple[dict[str, np.ndarray], torch.nn.Module | None]:
    """Each of ``SCORE_VARIANTS`` from its own scorer, used as a training step uses it; and the scored layer.

    forward → ``scorer.step`` → ``backward`` → ``scorer.last_scores`` (variants that finish their
    scores in ``backward`` are read after it); gradients are cleared afterwards.
    """
    indices = torch.arange(targets.shape[0])
    scores: dict[str, np.ndarray] = {}
    layer = None
    for variant in SCORE_VARIANTS:
        scorer = SpikeAwareScorer(zoo.model, score=variant, layer=readout_layer(variant, zoo))
        try:
            torch.manual_seed(seed)
            outputs = zoo.model(inputs)
            loss = scorer.step(indices, outputs, targets, zoo.loss(outputs, targets))
            loss.backward()
            scores[variant] = scorer.last_scores.detach().cpu().numpy().astype(np.float64)
            if layer is None:
                layer = scorer.layer
        finally:
            scorer.remove()
            zoo.model.zero_grad(set_to_none=True)
            if zoo.reset is not None:
                zoo.reset(zoo.model)
    return scores, layer


def step_shares(zoo: ZooModel, batch: tuple[torch.Tensor, torch.Tensor], config: ZooConfig) -> dict[str, dict]:
    """Per variant, the scorer's share of a training step (the steps move the model: restore its state after)."""
    shares = {}
    for variant in SCORE_VARIANTS:
        timing = measure_step_overhead(
            zoo.model,
            lambda out: out,
            steps=config.timing_steps,
            loss=None,
            reset=zoo.reset,
            seed=config.seed,
            batch=batch,
            loss_fn=zoo.loss,
            score=variant,
            layer=readout_layer(variant, zoo),
            warmup=config.timing_warmup,
        )
        shares[variant] = {
            "step_share": timing["overhead_fraction"],
            "step_share_ci": timing["overhead_interval"],
            "step_call_share": timing["score_fraction"],
            "step_time_s": timing["step_time_s"],
        }
    return shares


def train(entry: ZooEntry, zoo: ZooModel, config: ZooConfig) -> dict[str, float]:
    """``train_steps`` Adam steps on fresh synthetic batches (the model's tutorial learning rate where it has one,
    else ``config.learning_rate``); the mean training loss of the first and last three."""
    optimizer = torch.optim.Adam(zoo.model.parameters(), lr=zoo.learning_rate or config.learning_rate)
    losses = []
    for step in range(config.train_steps):
        inputs, labels = model_inputs(entry, zoo, config.batch_size, seed=10_000 + config.seed * 1000 + step)
        loss = zoo.loss(zoo.model(inputs), labels).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if zoo.reset is not None:
            zoo.reset(zoo.model)
        losses.append(float(loss.detach()))
    return {"first": float(np.mean(losses[:3])), "last": float(np.mean(losses[-3:]))}


def _restore(state: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put parameters and buffers (batch-norm statistics) back; neuron-state buffers that changed shape with
    the batch are left alone (every forward resets them)."""
    with torch.no_grad():
        for tensor, saved in state:
            if tensor.shape == saved.shape:
                tensor.copy_(saved)


def measure_stage(
    entry: ZooEntry, zoo: ZooModel, config: ZooConfig, held_out: tuple[torch.Tensor, torch.Tensor], timed: bool
) -> dict[str, Any]:
    """One stage's figures (see the module docstring); the model's parameters and buffers are left as found."""
    inputs, labels = held_out
    state = [(tensor, tensor.detach().clone()) for tensor in (*zoo.model.parameters(), *zoo.model.buffers())]
    scores, layer = variant_scores(zoo, inputs, labels, config.seed)
    truth, share, mean_loss = exact_gradient_norms(zoo, inputs, labels, layer, config.seed)
    _restore(state)
    costs = (
        step_shares(zoo, model_inputs(entry, zoo, config.batch_size, seed=5000 + config.seed), config) if timed else {}
    )
    _restore(state)
    variants = {}
    for number, (name, values) in enumerate(scores.items()):
        figures = correlations(values, truth, config.bootstrap_rounds, config.seed + number)
        cost = costs.get(name, {})
        figures.update({key: cost.get(key) for key in ("step_share", "step_share_ci", "step_call_share")})
        variants[name] = figures
    return {
        "held_out_loss": mean_loss,
        "exact_norm": _quartiles(truth),
        "readout_share": _quartiles(share) if share is not None else None,
        "variants": variants,
    }


def measure_model(entry: ZooEntry, config: ZooConfig, bar: tqdm | None = None) -> dict[str, Any]:
    """Build, measure at initialisation, train, measure again: one entry of ``"models"``."""
    record: dict[str, Any] = {
        "name": entry.name,
        "library": entry.library,
        "input_shape": list(entry.input_shape),
        "time_steps": entry.time_steps,
        "classes": entry.classes,
        "batch_size": config.batch_size,
    }
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    zoo = build_or_skip(entry)
    if isinstance(zoo, str):
        record["skipped"] = zoo
        return record
    zoo.model.train()
    record.update(
        parameters=sum(p.numel() for p in zoo.model.parameters()),
        layer=zoo.layer,
        **({"note": zoo.note} if zoo.note else {}),
    )
    held_out = model_inputs(entry, zoo, config.examples, seed=20_000 + config.seed)
    stages: dict[str, Any] = {}
    for stage in STAGES:
        if stage == "trained":
            record["train_loss"] = train(entry, zoo, config)
        stages[stage] = measure_stage(entry, zoo, config, held_out, stage in config.timed_stages)
        if bar is not None:
            bar.update(1)
    record["stages"] = stages
    record["wall_s"] = time.perf_counter() - started
    return record


def selected(config: ZooConfig, zoo: Sequence[ZooEntry] = ZOO) -> list[ZooEntry]:
    """The entries ``config.models`` names (all by default); an unknown name is an error listing the zoo."""
    if config.models is None:
        return list(zoo)
    names = [entry.name for entry in zoo]
    unknown = [name for name in config.models if name not in names]
    if unknown:
        raise ValueError(f"unknown zoo model(s) {', '.join(unknown)}; the zoo has {', '.join(names)}")
    return [entry for entry in zoo if entry.name in config.models]


#: Rough minutes of each zoo model at the default sizes on the 2-core CPU (for the estimate printed at start).
_MINUTES = {
    "spiking_resnet18": 3.5,
    "sew_resnet18_add": 3.5,
    "spiking_vgg11_bn": 6.5,
    "dvs_gesture_net": 1.5,
    "norse_lif_convnet": 2.0,
}


def estimate_minutes(config: ZooConfig, entries: Sequence[ZooEntry]) -> float:
    """A rough run time: per-model minutes at default sizes, scaled by examples and training steps."""
    default = ZooConfig()
    scale = (config.examples + config.train_steps) / (default.examples + default.train_steps)
    return sum(_MINUTES.get(entry.name, 0.7) for entry in entries) * scale


def run_zoo_bench(
    config: ZooConfig,
    zoo: Sequence[ZooEntry] | None = None,
    command: str = "sadp-data bench score --zoo",
    show_progress: bool = True,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every selected model of ``zoo`` (default ``ZOO``); the result's shape is in the module docstring.

    ``machine`` (``bench.machine.machine_info()``) is recorded as given."""
    entries = selected(config, ZOO if zoo is None else zoo)
    print(
        f"bench score --zoo: {len(entries)} model(s), about {estimate_minutes(config, entries):.0f} min on 2 CPU cores"
    )
    started = time.perf_counter()
    models = []
    with tqdm(
        total=len(entries) * len(STAGES), desc="bench score --zoo", unit="stage", disable=not show_progress
    ) as bar:
        for entry in entries:
            bar.set_postfix_str(entry.name)
            try:
                record = measure_model(entry, config, bar)
            except Exception as error:  # one model's failure is a finding, not the end of the run
                record = {"name": entry.name, "library": entry.library, "failed": f"{type(error).__name__}: {error}"}
            if "stages" not in record:
                bar.update(len(STAGES))
            models.append(record)
    return {
        "config": asdict(config),
        "command": command,
        "machine": machine,
        "exact_norm": EXACT_NORM,
        "variants": list(SCORE_VARIANTS),
        "models": models,
        "wall_s": time.perf_counter() - started,
    }
