"""Event-camera data: the N-MNIST reader, frame integration (numba vs numpy vs tonic), conversion.

Reader, kernel and conversion tests run on the synthetic N-MNIST folder and, when it is found, on the
real subset too (the ``nmnist`` fixture, ``tests/conftest.py``); the demo and bench tests only need
recordings in the format, so they use the synthetic folder.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from _nmnist import write_synthetic_nmnist

from sadp_data.cli import main
from sadp_data.shards import ShardIndex
from sadp_data.sources.events import EVENT_DTYPE, read_events
from sadp_data.sources.events.frames import integrate, integrate_reference
from sadp_data.sources.events.nmnist import NMNIST, SENSOR_SIZE


@pytest.mark.needs_nmnist
def test_reader_on_the_shared_subset(nmnist_subset: Path) -> None:
    train, test = NMNIST(nmnist_subset, "train"), NMNIST(nmnist_subset, "test")
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


def test_synthetic_recordings_read_back_as_written(tmp_path: Path) -> None:
    """The synthetic folder's encoder and the reader agree on every field, label and split."""
    written = write_synthetic_nmnist(tmp_path, train=12, test=5, seed=3)
    for split, count in (("train", 12), ("test", 5)):
        dataset = NMNIST(tmp_path, split)
        assert len(dataset) == count
        for index in range(count):
            events, label = dataset[index]
            expected = written[int(dataset.labels[index, 0])]
            assert label == expected["label"] and events.dtype == EVENT_DTYPE
            for field in ("x", "y", "p", "t"):
                np.testing.assert_array_equal(events[field], expected[field])
    assert max(int(w["t"].max()) for w in written.values()) > 1 << 16  # the timestamp's top byte is used


def _layout(folder: Path) -> dict:
    """What a reader relies on: the label lists' names, header and line shape, the recordings' suffixes."""
    lists = {}
    for name in ("train1K.txt", "test100.txt"):
        header, first, *_ = (folder / name).read_text().splitlines()
        assert (folder / "samples" / f"{first.split()[0]}.bs2").is_file()
        lists[name] = (header, re.sub("[0-9]+", "N", first))
    return {"lists": lists, "suffixes": {path.suffix for path in (folder / "samples").iterdir()}}


@pytest.mark.needs_nmnist
def test_synthetic_folder_has_the_subsets_layout(nmnist_subset: Path, synthetic_nmnist: Path) -> None:
    """What the synthetic folder stands in for: the same files, label-list header and line format."""
    assert (
        _layout(synthetic_nmnist)
        == _layout(nmnist_subset)
        == {
            "lists": {"train1K.txt": ("#sample #class", "N\tN"), "test100.txt": ("#sample #class", "N\tN")},
            "suffixes": {".bs2"},
        }
    )


def test_malformed_files_name_file_and_offset(tmp_path: Path, synthetic_nmnist: Path) -> None:
    good = (synthetic_nmnist / "samples" / "1.bs2").read_bytes()
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
def test_kernel_matches_reference_and_tonic(nmnist: Path, by: str, n_bins: int) -> None:
    tonic = pytest.importorskip("tonic")
    dataset = NMNIST(nmnist, "train")
    for index in (0, 1, len(dataset) - 1):
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
def test_convert_nmnist_round_trip(tmp_path: Path, nmnist: Path, frames: int | None) -> None:
    from sadp_data.adapters.webdataset import ScoredShards

    out = tmp_path / "shards"
    argv = ["convert", f"nmnist:{nmnist}", str(out), "--limit", "40", "--shard-size", "16", "--no-progress"]
    assert main(argv + ([] if frames is None else ["--frames", str(frames)])) == 0
    index = ShardIndex.load(out)
    assert index.num_examples == 40 and ("frames=4" in index.meta["source"]) == (frames is not None)
    sampler = ScoredShards.sampler_for(out, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    field = "events.npy" if frames is None else "x.npy"
    dataset = NMNIST(nmnist, "train")
    for value, label, example, _ in ScoredShards(out, sampler).decode().to_tuple(field, "y.cls"):
        events, expected_label = dataset[example]
        assert label == expected_label
        if frames is None:
            np.testing.assert_array_equal(value, events)
        else:
            np.testing.assert_array_equal(value, integrate(events, SENSOR_SIZE, frames))
    sampler.store.close()


@pytest.mark.slow
def test_nmnist_demo_through_scored_shards(tmp_path: Path, synthetic_nmnist: Path) -> None:
    import json

    out = tmp_path / "nmnist.json"
    argv = [
        "demo",
        "--dataset",
        "nmnist",
        "--data",
        str(synthetic_nmnist),
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


def test_bench_dvs_reports_events_per_second(synthetic_nmnist: Path) -> None:
    from sadp_data.bench.loader import run_dvs_bench

    result = run_dvs_bench(synthetic_nmnist, rounds=1, limit=20)
    assert result["backend"] == "dvs" and result["recordings"] == 20
    assert {"numba", "numpy"} <= set(result["integration"])
    assert all(v["events_per_s"] > 0 for v in result["integration"].values())
