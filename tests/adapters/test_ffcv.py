"""FFCV: .beton conversion with an index field, and the importance-sampled traversal order."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data.cli import main
from sadp_data.sampler import SADPSampler

if os.environ.get("CI") != "true":  # CI installs ffcv and must run these tests, never skip them
    pytest.importorskip("ffcv")
from ffcv.fields.decoders import IntDecoder, NDArrayDecoder

from sadp_data.adapters.ffcv import importance_loader, open_sidecar, weights_for
from sadp_data.store import ScoreStoreError

N = 300

from _docs import doc_block  # noqa: E402
from _samplers import unbiased_sampler  # noqa: E402


@pytest.fixture
def beton(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (N, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 10, N)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = tmp_path / "data.beton"
    assert main(["convert", str(tmp_path / "data.npz"), str(out), "--format", "ffcv", "--no-progress"]) == 0
    return out, x, y


def _pipelines() -> dict:
    return {"x": [NDArrayDecoder()], "y": [IntDecoder()], "index": [IntDecoder()]}


def _epochs(path: Path, sampler: SADPSampler, epochs: int, workers: int = 1) -> list[tuple]:
    loader = importance_loader(
        path, sampler, batch_size=32, num_workers=workers, pipelines=_pipelines(), with_weights=True
    )
    delivered = []
    for _ in range(epochs):
        xs, ys, indices, weights = [], [], [], []
        for x, y, index, planned_index, weight in loader:  # ffcv reuses its batch buffers: copy what is kept
            np.testing.assert_array_equal(np.asarray(index).reshape(-1), planned_index.numpy())  # aligned by position
            xs.append(torch.as_tensor(x).clone())
            ys.append(torch.as_tensor(y).reshape(-1).clone())
            indices.append(torch.as_tensor(index).reshape(-1).clone())
            weights.append(weight)
        delivered.append((torch.cat(xs), torch.cat(ys), torch.cat(indices), torch.cat(weights), sampler.plan))
    return delivered


@pytest.mark.parametrize("workers", [1, 2])
def test_every_planned_index_once_per_epoch_with_its_weights(beton, workers: int) -> None:
    path, x, y = beton
    store = open_sidecar(path)
    store.update(np.arange(N), np.random.default_rng(0).random(N) + 0.01)
    sampler = unbiased_sampler(store, keep_ratio=0.5, epochs=4, seed=2)
    runs = _epochs(path, sampler, 4, workers)
    assert [len(run[2]) for run in runs] == [300, 150, 150, 300]  # warm-up, pruned, anneal
    for xs, ys, indices, weights, plan in runs:
        assert sorted(indices.tolist()) == sorted(plan.order.tolist())
        np.testing.assert_array_equal(xs.numpy(), x[indices.numpy()])
        np.testing.assert_array_equal(ys.numpy(), y[indices.numpy()])
        np.testing.assert_allclose(weights.numpy(), plan.weights_of(indices.numpy()))
    assert runs[1][2].tolist() != runs[2][2].tolist()  # the order changes every epoch, as planned
    store.close()


def test_determinism(beton) -> None:
    path, _, _ = beton
    orders = []
    for _ in range(2):
        store = open_sidecar(path, "r")
        orders.append(_epochs(path, unbiased_sampler(store, keep_ratio=0.5, epochs=3, seed=5), 2)[1][2].tolist())
    assert orders[0] == orders[1]


def test_bad_input(beton, tmp_path: Path) -> None:
    path, _, _ = beton
    with pytest.raises(FileNotFoundError, match=r"no such \.beton"):
        open_sidecar(tmp_path / "missing.beton")
    other = tmp_path / "other.beton"
    other.write_bytes(path.read_bytes())
    (tmp_path / "other.scores.zarr").symlink_to(tmp_path / "data.scores.zarr")
    with open(other, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x01")
    with pytest.raises((ScoreStoreError, ValueError)):
        open_sidecar(other)
    truncated = tmp_path / "cut.beton"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.beton"):
        open_sidecar(truncated)
    sampler = unbiased_sampler(open_sidecar(path, "r"), keep_ratio=0.5)
    with pytest.raises(TypeError, match="indices="):
        importance_loader(path, sampler, batch_size=32, indices=np.arange(10), pipelines=_pipelines())
    with pytest.raises(TypeError, match="order="):
        importance_loader(path, sampler, batch_size=32, order=None, pipelines=_pipelines())


def test_an_epoch_longer_than_the_first_is_delivered_whole(beton) -> None:
    """ffcv's own Loader cuts every epoch to the first one's length; ours must not drop the anneal epoch."""
    path, _, _ = beton
    store = open_sidecar(path)
    sampler = unbiased_sampler(store, keep_ratio=0.5, epochs=4, warmup_epochs=0, seed=1, batch_size=32)
    loader = importance_loader(path, sampler, batch_size=32, num_workers=1, pipelines=_pipelines())
    for epoch, expected in enumerate([150, 150, 150, 300]):
        assert len(loader) == sampler.num_batches(epoch)
        indices = np.concatenate([np.asarray(index).reshape(-1).copy() for _, _, index in loader])
        assert sorted(indices.tolist()) == sorted(sampler.plan.order.tolist())
        assert len(indices) == expected
    store.close()


def test_resume_mid_epoch_continues_the_identical_order(beton) -> None:
    path, _, _ = beton
    store = open_sidecar(path)
    store.update(np.arange(N), np.random.default_rng(3).random(N) + 0.01)

    def loader_for(sampler: SADPSampler):
        return importance_loader(path, sampler, batch_size=32, num_workers=1, pipelines=_pipelines())

    full = loader_for(unbiased_sampler(store, keep_ratio=0.5, epochs=4, seed=4))
    list(full)
    uninterrupted = np.concatenate([np.asarray(index).reshape(-1).copy() for _, _, index in full])
    interrupted = loader_for(unbiased_sampler(store, keep_ratio=0.5, epochs=4, seed=4))
    list(interrupted)
    head = []
    for _, _, index in interrupted:
        head.append(np.asarray(index).reshape(-1).copy())
        if len(head) == 2:
            break
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 64
    resumed_sampler = unbiased_sampler(store, keep_ratio=0.5, epochs=4, seed=4)
    resumed = importance_loader(
        path, resumed_sampler, batch_size=32, num_workers=1, pipelines=_pipelines(), with_weights=True
    )
    resumed.load_state_dict(state)
    assert len(resumed) == -(-(150 - 64) // 32)
    tail = []
    for _, _, index, planned_index, weight in resumed:
        np.testing.assert_array_equal(np.asarray(index).reshape(-1), planned_index.numpy())
        np.testing.assert_array_equal(weight.numpy(), resumed_sampler.weights(planned_index))
        tail.append(planned_index.numpy())
        if len(tail) == 1:
            assert resumed.state_dict()["position"] == 96  # a resumed epoch counts from where it resumed
    np.testing.assert_array_equal(np.concatenate([*head, *tail]), uninterrupted)
    store.close()


def test_weights_for_still_works_and_warns(beton) -> None:
    path, _, _ = beton
    store = open_sidecar(path)
    store.update(np.arange(N), np.random.default_rng(5).random(N) + 0.01)
    sampler = unbiased_sampler(store, keep_ratio=0.5, epochs=3, seed=1)
    sampler.set_epoch(1)
    index = torch.as_tensor(sampler.plan.order[:8]).reshape(-1, 1)
    with pytest.warns(DeprecationWarning, match="with_weights=True"):
        weights = weights_for(sampler, index)
    np.testing.assert_array_equal(weights.numpy(), sampler.plan.weights[:8])
    store.close()


def test_ranks_take_equal_disjoint_slices_of_one_plan(beton) -> None:
    path, _, _ = beton
    store = open_sidecar(path, "r")
    parts = []
    for rank in range(3):
        sampler = unbiased_sampler(store, keep_ratio=0.5, epochs=4, seed=7, num_replicas=3, rank=rank)
        loader = importance_loader(path, sampler, batch_size=16, num_workers=1, pipelines=_pipelines())
        list(loader)
        parts.append(np.concatenate([np.asarray(index).reshape(-1).copy() for _, _, index in loader]))
        plan = sampler.plan.order
    assert [len(part) for part in parts] == [50, 50, 50]
    np.testing.assert_array_equal(np.concatenate(parts), plan)


def test_page_window_reads_pages_in_windows(tmp_path: Path) -> None:
    from sadp_data.adapters.ffcv import page_groups, sampler_for, write_beton
    from sadp_data.sources import open_source

    rng = np.random.default_rng(5)
    np.savez(tmp_path / "big.npz", x=rng.integers(0, 255, (400, 50_000), dtype=np.uint8), y=rng.integers(0, 10, 400))
    path = write_beton(open_source(str(tmp_path / "big.npz")), tmp_path / "big.beton", page_size=1 << 21)
    pages = page_groups(path)
    assert len(np.unique(pages)) >= 8 and np.all(np.diff(pages) >= 0)  # written in order, ~40 samples a page
    sampler = sampler_for(path, page_window=2, keep_ratio=0.5, epochs=4, seed=1, schedule="constant")
    list(importance_loader(path, sampler, batch_size=16, num_workers=1, pipelines=_pipelines()))
    visited = pages[sampler.plan.order]
    assert len(np.unique(visited)) >= 8
    # a page's examples lie within one window of 2 pages: each page's positions span few page switches
    for page in np.unique(visited):
        positions = np.flatnonzero(visited == page)
        others = set(visited[positions.min() : positions.max() + 1].tolist()) - {page}
        assert len(others) <= 1, (page, others)


@pytest.mark.slow
def test_the_documented_example_trains_the_demo_snn_from_a_beton(tmp_path: Path, monkeypatch) -> None:
    """docs/ffcv.md's example, run as written on a small .beton of 28x28 images."""
    snippet = doc_block("docs/ffcv.md", "# FFCV")
    assert "importance_loader(path, sampler" in snippet
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 255, (200, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, 200))
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "data.npz", "small.beton", "--format", "ffcv", "--no-progress"]) == 0
    namespace: dict = {}
    exec(compile(snippet, "docs/ffcv.md (example)", "exec"), namespace)
    sampler = namespace["sampler"]
    store = open_sidecar(tmp_path / "small.beton", "r")
    assert store.version > 0 and np.count_nonzero(store.seen()) == 200  # every example scored in the warm-up
    assert sampler.epoch == 1 and len(sampler.plan) == 140  # warm-up on all 200, then keep 0.7


def test_a_store_of_another_dataset_passed_in_directly_is_refused(beton, tmp_path: Path) -> None:
    from sadp_data import ScoreStore

    other = ScoreStore.create(tmp_path / "c.scores.zarr", N, fingerprint="another-beton")
    with pytest.raises(ScoreStoreError, match="another dataset"):
        importance_loader(beton[0], unbiased_sampler(other, 0.5, epochs=3), batch_size=32, pipelines=_pipelines())
    other.close()
