"""Event-camera data: the N-MNIST reader, frame integration (numba vs numpy vs tonic), conversion."""

import os
from pathlib import Path

import numpy as np
import pytest

from sadp_data.cli import main
from sadp_data.events import EVENT_DTYPE, read_events
from sadp_data.events.frames import integrate, integrate_reference
from sadp_data.events.nmnist import NMNIST, SENSOR_SIZE
from sadp_data.shards import ShardIndex

ROOT = Path(
    os.environ.get("SADP_NMNIST", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nmnist-small")
)
# Developers without the shared data skip these tests; CI (CI=true) has it beside the clone and
# must not skip, so there a missing folder fails loudly instead.
pytestmark = pytest.mark.skipif(
    not ROOT.is_dir() and os.environ.get("CI") != "true", reason=f"{ROOT} is not here (set SADP_NMNIST)"
)


def test_reader_on_the_shared_subset() -> None:
    train, test = NMNIST(ROOT, "train"), NMNIST(ROOT, "test")
    assert len(train) == 1000 and len(test) == 100
    assert [train[i][1] for i in range(4)] == [5, 0, 4, 1] and [test[i][1] for i in range(4)] == [7, 2, 1, 0]
    counts = []
    for index in range(0, 1000, 37):
        events, _ = train[index]
        assert events.dtype == EVENT_DTYPE
        assert events["x"].min() >= 0 and events["x"].max() <= 33 and events["y"].max() <= 33
        assert set(np.unique(events["p"])) <= {0, 1}
        assert np.all(np.diff(events["t"]) >= 0) and events["t"].max() <= 336_040
        counts.append(len(events))
    assert 1069 <= min(counts) and max(counts) <= 7152
    labels = np.array([train.labels[i, 1] for i in range(1000)])
    assert np.bincount(labels).min() >= 87


def test_malformed_files_name_file_and_offset(tmp_path: Path) -> None:
    good = (ROOT / "samples" / "1.bs2").read_bytes()
    truncated = tmp_path / "cut.bs2"
    truncated.write_bytes(good[:-2])
    with pytest.raises(ValueError, match=rf"cut.bs2: truncated event at byte offset {len(good) - 5}"):
        read_events(truncated)
    outside = tmp_path / "outside.bs2"
    outside.write_bytes(bytes([40, 3, 0, 0, 1]) + good[5:])
    with pytest.raises(ValueError, match=r"outside\.bs2: event 0 at byte offset 0 has x=40"):
        read_events(outside)
    backwards = tmp_path / "back.bs2"
    backwards.write_bytes(bytes([1, 1, 0, 0, 9, 1, 1, 0, 0, 2]))
    with pytest.raises(ValueError, match=r"back.bs2: timestamp goes backwards at event 1 \(byte offset 5\)"):
        read_events(backwards)
    with pytest.raises(ValueError, match="unknown event format"):
        read_events(truncated, format="aedat4")


@pytest.mark.parametrize("by", ["time", "count"])
@pytest.mark.parametrize("n_bins", [1, 3, 10])
def test_kernel_matches_reference_and_tonic(by: str, n_bins: int) -> None:
    tonic = pytest.importorskip("tonic")
    dataset = NMNIST(ROOT, "train")
    for index in (0, 1, 500):
        events, _ = dataset[index]
        frames = integrate(events, SENSOR_SIZE, n_bins, by=by)
        np.testing.assert_array_equal(frames, integrate_reference(events, SENSOR_SIZE, n_bins, by=by))
        assert frames.sum() == len(events)  # by default no event is dropped
        bins = {"n_time_bins": n_bins} if by == "time" else {"n_event_bins": n_bins}
        expected = tonic.transforms.ToFrame(sensor_size=SENSOR_SIZE, **bins)(events)
        np.testing.assert_array_equal(integrate(events, SENSOR_SIZE, n_bins, by=by, drop_incomplete=True), expected)
        assert integrate(events, SENSOR_SIZE, n_bins, by=by, clip=1).max() <= 1


def test_frame_errors() -> None:
    events = np.zeros(3, dtype=EVENT_DTYPE)
    events["x"] = [1, 2, 99]
    with pytest.raises(ValueError, match=r"event 2 \(x=99"):
        integrate(events, SENSOR_SIZE, 4)
    with pytest.raises(ValueError, match="n_bins must be positive"):
        integrate(events[:2], SENSOR_SIZE, 0)
    assert integrate(np.zeros(0, dtype=EVENT_DTYPE), SENSOR_SIZE, 4).sum() == 0


@pytest.mark.parametrize("frames", [None, 4])
def test_convert_nmnist_round_trip(tmp_path: Path, frames: int | None) -> None:
    from sadp_data.adapters.webdataset import ScoredShards

    out = tmp_path / "shards"
    argv = ["convert", f"nmnist:{ROOT}", str(out), "--limit", "40", "--shard-size", "16", "--no-progress"]
    assert main(argv + ([] if frames is None else ["--frames", str(frames)])) == 0
    index = ShardIndex.load(out)
    assert index.num_examples == 40 and ("frames=4" in index.meta["source"]) == (frames is not None)
    sampler = ScoredShards.sampler_for(out, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    field = "events.npy" if frames is None else "x.npy"
    dataset = NMNIST(ROOT, "train")
    for value, label, example, _ in ScoredShards(out, sampler).decode().to_tuple(field, "y.cls"):
        events, expected_label = dataset[example]
        assert label == expected_label
        if frames is None:
            np.testing.assert_array_equal(value, events)
        else:
            np.testing.assert_array_equal(value, integrate(events, SENSOR_SIZE, frames))
    sampler.store.close()


def test_nmnist_demo_through_scored_shards(tmp_path: Path) -> None:
    import json

    out = tmp_path / "nmnist.json"
    argv = [
        "demo",
        "--dataset",
        "nmnist",
        "--data",
        str(ROOT),
        "--quick",
        "--train-size",
        "96",
        "--epochs",
        "2",
        "--no-progress",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"full", "random", "sadp"} and result["config"]["dataset"] == "nmnist"
    assert result["methods"]["full"]["examples_seen"] == 2 * 96
    assert result["methods"]["sadp"]["examples_seen"] == 96 + round(0.7 * 96)
    assert result["scored_examples"] == 96


def test_bench_dvs_reports_events_per_second() -> None:
    from sadp_data.bench.loader import run_dvs_bench

    result = run_dvs_bench(ROOT, rounds=1, limit=20)
    assert result["backend"] == "dvs" and result["recordings"] == 20
    assert {"numba", "numpy"} <= set(result["integration"])
    assert all(v["events_per_s"] > 0 for v in result["integration"].values())
