"""Parallel conversion (``convert --workers P``): byte-identical to serial, errors named, bad values refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sadp_data.cli import main
from sadp_data.shards import SIDECAR, ShardIndex
from sadp_data.shards.parallel_convert import ConversionError, check_workers, default_start_method
from sadp_data.shards.writer import write_shards
from sadp_data.sources import Source, open_source
from sadp_data.sources.datasets import default_data_dir

N = 103  # shard size 25: shards of 25, 25, 25, 25 and a partial 3


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, x=rng.integers(0, 255, (N, 6, 5), dtype=np.uint8), y=rng.integers(0, 10, N))
    return path


@pytest.fixture(scope="module")
def serial(npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "shards"
    assert main(["convert", str(npz), str(out), "--shard-size", "25", "--no-progress"]) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a converted folder but the score sidecar, by name."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and SIDECAR not in path.parts
    }


def assert_identical(expected: Path, actual: Path) -> None:
    """Same file names and bytes (tars, index.json, offsets.npy, wids json); a sidecar with the same fingerprint."""
    want, got = _files(expected), _files(actual)
    assert sorted(got) == sorted(want)
    assert [name for name in want if want[name] != got[name]] == []
    index = ShardIndex.load(actual)
    assert index.fingerprint == ShardIndex.load(expected).fingerprint
    store = index.open_store("r")  # refuses a sidecar of another size or fingerprint
    assert store.fingerprint == index.fingerprint
    store.close()


@pytest.mark.parametrize("workers", [2, 3])
def test_npz_conversion_is_byte_identical_to_the_serial_one(
    npz: Path, serial: Path, tmp_path: Path, workers: int, monkeypatch
) -> None:
    from sadp_data import shard_writer

    monkeypatch.setattr(shard_writer, "_write_serially", None)  # prove the parallel path wrote it
    out = tmp_path / "shards"
    assert main(["convert", str(npz), str(out), "--shard-size", "25", "--workers", str(workers), "--no-progress"]) == 0
    assert_identical(serial, out)
    assert [shard["nsamples"] for shard in ShardIndex.load(out).shards] == [25, 25, 25, 25, 3]


def test_fewer_shards_than_workers_and_a_single_shard(npz: Path, tmp_path: Path) -> None:
    source = open_source(str(npz))
    for shard_size, workers in [(40, 5), (N, 3)]:  # 3 shards for 5 workers; 1 shard for 3 (the serial path)
        expected = write_shards(source, tmp_path / f"serial-{shard_size}", shard_size=shard_size, progress=False)
        actual = tmp_path / f"parallel-{shard_size}"
        index = write_shards(source, actual, shard_size=shard_size, progress=False, workers=workers)
        assert_identical(expected.root, actual)
        assert index.meta == expected.meta and np.array_equal(index.offsets, expected.offsets)


def test_fashion_mnist_subset_is_byte_identical(tmp_path: Path) -> None:
    data = default_data_dir()
    if not (data / "train-images-idx3-ubyte.gz").exists() and not (data / "train-images-idx3-ubyte").exists():
        pytest.skip(f"no Fashion-MNIST IDX files in {data}")
    common = [str(data), "--limit", "2500", "--shard-size", "1000", "--no-progress"]
    assert main(["convert", common[0], str(tmp_path / "serial"), *common[1:]]) == 0
    assert main(["convert", common[0], str(tmp_path / "p2"), *common[1:], "--workers", "2"]) == 0
    assert_identical(tmp_path / "serial", tmp_path / "p2")
    index = ShardIndex.load(tmp_path / "p2")
    assert [shard["nsamples"] for shard in index.shards] == [1000, 1000, 500]
    assert index.consecutive_shards and index.keys_are_indices


@pytest.mark.slow
def test_spawn_workers_give_the_same_bytes(npz: Path, serial: Path, tmp_path: Path) -> None:
    """The ``Source`` of an .npz pickles, so spawn workers (re-importing everything) work too."""
    from sadp_data.shards.parallel_convert import write_shards_parallel

    records = write_shards_parallel(
        open_source(str(npz)), _empty(tmp_path / "raw"), 25, "train", False, 2, start_method="spawn"
    )
    assert [record.shard for record in records] == [0, 1, 2, 3, 4]
    for record in records:
        assert (tmp_path / "raw" / record.url).read_bytes() == (serial / record.url).read_bytes()


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


class FailsAt:
    """A map-style dataset whose item ``bad`` raises (``exit``: whose worker process dies instead)."""

    def __init__(self, bad: int, exit: bool = False) -> None:
        self.bad, self.exit = bad, exit

    def __len__(self) -> int:
        return 60

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index == self.bad:
            if self.exit:
                os._exit(3)
            raise KeyError(f"record {index} is corrupt")
        return np.full(3, index, dtype=np.int16), index % 10


def test_an_error_in_a_worker_names_the_example_and_leaves_out_whole(npz: Path, serial: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(open_source(str(npz)), out, shard_size=25, progress=False)
    before = _files(out)
    with pytest.raises(
        ConversionError, match=r"flaky: example 37 \(shard 3\) failed: KeyError: .*record 37 is corrupt"
    ):
        write_shards(Source("flaky", FailsAt(37)), out, shard_size=10, progress=False, overwrite=True, workers=2)
    assert _files(out) == before
    assert [path.name for path in tmp_path.iterdir()] == ["shards"]  # the staging folder is gone


def test_a_worker_that_dies_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="dying: a worker process died"):
        write_shards(
            Source("dying", FailsAt(12, exit=True)), tmp_path / "shards", shard_size=10, progress=False, workers=2
        )
    assert not (tmp_path / "shards").exists()


def test_an_unpicklable_source_is_refused_for_spawn(tmp_path: Path) -> None:
    from sadp_data.shards.parallel_convert import write_shards_parallel

    source = Source("local", [(np.zeros(2), 0)] * 4)
    source.data.append(lambda: None)  # a lambda does not pickle; fork would not need to
    with pytest.raises(ConversionError, match=r"local: could not start 'spawn' worker processes"):
        write_shards_parallel(source, _empty(tmp_path / "out"), 2, "train", False, 2, start_method="spawn")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_worker_counts_are_refused(npz: Path, tmp_path: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["convert", str(npz), str(tmp_path / "out"), "--workers", value, "--no-progress"])
    assert exit.value.code == 2
    assert f"--workers must be a positive integer (1 = serial), got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "2"])
def test_check_workers_refuses_what_is_not_a_positive_int(value) -> None:
    with pytest.raises(ValueError, match="--workers"):
        check_workers(value)
    with pytest.raises(ValueError, match="--workers"):
        write_shards(Source("s", [(np.zeros(1), 0)]), "unused", workers=value)


def test_workers_do_not_apply_to_ffcv_output(npz: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["convert", str(npz), "unused.beton", "--workers", "2", "--format", "ffcv"])
    assert "--workers 2: parallel conversion writes WebDataset shards, not --format ffcv" in capsys.readouterr().err


def test_the_default_start_method_is_fork_on_linux() -> None:
    import sys

    assert default_start_method() == ("fork" if sys.platform == "linux" else "spawn")
