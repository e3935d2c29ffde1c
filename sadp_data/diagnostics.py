"""Diagnostics that explain what importance sampling does in a run.

Two kinds:

* **Plan statistics** (``plan_statistics``, what ``SADPSampler.stats()`` returns per epoch): computed
  from an epoch's plan and the score snapshot it was made from, O(N), no model needed: the effective
  sample size of the weights, the fraction of inclusion probabilities capped at 1, the staleness of
  the drawn examples' scores, and the scores' second-moment ratio ρ.
* **Probe measurements** (``probe``, run by the ``frontier`` bench every few epochs): on a fixed probe
  set of a few hundred examples, exact per-example gradients of the whole model, the rank
  correlation between the store's scores and fresh scores, and the mean squared error of the
  mini-batch gradient estimator under uniform sampling, under the method's sampling distribution
  and under the optimal one (∝ the true gradient norms), all at the same model state. If
  importance sampling does not reduce the error in practice, this shows it. A biased draw (SADP's
  default α = 0) is measured against the full-data gradient, so its error includes its bias; the
  ``*_unbiased`` entries give the same draw with Horvitz–Thompson weights, which isolates variance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .methods.base import PlanRequest, to_host


def effective_sample_size(weights: np.ndarray) -> float:
    """``(Σw)² / Σw²``: equals the number of weights when they are equal, and falls as they spread."""
    values = np.asarray(weights, dtype=np.float64)
    total = float(np.sum(values * values))
    return 0.0 if total == 0.0 else float(values.sum()) ** 2 / total


def plan_statistics(
    request: PlanRequest, order: np.ndarray, weights: np.ndarray, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able diagnostics of one planned epoch (one entry of ``SADPSampler.stats()``).

    Keys: ``epoch``, ``keep_ratio``, ``sample_size``, ``num_examples``; ``ess`` and
    ``ess_fraction`` (``ess / K``) of the weights; ``weight_min``/``weight_max``/``weight_mean``;
    ``capped_fraction`` (examples drawn with probability 1, over N; from the method, ``None`` for
    methods without inclusion probabilities); for methods that read scores, ``score_ratio`` ρ =
    mean(s²)/mean(s)² of the scored examples, ``scored_fraction`` (examples ever scored), and the
    staleness of the drawn examples' scores in epochs (``staleness_mean``, ``staleness_max``:
    ``epoch − 1 − last scored epoch``, 0 for a score from the previous epoch; ``unscored_drawn``:
    drawn examples never scored). Whatever else the method reported (e.g. SADP's ``smoothing``,
    ``gated``) is merged in.
    """
    weights = np.asarray(weights)
    size = int(weights.shape[0])
    ess = effective_sample_size(weights)
    entry: dict[str, Any] = {
        "epoch": int(request.epoch),
        "keep_ratio": float(request.keep_ratio),
        "sample_size": size,
        "num_examples": int(request.num_examples),
        "ess": ess,
        "ess_fraction": ess / size,
        "weight_min": float(weights.min()),
        "weight_max": float(weights.max()),
        "weight_mean": float(weights.astype(np.float64).mean()),
        "capped_fraction": None,
    }
    if request.scores is not None:
        scores = to_host(request.scores).astype(np.float64)
        seen = np.ones(scores.shape[0], bool) if request.seen is None else to_host(request.seen) > 0
        values = scores[seen]
        mean = float(values.mean()) if values.size else 0.0
        entry["score_ratio"] = float(np.mean(values * values)) / mean**2 if mean > 0 else 1.0
        entry["scored_fraction"] = float(seen.mean())
        picked_seen = seen[np.asarray(order)]
        entry["unscored_drawn"] = int(np.count_nonzero(~picked_seen))
        if request.last_epoch is not None and picked_seen.any():
            last = to_host(request.last_epoch).astype(np.int64)[np.asarray(order)[picked_seen]]
            age = np.maximum(0, request.epoch - 1 - last)
            entry["staleness_mean"] = float(age.mean())
            entry["staleness_max"] = int(age.max())
    entry.update(info or {})
    return entry


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length vectors (ties ranked by position; NaN if constant)."""
    ranks_a = np.argsort(np.argsort(np.asarray(a), kind="stable"), kind="stable").astype(np.float64)
    ranks_b = np.argsort(np.argsort(np.asarray(b), kind="stable"), kind="stable").astype(np.float64)
    if ranks_a.size < 2:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def per_example_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reset: Callable[[torch.nn.Module], None] | None = None,
) -> torch.Tensor:
    """Exact gradients of every parameter for each example alone: float32 ``[P, D]`` (D parameters).

    One forward and backward per example (batch 1), in the model's current mode; costs P backward
    passes, so keep P to a few hundred. ``reset`` clears neuron state after each example.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        rows.append(
            torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters, grads, strict=True)]
            )
        )
        if reset is not None:
            reset(model)
    return torch.stack(rows).to(torch.float32)


def estimator_error(
    gradients: np.ndarray | torch.Tensor, probabilities: np.ndarray, weights: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Mean squared error of the mini-batch gradient estimate ``(1/B) Σ_j w_j g_j`` against the mean gradient.

    ``B`` draws with replacement, example i with probability ``probabilities[i]`` (normalised here)
    and weight ``weights[i]``. With ``ĝ`` the estimate, ``ḡ`` the probe's mean gradient and
    ``m = Σ p_i w_i g_i``: ``E‖ĝ − ḡ‖² = (Σ p_i w_i² ‖g_i‖² − ‖m‖²)/B + ‖m − ḡ‖²``. Returns
    ``variance`` (the first term), ``bias_sq`` (the second), ``mse`` and ``relative_mse``
    (``mse / ‖ḡ‖²``). Uniform sampling: equal probabilities, weights 1; unbiased importance
    sampling: weights ``1/(P p_i)``.
    """
    g = torch.as_tensor(gradients, dtype=torch.float64)
    p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
    p = p / p.sum()
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    mean = g.mean(0)
    m = (p * w) @ g
    second = float((p * w * w) @ (g * g).sum(1))
    variance = (second - float(m @ m)) / batch_size
    bias_sq = float(((m - mean) ** 2).sum())
    mse = variance + bias_sq
    norm_sq = float(mean @ mean)
    return {
        "variance": variance,
        "bias_sq": bias_sq,
        "mse": mse,
        "relative_mse": mse / norm_sq if norm_sq else float("nan"),
    }


def sampling_distribution(scores: np.ndarray, smoothing: float, weight_power: float, normalize: bool = True):
    """``(p, w)`` of SADP's draw restricted to a probe: ``p ∝ (1−λ)·s/mean(s) + λ``, ``w ∝ (1/(P p))^α``.

    A with-replacement stand-in for the without-replacement draw (capping ignored). With
    ``normalize`` the weights are scaled to ``Σ p w = 1`` (mean weight 1 under the draw).
    """
    s = np.asarray(scores, dtype=np.float64)
    mean = s.mean()
    smoothed = (1 - smoothing) * (s / mean if mean > 0 else np.ones_like(s)) + smoothing
    p = smoothed / smoothed.sum()
    w = (1.0 / (p.shape[0] * p)) ** weight_power
    if normalize:
        w = w / float(np.sum(p * w))
    return p, w


def probe(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    stored_scores: np.ndarray,
    *,
    fresh_scores: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], np.ndarray],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    smoothing: float,
    weight_power: float,
    reset: Callable[[torch.nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Measure sampling quality at the model's current state on a probe set; leaves the model untouched.

    ``stored_scores`` are the store's scores of the probe examples; ``fresh_scores(model, x, y)``
    scores them now. Returns the Spearman correlations stored↔fresh and fresh↔true gradient norm,
    and ``estimator_error`` under ``uniform`` sampling, SADP's draw from the ``stored`` and from the
    ``fresh`` scores (``smoothing`` λ, ``weight_power`` α, weights normalised; ``stored_unbiased``
    and ``fresh_unbiased`` with α = 1), and the ``optimal`` draw (∝ true gradient norms, unbiased
    weights). Runs in training mode (as scores are recorded)
    and restores parameters, buffers (batch-norm statistics) and the RNG state afterwards.
    """
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    with torch.random.fork_rng():
        model.train()
        fresh = np.asarray(fresh_scores(model, inputs, targets), dtype=np.float64)
        gradients = per_example_gradients(model, inputs, targets, loss_fn, reset)
    model.load_state_dict(state)
    model.train(was_training)
    norms = gradients.norm(dim=1).numpy().astype(np.float64)
    size = norms.shape[0]
    uniform = np.full(size, 1.0 / size)
    errors = {"uniform": estimator_error(gradients, uniform, np.ones(size), batch_size)}
    for name, values in (("stored", stored_scores), ("fresh", fresh)):
        p, w = sampling_distribution(values, smoothing, weight_power)
        errors[name] = estimator_error(gradients, p, w, batch_size)
        p, w = sampling_distribution(values, smoothing, 1.0)
        errors[f"{name}_unbiased"] = estimator_error(gradients, p, w, batch_size)
    optimal = np.maximum(norms, 1e-12 * max(float(norms.max()), 1e-30))
    optimal = optimal / optimal.sum()
    errors["optimal"] = estimator_error(gradients, optimal, 1.0 / (size * optimal), batch_size)
    return {
        "probe_size": size,
        "spearman_stored_fresh": spearman(stored_scores, fresh),
        "spearman_fresh_true": spearman(fresh, norms),
        "estimator": errors,
        "mse_ratio_stored_vs_uniform": errors["stored"]["mse"] / errors["uniform"]["mse"],
    }
