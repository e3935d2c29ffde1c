"""``PartitionedScoreStore`` under ``SADPSampler`` and ``SpikeAwareScorer``: regions, routing, plans, resume, memory.

Real gloo ranks (``tests/workers/partitioned_store_rank.py``) score the examples they deliver in the
warm-up epoch through their own regions and plan the first pruned epoch. Checked against a
replicated ``ScoreStore`` holding the same scores: every rank's slice is bit-identical to the
replicated sampler's ``rank_slice`` (default SADP and Horvitz–Thompson weights); scores pushed for
other ranks' examples land at their owners; a mid-epoch checkpoint resumes to the identical
remaining order after the store is reopened; each rank holds about ``1/W`` of the replicated
sampler's memory after the plan, and its traced peak on the way scales as ``1/W``.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from _ranks import run_ranks

import sadp_data as sd
from sadp_data.distributed import rank_positions
from sadp_data.distributed.partitioned_plan import partition_bounds
from sadp_data.kernels import sample_size

WORKER = Path(__file__).parents[1] / "workers" / "partitioned_store_rank.py"
N, SEED, KEEP = 1 << 20, 4, 0.5
#: Traced peak per owned example from opening the store to the first pruned plan (measured: 104 B at
#: W = 1; the full-data warm-up epoch's distributed shuffle, about 80 B per pick, is the peak).
PEAK_PER_OWNED = 115


def _sampler(store, **options):
    return sd.SADPSampler(store, keep_ratio=KEEP, epochs=4, seed=SEED, schedule="constant", **options)


@pytest.fixture(scope="module")
def scores() -> np.ndarray:
    return (np.random.default_rng(11).pareto(2.5, N) + 0.05).astype(np.float32)  # heavy-tailed, as real bounds


@pytest.fixture(scope="module")
def replicated(scores, tmp_path_factory) -> dict:
    """The replicated design's plans (for every world size) and its traced peak, in this process."""
    folder = tmp_path_factory.mktemp("replicated")
    with sd.ScoreStore.create(folder / "warm.zarr", 16) as warm:  # compiled kernels, first-use imports
        warm.update(np.arange(16), np.ones(16, np.float32))
    sd.plan_epoch(np.ones(16, np.float32), 0.5, 0, 1)
    tracemalloc.start()
    store = sd.ScoreStore.create(folder / "scores.zarr", N, fingerprint="test")
    sampler = _sampler(store)
    sampler.set_epoch(0)
    store.update(np.arange(N), scores)  # the warm-up epoch scores every example once
    sampler.set_epoch(1)
    plans = {"default": (sampler.plan.order, sampler.plan.weights)}
    store.flush()
    resident, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    weighted = _sampler(store, method_options={"weight_power": 1.0})
    weighted.set_epoch(1)
    plans["ht"] = (weighted.plan.order, weighted.plan.weights)
    store.close()
    return {"plans": plans, "resident": resident, "peak": peak}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_plan_route_and_resume_from_their_regions_alone(tmp_path, scores, replicated, world) -> None:
    np.save(tmp_path / "scores.npy", scores)
    (tmp_path / "case.json").write_text(json.dumps({"N": N, "seed": SEED, "keep": KEEP}))
    run_ranks(WORKER, world, str(tmp_path), timeout=240)
    size = sample_size(N, KEEP)
    parts = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(world)]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]
    for rank, (part, report) in enumerate(zip(parts, reports, strict=True)):
        positions = rank_positions(size, rank, world)
        for name, prefix in (("default", ""), ("ht", "ht_")):
            order, weights = replicated["plans"][name]
            assert np.array_equal(part[f"{prefix}order"], order[positions]), (name, rank)
            assert np.array_equal(part[f"{prefix}weights"], weights[positions]), (name, rank)
        assert np.array_equal(part["resumed"], part["order"])  # 100 delivered, checkpoint, reopen, the rest
        assert report["position"] == 100 and report["stats"]["rank_slice"] is True
        assert report["stats"]["sample_size"] == len(positions)
    for rank, report in enumerate(reports):  # one rank's bad scores stop every rank at the same exchange
        expected = "1 scores are NaN" if rank == world - 1 else f"rank {world - 1} failed at the score route"
        assert expected in report["bad"], report["bad"]
    bounds = partition_bounds(N, world)
    for rank, part in enumerate(parts):  # the good ranks' scores of that exchange are kept, the bad one's not
        lo = bounds[rank][0]
        assert part["after_bad"][7] == (scores[lo + 7] if rank == world - 1 else np.float32(2.5))
    for pusher, part in enumerate(parts):  # every pushed score is at its owner, stamped with its epoch
        for index, value in zip(part["pushed_index"].tolist(), part["pushed_value"].tolist(), strict=True):
            owner = next(r for r, (lo, hi) in enumerate(bounds) if lo <= index < hi)
            region = parts[owner]
            assert region["region_scores"][index - bounds[owner][0]] == value, (pusher, owner, index)
            assert region["region_last"][index - bounds[owner][0]] == 1
    for report in reports:  # held after the plan: this rank's region (and its slice), not the table
        assert report["resident"] <= 1.1 * replicated["resident"] / world + (1 << 20), (report, replicated)
        assert report["peak"] <= PEAK_PER_OWNED * report["owned"] + (2 << 20), report  # all of it scales as 1/W


@pytest.mark.slow
@pytest.mark.distributed
def test_a_malformed_call_and_a_lost_region_stop_every_rank_at_the_same_collective(tmp_path) -> None:
    run_ranks(Path(__file__).parents[1] / "workers" / "partition_faults_rank.py", 2, str(tmp_path), timeout=120)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert "scores must be 1-D with one value per index" in reports[1]["malformed"]  # its own error, by name
    assert "rank 1 failed at the score route" in reports[0]["malformed"]
    for report in reports:  # the route after it works on both ranks: nobody is a collective behind
        assert report["after"] == "no error" and report["region_scores"] == "[2.0]"
        assert "ranks [1] found no region file" in report["lost_region"], report
        assert "copy the regions back" in report["lost_region"]


def test_a_region_folder_refuses_another_world_size_and_other_data(tmp_path) -> None:
    store = sd.PartitionedScoreStore.open(tmp_path / "regions", 4 * 65536, fingerprint="a", rank=1, world=2)
    assert (store.lo, store.hi) == (2 * 65536, 4 * 65536) and store.path.name == "w2-r1.zarr"
    store.close()
    with pytest.raises(ValueError, match=r"another world size \(w2-r1\.zarr\).*not at 4"):
        sd.PartitionedScoreStore.open(tmp_path / "regions", 4 * 65536, fingerprint="a", rank=0, world=4)
    with pytest.raises(sd.ScoreStoreError, match=r"w2-r1\.zarr"):
        sd.PartitionedScoreStore.open(tmp_path / "regions", 4 * 65536, fingerprint="b", rank=1, world=2)
    with pytest.raises(ValueError, match="too few to shard over 2 ranks"):
        sd.PartitionedScoreStore.open(tmp_path / "small", 65536, rank=0, world=2)


def test_bad_scores_and_unsupported_settings_are_refused_by_name(tmp_path) -> None:
    with sd.PartitionedScoreStore.open(tmp_path / "regions", 65536 + 10) as store:  # one process: LocalComm
        with pytest.raises(IndexError, match=r"position 1: 65546"):
            store.update(torch.tensor([3, 65546]), torch.tensor([1.0, 1.0]))
        with pytest.raises(ValueError, match="NaN, infinite or negative"):
            store.update(np.array([3]), np.array([np.nan]))
        with pytest.raises(ValueError, match=r"epoch 2147483648 is outside \[-1, 2\*\*31\)"):
            store.update(np.array([3]), np.array([1.0]), epoch=2**31)
        with pytest.raises(TypeError, match="indices must be an integer array"):
            store.update(np.array([3.0]), np.array([1.0]))
        store.update(np.array([3, 65540]), np.array([2.0, 5.0]))  # routed at once (sync_every=1)
        assert store.scores()[[3, 65540]].tolist() == [2.0, 5.0]
        with pytest.raises(ValueError, match="method='sadp' and at most its weight_power"):
            _sampler(store, method_options={"sharpness": 2.0})
        with pytest.raises(ValueError, match="method='sadp'"):
            _sampler(store, method="epsilon_greedy")
        with pytest.raises(ValueError, match="rank 0 of 1; the sampler is rank 0 of 2"):
            _sampler(store, num_replicas=2, rank=0)
        with pytest.raises(ValueError, match="shard_size/groups"):
            _sampler(store, shard_size=64)
        sampler = _sampler(store)
        sampler.set_epoch(1)
        plan = sampler.plan
        store.sync_every = 2
        store.update(np.array([5]), np.array([1.5]))  # queued until the second update
        assert store.scores()[5] == 0.0
        assert plan.weights_of(plan.order[:3]).tolist() == plan.weights[:3].tolist()
        with pytest.raises(KeyError, match="not in rank 0's slice"):
            plan.weights_of(np.setdiff1d(np.arange(100), plan.order)[:1])
        with pytest.raises(ValueError, match="elastic resume"):
            plan.rank_slice(0, 1, resumed_from=(2, 10))
        store.sync_every = 10
        store.update(np.array([5]), np.array([-1.0]))  # refused, queued as nothing: no route reported it yet
        with (
            pytest.warns(RuntimeWarning, match="closed with 1 scores queued"),
            pytest.raises(ValueError, match="negative"),
        ):
            store.close()  # the refusal is raised at close, not lost


@pytest.mark.parametrize(
    ("heading", "folder"),
    [
        ("## A score table partitioned across ranks", "train.scores-regions"),
        ("## Across machines (argued, not tested here)", "scores-regions"),
    ],
)
def test_the_documented_snippet_runs(heading: str, folder: str, tmp_path, monkeypatch) -> None:
    from _docs import run_doc_block

    monkeypatch.chdir(tmp_path)
    train_set = torch.utils.data.TensorDataset(torch.zeros(65536 + 7, 3))
    namespace = run_doc_block("docs/distributed.md", heading, {"sd": sd, "train_set": train_set,
                              "model": torch.nn.Linear(3, 2)})  # fmt: skip
    store, sampler, scorer = namespace["store"], namespace["sampler"], namespace["scorer"]
    assert scorer.exchange is None and (tmp_path / folder / "w1-r0.zarr").is_dir()
    sampler.set_epoch(1)
    assert len(sampler.rank_order()) == sample_size(65536 + 7, sampler.keep_ratio(1)) < 65536
    assert sampler.stats()[-1]["rank_slice"]
    store.close()


def test_a_region_restored_from_a_stale_copy_is_refused_naming_what_each_rank_holds(tmp_path) -> None:
    """Two ranks (threads) train to the middle of epoch 2 and checkpoint; rank 1's region is then replaced
    by a copy taken at epoch 1. Resuming refuses on both ranks, saying which region is behind and by how
    much, instead of warning that the snapshot "was not persisted" and replanning from mixed-age scores."""
    import shutil

    from test_partitioned_plan import run_ranks as run_threads

    from sadp_data.distributed.partitioned_store import StaleRegionError

    n, folder, backup = 2 * 65536, tmp_path / "regions", tmp_path / "backup.zarr"

    def sampler_of(store, rank):
        return _sampler(store, num_replicas=2, rank=rank)

    def train(rank, comm):
        with sd.PartitionedScoreStore.open(folder, n, rank=rank, world=2, comm=comm) as store:
            sampler = sampler_of(store, rank)
            for epoch in (0, 1, 2):
                sampler.set_epoch(epoch)
                order = sampler.rank_order()
                store.update(order[:1000], np.full(1000, 1.0 + epoch, np.float32))
                if epoch == 1 and rank == 1:
                    store.flush()
                    shutil.copytree(store.path, backup)  # the copy that goes stale
            return sampler.state_dict()

    states = run_threads(2, train)
    assert states[0]["snapshot_version"] is not None
    shutil.rmtree(folder / "w2-r1.zarr")
    shutil.copytree(backup, folder / "w2-r1.zarr")

    def resume(rank, comm):
        with sd.PartitionedScoreStore.open(folder, n, rank=rank, world=2, comm=comm) as store:
            try:
                sampler_of(store, rank).load_state_dict(states[rank])
            except StaleRegionError as error:
                return str(error)
            return "resumed"

    for message in run_threads(2, resume):
        assert "rank 1 (w2-r1.zarr: the snapshot of global version" in message, message
        assert "last epoch begun 1" in message and "last epoch begun 2" in message
        assert "restored from a stale copy" in message and "copies taken at the same moment" in message


def _members(protocol: type) -> dict[str, object]:
    """The protocol's members: its annotated attributes (as ``None``), properties and methods."""
    import typing

    members: dict[str, object] = dict.fromkeys(typing.get_type_hints(protocol))
    for name, value in vars(protocol).items():
        if not name.startswith("_") and (callable(value) or isinstance(value, property)):
            members[name] = value
    return members


def test_both_stores_meet_the_score_table_protocol_member_by_member(tmp_path: Path) -> None:
    """Every member of ``ScoreTable``, with the same parameters (names, kinds, defaults) on both stores,
    and the capabilities that replace class checks: a whole table has no rank region, a split one does."""
    import inspect

    from sadp_data.methods import get_method
    from sadp_data.store.table import RankRegion, ScoreTable

    members = _members(ScoreTable)
    assert {"rank_region", "check_sampler", "begin_epoch", "saved_snapshot", "update", "scores"} <= set(members)
    with (
        sd.ScoreStore.create(tmp_path / "whole.zarr", 100) as whole,
        sd.ShardedScoreStore.open(tmp_path / "regions", 65536 + 10, rank=0, world=1) as split,
    ):
        for store in (whole, split):
            assert isinstance(store, ScoreTable)
            for name, member in members.items():
                found = getattr(type(store), name, None)
                where = f"{type(store).__name__}.{name}"
                if member is None or isinstance(member, property):  # read: a property or an instance attribute
                    assert isinstance(found, property) or name in vars(store), where
                    getattr(store, name)
                else:
                    assert callable(found), where
                    expected = inspect.signature(member).parameters.values()
                    got = inspect.signature(found).parameters.values()
                    assert [(p.name, p.kind, p.default) for p in got] == [
                        (p.name, p.kind, p.default) for p in expected
                    ], where
        assert whole.rank_region is None
        assert split.rank_region == RankRegion(rank=0, world=1, lo=0, hi=65536 + 10)
        whole.check_sampler(object(), 3, 4, localized=True)  # a whole table serves any sampler
        with pytest.raises(ValueError, match="shard_size/groups"):
            split.check_sampler(get_method("sadp"), 0, 1, localized=True)
