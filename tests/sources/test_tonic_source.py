"""``tonic:NAME:PATH`` sources: tonic's on-disk layouts converted to scored shards, checked against tonic itself.

N-MNIST uses recordings of an N-MNIST folder (``.bs2`` files are N-MNIST's ``.bin`` format) laid out as
tonic expects: the synthetic folder, and the real ``nmnist-small`` subset when found (the ``nmnist``
fixture, ``tests/conftest.py``); DVSGesture uses small synthetic ``.npy`` files in tonic's layout. Both
are compared with tonic's own readers / dataset classes (their download check patched out, so nothing
is fetched).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _docs import doc_block

from sadp_data.cli import main
from sadp_data.shards import ShardIndex
from sadp_data.sources.events import EVENT_DTYPE
from sadp_data.sources.events.frames import integrate
from sadp_data.store import ScoreStoreError

tonic = pytest.importorskip("tonic")
from tonic.io import read_mnist_file  # noqa: E402

PER_LABEL = {"Train": 3, "Test": 2}
SENSOR = (34, 34, 2)


def _lay_out(root: Path, save_to: Path) -> dict[str, list[tuple[Path, int]]]:
    """Symlink a few recordings per label of the N-MNIST folder ``root`` into
    ``save_to/NMNIST/{Train,Test}/<label>/<id>.bin``; the expected order per split (labels ascending,
    then file names in string order: ``10.bin`` < ``2.bin``)."""
    expected = {}
    for folder, lists in (("Train", "train1K.txt"), ("Test", "test100.txt")):
        rows = np.loadtxt(root / lists, dtype=np.int64, comments="#")
        chosen = []
        for label in range(10):
            for sample_id in rows[rows[:, 1] == label, 0][: PER_LABEL[folder]]:
                target = save_to / "NMNIST" / folder / str(label) / f"{sample_id}.bin"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(root / "samples" / f"{sample_id}.bs2")
                chosen.append((target, label))
        expected[folder] = sorted(chosen, key=lambda item: (item[1], item[0].name))
    return expected


@pytest.fixture(scope="module")
def layout(tmp_path_factory, nmnist: Path) -> tuple[Path, dict[str, list[tuple[Path, int]]]]:
    save_to = tmp_path_factory.mktemp("tonic")
    return save_to, _lay_out(nmnist, save_to)


def _convert(spec: str, out: Path, *extra: str) -> ShardIndex:
    assert main(["convert", spec, str(out), "--shard-size", "8", "--no-progress", *extra]) == 0
    return ShardIndex.load(out)


def _fails(argv: list[str], capsys, message: str) -> None:
    """``sadp-data`` exits with status 2 and ``message`` in its error line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _samples(out: Path, field: str) -> dict[int, tuple[np.ndarray, int]]:
    """Every sample of the shards, by example index, read through ``ScoredShards``."""
    from sadp_data.adapters.webdataset import ScoredShards

    sampler = ScoredShards.sampler_for(out, keep_ratio=1.0, warmup_epochs=0)
    sampler.set_epoch(0)
    stream = ScoredShards(out, sampler).decode().to_tuple(field, "y.cls")
    found = {int(example): (value, int(label)) for value, label, example, _ in stream}
    sampler.store.close()
    return found


def _tonic_dataset(cls, monkeypatch, save_to: Path, train: bool):
    """tonic's own dataset class over ``save_to``, its archive check (and so its download) patched out."""
    monkeypatch.setattr(cls, "_check_exists", lambda self: True)
    return cls(str(save_to), train=train)


@pytest.mark.parametrize("split", ["train", "test"])
def test_raw_events_equal_tonics_reader(layout, tmp_path: Path, monkeypatch, split: str) -> None:
    save_to, expected = layout
    files = expected["Train" if split == "train" else "Test"]
    index = _convert(f"tonic:NMNIST:{save_to}", tmp_path / "shards", "--split", split)
    assert index.num_examples == len(files) == 10 * PER_LABEL["Train" if split == "train" else "Test"]
    assert index.meta["source"] == f"tonic:NMNIST:NMNIST:{split}"  # no local path
    samples = _samples(tmp_path / "shards", "events.npy")
    assert sorted(samples) == list(range(len(files)))
    theirs = _tonic_dataset(tonic.datasets.NMNIST, monkeypatch, save_to, split == "train")
    assert [Path(p) for p in theirs.data] == [path for path, _ in files]  # tonic's order is ours
    names = {label: [path.name for path, own in files if own == label] for label in range(10)}
    assert all(found == sorted(found) for found in names.values())  # file names in string order, as tonic sorts
    if split == "train":  # ... which is not numeric order (e.g. 11 < 13 < 8) for some label of these recordings
        assert any(found != sorted(found, key=lambda name: int(name.split(".")[0])) for found in names.values())
    for example, (path, label) in enumerate(files):
        events, stored_label = samples[example]
        reference = read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
        assert stored_label == label == theirs.targets[example]
        assert events.dtype == EVENT_DTYPE and len(events) == len(reference) > 0
        for field in ("x", "y", "t", "p"):  # tonic's fields are int64, ours int16/int64/int8: compare values
            np.testing.assert_array_equal(events[field].astype(np.int64), reference[field], err_msg=f"{path}:{field}")
    np.testing.assert_array_equal(samples[0][0]["t"], theirs[0][0]["t"])


def test_either_path_and_repeat_give_the_same_shards(layout, tmp_path: Path) -> None:
    save_to, _ = layout
    first = _convert(f"tonic:NMNIST:{save_to}", tmp_path / "a")
    again = _convert(f"tonic:NMNIST:{save_to / 'NMNIST'}", tmp_path / "b")
    assert first.fingerprint == again.fingerprint and first.meta["source"] == again.meta["source"]
    for shard in sorted((tmp_path / "a").glob("*.tar")):
        assert (tmp_path / "b" / shard.name).read_bytes() == shard.read_bytes()


def test_frames_enter_the_name_and_the_fingerprint(layout, tmp_path: Path) -> None:
    from sadp_data.adapters.webdataset import ScoredShards

    save_to, expected = layout
    indexes = {}
    for bins in (4, 8):
        out = tmp_path / f"frames{bins}"
        indexes[bins] = _convert(f"tonic:NMNIST:{save_to}", out, "--frames", str(bins))
        assert indexes[bins].meta["source"].endswith(f":train:frames={bins}:by=time")
        for example, (frames, label) in _samples(out, "x.npy").items():
            path, expected_label = expected["Train"][example]
            raw = read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
            events = np.empty(len(raw), dtype=EVENT_DTYPE)
            for field in ("x", "y", "t", "p"):
                events[field] = raw[field]
            assert label == expected_label and frames.dtype == np.int16 and frames.shape == (bins, 2, 34, 34)
            np.testing.assert_array_equal(frames, integrate(events, SENSOR, bins))
    assert indexes[4].fingerprint != indexes[8].fingerprint
    with pytest.raises(ScoreStoreError, match="another dataset"):  # the sidecar of 4 frames, for 8 frames
        indexes[8].open_store(path=tmp_path / "frames4" / "scores.zarr")
    sampler = ScoredShards.sampler_for(tmp_path / "frames4", keep_ratio=1.0, warmup_epochs=0)
    with pytest.raises(ScoreStoreError, match="another dataset"):
        ScoredShards(tmp_path / "frames8", sampler)
    sampler.store.close()


def test_layout_errors_name_the_path(layout, tmp_path: Path, capsys) -> None:
    save_to, expected = layout
    out = str(tmp_path / "out")

    def fails(spec: str, message: str, *extra: str) -> None:
        _fails(["convert", spec, out, "--overwrite", *extra], capsys, message)

    fails(f"tonic:nmnist:{save_to}", "unknown tonic dataset 'nmnist'; known: ['DVSGesture', 'NMNIST']")
    fails(f"tonic:CIFAR10DVS:{save_to}", "tonic:CIFAR10DVS is not supported: its .aedat4 recordings need the aedat")
    fails("tonic:NMNIST", "expected tonic:NAME:PATH")
    fails(f"tonic:NMNIST:{tmp_path / 'nowhere'}", f"{tmp_path / 'nowhere'}: no such folder")
    fails(f"tonic:NMNIST:{tmp_path}", f"{tmp_path}: not a tonic NMNIST layout")
    fails(f"tonic:NMNIST:{save_to}", "--frames must be positive", "--frames", "0")
    split = tmp_path / "only_test" / "NMNIST" / "Test"
    split.mkdir(parents=True)
    fails(f"tonic:NMNIST:{tmp_path / 'only_test'}", f"{split.parent}: missing the train folder Train")
    (split / "3").mkdir()
    fails(f"tonic:NMNIST:{split.parent}", f"{split}: no .bin recordings", "--split", "test")
    (split / "three").mkdir()
    fails(f"tonic:NMNIST:{split.parent}", f"{split / 'three'}: an N-MNIST label folder must be", "--split", "test")
    (split / "three").rmdir()
    bad = split / "3" / "bad.bin"
    bad.write_bytes(expected["Test"][0][0].read_bytes()[:12])
    fails(f"tonic:NMNIST:{split.parent}", f"{bad}: truncated event at byte offset 10", "--split", "test")
    bad.write_bytes(bytes([40, 1, 0, 0, 5]))  # x = 40 on a 34-pixel-wide sensor
    fails(f"tonic:NMNIST:{split.parent}", f"{bad}: event 0 (x=40", "--split", "test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tonic.io", None)  # as if tonic were not installed
        fails(f"tonic:NMNIST:{split.parent}", "but tonic is not installed (pip install tonic)", "--split", "test")


def _gesture_layout(save_to: Path) -> list[tuple[Path, int, np.ndarray]]:
    """Synthetic DVSGesture recordings in tonic's layout: ``[n, 4]`` arrays of x, y, p, t (ms)."""
    rng = np.random.default_rng(7)
    recordings = []
    for user, labels, dtype in (("user01_fluorescent", (10, 2, 0), np.int64), ("user02_lab", (5,), np.float64)):
        for label in labels:
            n = int(rng.integers(50, 200))
            array = np.stack(
                [
                    rng.integers(0, 128, n),
                    rng.integers(0, 128, n),
                    rng.integers(0, 2, n),
                    np.sort(rng.integers(0, 900, n)),
                ],
                axis=1,
            ).astype(dtype)
            path = save_to / "DVSGesture" / "ibmGestureTrain" / user / f"{label}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
            recordings.append((path, label, array))
    return sorted(recordings, key=lambda r: (r[0].parent.name, r[1]))


def test_dvsgesture_layout_equals_tonics_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    import numpy.lib.recfunctions  # noqa: F401  (tonic's DVSGesture uses np.lib.recfunctions without importing it)

    save_to = tmp_path / "save_to"
    recordings = _gesture_layout(save_to)
    index = _convert(f"tonic:DVSGesture:{save_to}", tmp_path / "shards")
    assert index.num_examples == 4 and [r[1] for r in recordings] == [0, 2, 10, 5]  # labels ascending per user
    theirs = _tonic_dataset(tonic.datasets.DVSGesture, monkeypatch, save_to, True)
    by_path = {Path(path): i for i, path in enumerate(theirs.data)}
    samples = _samples(tmp_path / "shards", "events.npy")
    for example, (path, label, array) in enumerate(recordings):
        events, stored_label = samples[example]
        reference, their_label = theirs[by_path[path]]
        assert stored_label == label == their_label and events.dtype == EVENT_DTYPE
        for field in ("x", "y", "t", "p"):
            np.testing.assert_array_equal(events[field], reference[field].astype(events[field].dtype))
        np.testing.assert_array_equal(events["t"], array[:, 3].astype(np.int64) * 1000)
    frames = _convert(f"tonic:DVSGesture:{save_to / 'DVSGesture'}", tmp_path / "frames", "--frames", "3")
    assert frames.meta["source"].endswith(":train:frames=3:by=time") and frames.fingerprint != index.fingerprint
    for example, (value, _) in _samples(tmp_path / "frames", "x.npy").items():
        np.testing.assert_array_equal(value, integrate(samples[example][0], (128, 128, 2), 3))
    np.save(recordings[0][0], np.zeros((3, 5)))
    bad = ["convert", f"tonic:DVSGesture:{save_to}", str(tmp_path / "bad")]
    _fails(bad, capsys, f"{recordings[0][0]}: expected a numeric [n, 4] array of x, y, p, t (ms), got float64 (3, 5)")
    (recordings[0][0].parent / "left.npy").write_bytes(b"")
    _fails(bad, capsys, f"{recordings[0][0].parent / 'left.npy'}: a DVSGesture recording must be named <label>.npy")
    (save_to / "DVSGesture" / "ibmGestureTrain" / "nobody").mkdir()
    _fails(bad, capsys, "nobody: a DVSGesture folder must be named user<NN>_<lighting>")


def test_the_documented_commands_run(layout, tmp_path: Path, monkeypatch) -> None:
    """docs/shards.md's tonic commands, as written, with ``~/data`` pointing at a tonic-layout folder."""
    import shlex

    save_to, _ = layout
    _gesture_layout(save_to)
    block = doc_block("docs/shards.md", "### Event datasets in tonic's layout", "bash")
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    monkeypatch.chdir(tmp_path)
    ran = 0
    for command in filter(None, commands):
        argv = shlex.split(command.replace("~/data", str(save_to)))
        assert argv[0] == "sadp-data"
        assert main(argv[1:]) == 0, command
        ran += 1
    assert ran == 3 and ShardIndex.load(tmp_path / "out" / "gesture").num_examples > 0
