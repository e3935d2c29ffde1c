"""``sadp_data.adapters.ray`` on a local Ray instance: shards byte-identical to the serial conversion, and a
scoring pass on Ray Data actors equal to an in-process ``rescore``."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import sadp_data as sd  # noqa: E402
from sadp_data.adapters.ray import score_with_ray, write_shards_ray  # noqa: E402
from sadp_data.shards.writer import write_shards  # noqa: E402
from sadp_data.sources import open_source  # noqa: E402

N, SHARD = 230, 64


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("src") / "data.npz"
    np.savez(path, x=rng.integers(0, 255, (N, 6, 5), dtype=np.uint8), y=rng.integers(0, 10, N))
    return open_source(str(path))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_ray_tasks_write_the_serial_conversion_byte_for_byte(source, tmp_path) -> None:
    serial = write_shards(source, tmp_path / "serial", SHARD, progress=False)
    dataset = ray.data.from_items([source[i] for i in range(len(source))], override_num_blocks=3)
    rows = write_shards_ray(dataset, tmp_path / "dataset", SHARD, source_name=source.name, progress=False)
    pickled = write_shards_ray(source, tmp_path / "source", SHARD, progress=False)
    assert rows.fingerprint == pickled.fingerprint == serial.fingerprint and len(rows.shards) == 4
    expected = _files(tmp_path / "serial")
    assert _files(tmp_path / "dataset") == expected and _files(tmp_path / "source") == expected
    with pytest.raises(FileExistsError, match="not empty"):  # write_shards' checks and staging apply
        write_shards_ray(source, tmp_path / "serial", SHARD, progress=False)


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


@pytest.mark.slow
def test_scoring_on_ray_actors_equals_an_in_process_rescore(source, tmp_path) -> None:
    x = torch.stack([torch.from_numpy(source[i]["x.npy"]).float() / 255 for i in range(N)])
    y = torch.tensor([source[i]["y.cls"] for i in range(N)])
    rows = [{"x": x[i].numpy(), "y": int(y[i]), "index": i} for i in range(N)]
    dataset = ray.data.from_items(rows, override_num_blocks=4)
    with sd.ScoreStore.create(tmp_path / "ray.zarr", N) as store:
        assert score_with_ray(dataset, store, functools.partial(_model), inputs="x", targets="y", batch_size=50,
                              actors=2, progress=False, loss="cross_entropy") == N  # fmt: skip
        store.flush()
        on_ray = store.scores().copy()
        assert (store.seen() == 1).all()
    with sd.ScoreStore.create(tmp_path / "local.zarr", N) as store:
        scorer = sd.SpikeAwareScorer(_model(), store, loss="cross_entropy")
        batches = [(x[i : i + 50], y[i : i + 50], torch.arange(i, min(i + 50, N))) for i in range(0, N, 50)]
        assert scorer.rescore(batches) == N
        store.flush()
        np.testing.assert_allclose(on_ray, store.scores(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="actors and batch_size must be positive"):
        score_with_ray(dataset, store, _model, inputs="x", targets="y", actors=0)


@pytest.mark.slow
def test_the_documented_snippet_runs(source, tmp_path, monkeypatch) -> None:
    from _docs import run_doc_block

    monkeypatch.chdir(tmp_path)
    rows = ray.data.from_items([source[i] for i in range(len(source))])
    scoring = ray.data.from_items(
        [{"x": source[i]["x.npy"].astype(np.float32) / 255, "y": source[i]["y.cls"], "index": i} for i in range(N)]
    )
    namespace = {"rows": rows, "scoring_rows": scoring, "make_model": _model}
    namespace = run_doc_block("docs/distributed.md", "## Converting and scoring on a Ray cluster", namespace)
    assert namespace["index"].num_examples == N
    namespace["store"].flush()
    assert (namespace["store"].seen() == 1).all()
    namespace["store"].close()
