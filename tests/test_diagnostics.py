"""Diagnostics: ``SADPSampler.stats()``, the gradient-estimator error and the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sadp_data import SADPSampler, ScoreStore
from sadp_data.diagnostics import effective_sample_size, estimator_error, probe, spearman

pytest.importorskip("spikingjelly")


def test_stats_report_each_planned_epoch(tmp_path):
    n = 2000
    store = ScoreStore.create(tmp_path / "s.zarr", n)
    rng = np.random.default_rng(0)
    sampler = SADPSampler(
        store,
        keep_ratio=0.5,
        epochs=6,
        seed=1,
        warmup_epochs=1,
        schedule="constant",
        method_options={"weight_power": 1},
    )
    for epoch in range(4):
        sampler.set_epoch(epoch)
        picked = sampler.rank_order()
        store.update(picked, rng.lognormal(0, 1, picked.shape[0]).astype(np.float32))
    stats = sampler.stats()
    assert [s["epoch"] for s in stats] == [0, 1, 2, 3]
    warmup, pruned = stats[0], stats[2]
    assert warmup["keep_ratio"] == 1.0 and warmup["ess_fraction"] == pytest.approx(1.0)
    assert warmup["scored_fraction"] == 0.0 and warmup["unscored_drawn"] == n
    assert pruned["sample_size"] == 1000 and pruned["scored_fraction"] == 1.0
    assert 0 < pruned["ess_fraction"] < 1
    assert stats[3]["ess"] == pytest.approx(effective_sample_size(sampler.plan.weights))  # the current plan
    assert 0 <= pruned["capped_fraction"] <= 0.5
    assert pruned["smoothing"] == 0.1 and pruned["gated"] is False
    # Epoch 2 draws examples scored in epoch 0 (age 1) or epoch 1 (age 0).
    assert 0 < pruned["staleness_mean"] < 1 and pruned["staleness_max"] == 1
    assert pruned["score_ratio"] > 1.5  # lognormal(0, 1): ρ = e ≈ 2.7
    store.close()


def test_stats_capped_fraction_counts_examples_drawn_with_certainty(tmp_path):
    n = 1000
    store = ScoreStore.create(tmp_path / "s.zarr", n)
    scores = np.ones(n, np.float32)
    scores[:50] = 1000.0
    store.update(np.arange(n), scores)
    sampler = SADPSampler(store, keep_ratio=0.2, warmup_epochs=0, seed=0, method_options={"weight_power": 1})
    _ = sampler.plan
    assert sampler.stats()[0]["capped_fraction"] == pytest.approx(50 / n)
    store.close()


def test_effective_sample_size():
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0])) == pytest.approx(1)


def test_estimator_error_matches_a_simulation():
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(40, 5)) * rng.lognormal(0, 1, size=(40, 1))
    norms = np.linalg.norm(gradients, axis=1)
    batch = 4
    for p, w in (
        (np.full(40, 1 / 40), np.ones(40)),
        (norms / norms.sum(), 1 / (40 * norms / norms.sum())),
        (norms / norms.sum(), np.ones(40)),  # biased: unweighted importance draw
    ):
        predicted = estimator_error(gradients, p, w, batch)
        draws = rng.choice(40, size=(40000, batch), p=p)
        estimates = (w[draws][..., None] * gradients[draws]).mean(axis=1)
        mse = np.mean(np.sum((estimates - gradients.mean(0)) ** 2, axis=1))
        assert predicted["mse"] == pytest.approx(mse, rel=0.03)
    unbiased = estimator_error(gradients, norms / norms.sum(), 1 / (40 * norms / norms.sum()), batch)
    uniform = estimator_error(gradients, np.full(40, 1 / 40), np.ones(40), batch)
    assert unbiased["bias_sq"] == pytest.approx(0, abs=1e-12)
    assert unbiased["variance"] < uniform["variance"]  # sampling ∝ gradient norm is optimal


def test_spearman():
    assert spearman(np.arange(10), np.arange(10) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(10), -np.arange(10)) == pytest.approx(-1.0)


def test_probe_measures_without_touching_the_model():
    from sadp_data.adapters.spikingjelly import ConvSNN, reset
    from sadp_data.scoring.scorer import SpikeAwareScorer

    torch.manual_seed(0)
    model = ConvSNN(channels=(4, 8))
    model.train()
    inputs, targets = torch.rand(24, 1, 28, 28), torch.randint(0, 10, (24,))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh(m, x, y):
        scorer = SpikeAwareScorer(m)
        out = m(x)
        scores = scorer.scores(F.cross_entropy(out, y, reduction="none"), out, y)
        scorer.remove()
        reset(m)
        return scores.numpy()

    stored = np.random.default_rng(0).random(24)
    result = probe(
        model,
        inputs,
        targets,
        stored,
        fresh_scores=fresh,
        loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"),
        batch_size=8,
        smoothing=0.1,
        weight_power=1.0,
        reset=reset,
    )
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # batch-norm statistics too
    assert model.training
    errors = result["estimator"]
    assert errors["optimal"]["mse"] <= errors["uniform"]["mse"]
    assert result["spearman_fresh_true"] > 0.5  # the readout bound tracks the full gradient norm
    assert result["probe_size"] == 24
