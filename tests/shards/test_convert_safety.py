"""``convert`` and ``index`` keep to OUT and to one writer: names that climb out are refused, a second
conversion into the same OUT fails at once naming the first, ``--overwrite`` never swaps a folder whose
sidecar a trainer holds open for writing, and a failing source is named with its example."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from sadp_data.cli import main
from sadp_data.shards import ShardIndex
from sadp_data.shards.indexing import index_shards
from sadp_data.shards.parallel_convert import ConversionError
from sadp_data.shards.writer import write_shards
from sadp_data.sources import Source, open_source

N = 40


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, x=rng.integers(0, 255, (N, 3, 3), dtype=np.uint8), y=rng.integers(0, 10, N))
    return path


def _convert(npz: Path, out: Path, *flags: str) -> int:
    return main(["convert", str(npz), str(out), "--shard-size", "10", "--no-progress", *flags])


@pytest.mark.parametrize("name", ["../../other/train", "a/b", "..", "", "sub\\x"])
def test_a_shard_name_that_leaves_out_is_refused(npz: Path, tmp_path: Path, capsys, name: str) -> None:
    other = tmp_path / "other"
    assert _convert(npz, other) == 0
    before = {path.name: path.read_bytes() for path in other.glob("*.tar")}
    with pytest.raises(SystemExit) as exit:
        _convert(npz, tmp_path / "out", "--name", name, "--limit", "7")  # built in .out.partial-PID/out
    assert exit.value.code == 2 and "--name" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in other.glob("*.tar")} == before
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--name"):
        write_shards(open_source(str(npz)), tmp_path / "api", name=name, progress=False)


class Gated:
    """A map-style dataset whose first item waits for ``release`` (after setting ``started``)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index == 0:
            self.started.set()
            self.release.wait(20)
        return np.full(3, index, dtype=np.int16), index % 10


def _hold_out_with_a_conversion(out: Path) -> tuple[Gated, threading.Thread, list]:
    """A conversion into ``out`` in a thread, stopped at its first example (it holds OUT until released)."""
    gated, outcome = Gated(), []

    def run() -> None:
        try:
            outcome.append(write_shards(Source("first", gated), out, shard_size=10, progress=False))
        except BaseException as error:  # reported by the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert gated.started.wait(20), "the first conversion did not start"
    return gated, thread, outcome


def test_a_second_conversion_into_the_same_out_fails_at_once_naming_the_first(
    npz: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "new"
    gated, thread, outcome = _hold_out_with_a_conversion(out)
    try:
        with pytest.raises(SystemExit) as exit:
            _convert(npz, out)
        with pytest.raises(SystemExit):
            _convert(npz, out, "--overwrite")
    finally:
        gated.release.set()
        thread.join(20)
    error = capsys.readouterr().err
    assert exit.value.code == 2 and str(out) in error
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in error
    assert len(outcome) == 1 and isinstance(outcome[0], ShardIndex), outcome
    assert ShardIndex.load(out).meta["source"] == "first"  # the first conversion's folder, whole
    assert _convert(npz, out, "--overwrite") == 0  # released: the next run goes ahead


def test_index_into_an_out_being_converted_is_refused(npz: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    assert _convert(npz, shards) == 0
    out = tmp_path / "busy"
    gated, thread, _ = _hold_out_with_a_conversion(out)
    try:
        with pytest.raises(RuntimeError, match=rf"{out}.*pid {os.getpid()}"):
            index_shards(sorted(shards.glob("*.tar")), out, progress=False)
    finally:
        gated.release.set()
        thread.join(20)


def test_overwrite_refuses_while_a_trainer_holds_the_sidecar(npz: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shards"
    assert _convert(npz, out) == 0
    fingerprint = ShardIndex.load(out).fingerprint
    store = ShardIndex.load(out).open_store("r+")  # a trainer's open sidecar (it holds the writer lock)
    try:
        with pytest.raises(SystemExit) as exit:
            _convert(npz, out, "--overwrite", "--limit", "25")
        error = capsys.readouterr().err
        assert exit.value.code == 2 and "scores.zarr" in error and f"pid {os.getpid()}" in error
        store.update(np.arange(5), np.ones(5))  # the trainer's writes still land in its own sidecar
    finally:
        store.close()
    index = ShardIndex.load(out)
    assert index.fingerprint == fingerprint and index.num_examples == N
    reopened = index.open_store("r")  # the dataset still opens: sidecar and index agree
    assert reopened.seen()[:5].tolist() == [1] * 5
    reopened.close()
    assert _convert(npz, out, "--overwrite", "--limit", "25") == 0  # the trainer has closed it
    assert ShardIndex.load(out).num_examples == 25


class FailsAt:
    def __len__(self) -> int:
        return 30

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index == 17:
            raise KeyError(f"record {index} is corrupt")
        return np.full(3, index, dtype=np.int16), index % 10


def test_a_failing_example_is_named_in_a_serial_conversion(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"flaky: example 17 \(shard 1\) failed: KeyError: .*record 17"):
        write_shards(Source("flaky", FailsAt()), tmp_path / "out", shard_size=10, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_callable_source_that_returns_no_dataset_is_refused_by_spec(tmp_path: Path, monkeypatch, capsys) -> None:
    module = tmp_path / "sadp_probe_sources.py"
    module.write_text(
        "def number():\n    return 5\n\n"
        "def broken():\n    raise OSError('no such mount')\n\n"
        "def pairs():\n    return [((1, 2), 0), ((3, 4), 1)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, problem in [("number", "returned a int"), ("broken", "raised OSError: no such mount")]:
        with pytest.raises(SystemExit) as exit:
            main(["convert", f"sadp_probe_sources:{spec}", str(tmp_path / spec), "--no-progress"])
        error = capsys.readouterr().err
        assert exit.value.code == 2 and f"sadp_probe_sources:{spec}" in error and problem in error
    assert main(["convert", "sadp_probe_sources:pairs", str(tmp_path / "pairs"), "--no-progress"]) == 0


@pytest.mark.slow
def test_overwrite_names_a_trainer_in_another_process(npz: Path, tmp_path: Path, capsys) -> None:
    import subprocess
    import sys

    out = tmp_path / "shards"
    assert _convert(npz, out) == 0
    holder = (
        "import sys\nfrom sadp_data.store import ScoreStore\n"
        f"store = ScoreStore.open({str(out / 'scores.zarr')!r}, 'r+')\nprint('ready', flush=True)\n"
        "sys.stdin.read()\nstore.close()\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "ready"
        with pytest.raises(SystemExit):
            _convert(npz, out, "--overwrite")
        assert f"open for writing by pid {trainer.pid} on host" in capsys.readouterr().err
    finally:
        trainer.communicate("", timeout=30)
    assert trainer.returncode == 0 and _convert(npz, out, "--overwrite") == 0
