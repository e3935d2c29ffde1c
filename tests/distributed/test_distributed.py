"""Data-parallel training: two gloo processes train the demo SNN through sadp_data.

They must draw disjoint, equal slices of one identical plan every epoch, take equal step counts,
and end with identical score mirrors (the all-gathered scores); only rank 0 writes the sidecar.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from _ranks import run_ranks

import sadp_data as sd
from sadp_data.distributed import ScoreExchange, per_rank, rank_positions
from sadp_data.kernels import sample_size

pytest.importorskip("spikingjelly.activation_based")

WORKER = Path(__file__).parents[1] / "workers" / "ddp_train.py"
TIMEOUT_S = 300


def _launch(workdir: Path, world: int) -> list[dict]:
    run_ranks(WORKER, world, str(workdir), timeout=TIMEOUT_S)
    return [json.loads((workdir / f"rank{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_share_one_plan_and_one_score_table(tmp_path: Path) -> None:
    from sadp_data.sources.datasets import FashionMNIST

    count = len(FashionMNIST(split="train", limit=201))
    sd.ScoreStore.create(tmp_path / "scores.zarr", count).close()
    ranks = _launch(tmp_path, 2)
    for epoch, keep in enumerate((1.0, 0.5, 1.0)):  # warm-up, pruned, anneal
        first, second = (rank["epochs"][epoch] for rank in ranks)
        assert first["plan"] == second["plan"], f"epoch {epoch}: the ranks planned different epochs"
        assert first["snapshot_version"] == second["snapshot_version"]
        planned = sample_size(count, keep)
        assert len(first["plan"]) == planned
        assert first["steps"] == second["steps"] == first["len"] == -(-per_rank(planned, 2) // 16)
        assert len(first["indices"]) == len(second["indices"]) == per_rank(planned, 2)
        padded = [first["plan"][p % planned] for p in range(2 * per_rank(planned, 2))]  # wraps when odd
        assert first["indices"] + second["indices"] == padded
        assert len(set(first["indices"]) & set(second["indices"])) == 2 * per_rank(planned, 2) - planned
    assert ranks[0]["scores"] == ranks[1]["scores"] and ranks[0]["seen"] == ranks[1]["seen"]
    assert ranks[0]["version"] == ranks[1]["version"]
    seen = np.asarray(ranks[0]["seen"])
    assert seen.sum() == 202 + 102 + 202 and (seen > 0).all()  # every delivered example scored once
    with sd.ScoreStore.open(tmp_path / "scores.zarr", "r") as persisted:  # written by rank 0 alone
        np.testing.assert_array_equal(persisted.scores(), np.asarray(ranks[0]["scores"], dtype=np.float32))
        assert persisted.version == ranks[0]["version"]


def test_padding_repeats_the_first_planned_examples() -> None:
    parts = [rank_positions(10, rank, 4) for rank in range(4)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]]


def test_exchange_refuses_a_bad_interval(tmp_path: Path) -> None:
    store = sd.ScoreStore.create(tmp_path / "s.zarr", 10)
    with pytest.raises(ValueError, match="sync_every"):
        ScoreExchange(store, every=0)
    store.close()
