"""sadp_data.adapters.infobatch.InfoBatch: InfoBatch's released API and algorithm, without its monkey-patch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _docs import run_doc_block
from torch.utils.data import DataLoader, TensorDataset

from sadp_data.adapters.infobatch import INITIAL_SCORE, InfoBatch, infobatch_plan


def _released_selection(scores: np.ndarray, keep_ratio: float, rng: np.random.Generator) -> tuple[set, set]:
    """InfoBatch's ``prune()`` as released, transcribed: (kept well-learned, kept others)."""
    well = scores < scores.mean()
    well_indices = np.where(well)[0]
    selected = rng.choice(well_indices, int(keep_ratio * len(well_indices)), replace=False)
    return set(selected.tolist()), set(np.where(~well)[0].tolist())


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.7])
def test_the_selection_and_weights_are_infobatchs(prune_ratio: float) -> None:
    scores = np.random.default_rng(0).gamma(2.0, 1.0, 1000).astype(np.float32)
    keep = 1.0 - prune_ratio
    order, weights = infobatch_plan(scores, keep, True, np.random.default_rng(5))
    chosen, others = _released_selection(scores, keep, np.random.default_rng(5))
    assert len(order) == len(set(order.tolist())) == len(chosen) + len(others)
    assert set(order.tolist()) == chosen | others  # the same draw from the same generator state
    by_index = dict(zip(order.tolist(), weights.tolist(), strict=True))
    assert all(by_index[i] == pytest.approx(1 / keep) for i in chosen)
    assert all(by_index[i] == 1.0 for i in others)
    full, ones = infobatch_plan(scores, keep, False, np.random.default_rng(1))
    assert sorted(full.tolist()) == list(range(1000)) and np.all(ones == 1.0)


def _loader_run(method: str, epochs: int = 4) -> tuple[InfoBatch, list[int]]:
    torch.manual_seed(0)
    x = torch.randn(600, 8)
    y = (x[:, 0] + 0.3 * torch.randn(600) > 0).long()
    trainset = InfoBatch(TensorDataset(x, y), epochs, prune_ratio=0.5, delta=0.5, method=method, seed=1)
    loader = DataLoader(trainset, batch_size=64, sampler=trainset.sampler, num_workers=0)
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = []
    for _ in range(epochs):  # InfoBatch's loop, unchanged: the sampler ends every epoch
        seen = 0
        for inputs, targets in loader:
            loss = trainset.update(F.cross_entropy(model(inputs), targets, reduction="none"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += targets.shape[0]
        sizes.append(seen)
    return trainset, sizes


def test_infobatchs_three_line_loop_ends_every_epoch_with_infobatchs_sizes() -> None:
    trainset, sizes = _loader_run("infobatch")
    assert sizes[0] == 600  # scores start at 3: nothing is below the mean in epoch 0
    assert 300 < sizes[1] < 600 and 300 < sizes[2] < 600  # epochs ≤ delta·num_epochs = 2 prune
    assert sizes[3] == 600  # epoch 3 > 2: all data
    assert np.all(trainset.scores != INITIAL_SCORE)  # every example was scored in epoch 0


def test_the_sizes_follow_infobatchs_rule_from_the_scores() -> None:
    trainset = InfoBatch(TensorDataset(torch.zeros(10, 1)), 4, prune_ratio=0.5, delta=0.5, seed=0)
    trainset.scores[:] = np.arange(10, dtype=np.float32)  # mean 4.5: 0..4 are well learned
    sizes = []
    for _ in range(4):
        sizes.append(len(trainset.sampler))  # the upcoming epoch, planned once from the scores now
        assert len(list(trainset.sampler)) == sizes[-1]
    assert sizes == [5 + int(0.5 * 5)] * 3 + [10]  # epochs ≤ delta·num_epochs = 2 prune, epoch 3 does not


def test_method_switches_the_same_script_to_sadp() -> None:
    trainset, sizes = _loader_run("sadp")
    from sadp_data.kernels import sample_size

    planned = [sample_size(600, trainset._schedule(epoch)) for epoch in range(4)]
    assert sizes == planned and planned[0] == 600 and min(planned) < 600  # warm-up, pruned epochs, anneal


def test_misuse_is_refused_clearly() -> None:
    trainset = InfoBatch(TensorDataset(torch.zeros(10, 1)), 2)
    with pytest.raises(RuntimeError, match=r"sampler=trainset\.sampler"):
        trainset.update(torch.zeros(4))
    list(trainset.sampler)
    with pytest.raises(ValueError, match="reduction='none'"):
        trainset.update(torch.zeros(()))
    trainset.update(torch.zeros(8))
    with pytest.raises(RuntimeError, match="planned 10 examples for this rank but update\\(\\) received 12"):
        trainset.update(torch.zeros(4))
    with pytest.raises(ValueError, match="unknown method"):
        InfoBatch(TensorDataset(torch.zeros(10, 1)), 2, method="nope")


def test_the_documented_snippet_runs() -> None:

    namespace = run_doc_block("docs/integrations.md", "## Coming from InfoBatch")
    trainset = namespace["trainset"]
    assert trainset.epoch == 2 and trainset._position == len(trainset._plan[0])  # every epoch ran to its end


def test_a_mid_epoch_state_resumes_the_identical_remaining_order() -> None:
    data = TensorDataset(torch.arange(300, dtype=torch.float32))

    def run(trainset, stop_after=None):
        loader = DataLoader(trainset, batch_size=16, sampler=trainset.sampler)
        seen = []
        while trainset.epoch < 3 or trainset._position < len(trainset._rank_order()):
            for step, (x,) in enumerate(loader):
                seen.append(x.long().tolist())
                trainset.update((x - 150.0).abs() + trainset.epoch)
                if stop_after is not None and trainset.epoch == 1 and step == stop_after:
                    return seen, trainset.state_dict()
        return seen, None

    reference, _ = run(InfoBatch(data, 4, prune_ratio=0.5, delta=0.75, seed=2))
    first, state = run(InfoBatch(data, 4, prune_ratio=0.5, delta=0.75, seed=2), stop_after=3)
    resumed = InfoBatch(data, 4, prune_ratio=0.5, delta=0.75, seed=2)
    resumed.load_state_dict(state)
    assert len(resumed.sampler) == len(resumed._rank_order()) - 4 * 16
    rest, _ = run(resumed)
    assert first + rest == reference
    with pytest.raises(ValueError, match="seed=2"):
        InfoBatch(data, 4, seed=3).load_state_dict(state)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_share_one_plan_and_one_score_table(tmp_path) -> None:
    from pathlib import Path

    from _ranks import run_ranks

    from sadp_data.distributed import per_rank

    run_ranks(Path(__file__).parents[1] / "workers" / "compat_ddp.py", 2, str(tmp_path), timeout=120)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for first, second in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        assert first["plan"] == second["plan"]  # one plan, from identical scores
        planned = len(first["plan"])
        assert len(first["indices"]) == len(second["indices"]) == per_rank(planned, 2)
        assert first["steps"] == second["steps"] == first["len"]
        padded = [first["plan"][p % planned] for p in range(2 * per_rank(planned, 2))]
        assert first["indices"] + second["indices"] == padded
    assert ranks[0]["scores"] == ranks[1]["scores"] and ranks[0]["seen"] == ranks[1]["seen"]
    assert len(ranks[0]["epochs"][1]["plan"]) < 101  # epoch 1 was pruned


def test_scores_persist_in_a_score_store_and_a_new_run_starts_from_them(tmp_path) -> None:
    from sadp_data import ScoreStore

    data = TensorDataset(torch.arange(120, dtype=torch.float32))
    with ScoreStore.create(tmp_path / "scores.zarr", 120) as store:
        trainset = InfoBatch(data, 3, prune_ratio=0.5, store=store)
        loader = DataLoader(trainset, batch_size=16, sampler=trainset.sampler)
        for _ in range(2):
            for (x,) in loader:
                trainset.update((x - 60.0).abs())
        trainset.state_dict()  # flushes the store
        expected = trainset.scores.copy()
    with ScoreStore.open(tmp_path / "scores.zarr", "r+") as store:
        again = InfoBatch(data, 3, prune_ratio=0.5, store=store)
        np.testing.assert_array_equal(again.scores, expected)
        assert (again._seen > 0).all()
    with ScoreStore.create(tmp_path / "other.zarr", 7) as other, pytest.raises(ValueError, match="holds 7 examples"):
        InfoBatch(data, 3, store=other)


def _started(batch_size: int | None = None, **options) -> tuple[InfoBatch, DataLoader]:
    trainset = InfoBatch(TensorDataset(torch.arange(100, dtype=torch.float32)), 4, batch_size=batch_size, **options)
    return trainset, DataLoader(trainset, batch_size=16, sampler=trainset.sampler)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_fewer_losses_than_the_batch_are_refused_naming_both_lengths(batch_size) -> None:
    """Fewer losses than the batch would put every later score on the wrong example: InfoBatch's released
    code asserts the lengths match, and so does update() (from the first batch with batch_size=)."""
    trainset, loader = _started(batch_size)
    batches = iter(loader)
    (x,) = next(batches)
    if batch_size is None:
        trainset.update(x)  # the run's first batch fixes the batch size
        (x,) = next(batches)
    with pytest.raises(ValueError, match="received 15 losses but the batch holds 16 examples"):
        trainset.update(x[:15])
    trainset.update(x)  # the refused batch recorded nothing: the right one still fits
    for (x,) in batches:
        trainset.update(x)  # the last batch holds the 4 examples left
    assert trainset._position == 100


def test_a_nan_loss_is_refused_and_records_nothing() -> None:
    trainset, loader = _started()
    (x,) = next(iter(loader))
    scores = trainset.scores.copy()
    with pytest.raises(ValueError, match=r"1 NaN, infinite losses .*example \d+, loss nan.*nothing of this batch"):
        trainset.update(torch.where(x == x[3], torch.nan, x))
    np.testing.assert_array_equal(trainset.scores, scores)
    assert trainset._position == 0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("plan_order", "order", "plan_order"),
        ("position", 10**6, "'position'"),
        ("position", -3, "'position'"),
        ("scores", "nan", "'scores'"),
        ("seen", "negative", "'seen'"),
        ("world_size", 0, "'world_size'"),
        ("format_version", 7, "'format_version'"),
        ("fingerprint", "fp-other", "'fp-other'"),
    ],
)
def test_an_out_of_range_or_malformed_state_is_refused_by_key(key, value, expected) -> None:
    from sadp_data.resume import ResumeStateError

    trainset, loader = _started()
    (x,) = next(iter(loader))
    trainset.update(x)
    state = trainset.state_dict()
    assert state["format_version"] == 1 and state["fingerprint"] is None
    broken = {
        "order": np.where(state["plan_order"] == state["plan_order"][0], 10**6, state["plan_order"]),
        "nan": np.full(100, np.nan, np.float32),
        "negative": np.full(100, -1, np.int64),
    }
    fresh, _ = _started()
    with pytest.raises(ResumeStateError, match=expected):
        fresh.load_state_dict({**state, key: broken.get(value, value) if isinstance(value, str) else value})
    fresh.load_state_dict(state)
    assert fresh._position == 16


def test_an_empty_dataset_and_a_fractional_epoch_count_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty dataset"):
        InfoBatch(TensorDataset(torch.zeros(0)), 3)
    with pytest.raises(TypeError, match=r"num_epochs must be an integer, got 2\.5"):
        InfoBatch(TensorDataset(torch.zeros(10)), 2.5)
