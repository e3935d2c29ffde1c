"""The `sadp-data` command line itself: version, help texts, the bare `bench` listing (no training here)."""

from __future__ import annotations

import argparse
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import sadp_data
from sadp_data.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if not isinstance(action, argparse._HelpAction)}


def test_version_flag_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sadp-data {sadp_data.__version__}"


def test_every_subcommand_has_a_description_and_every_option_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"demo", "convert", "index", "info", "bench"} <= set(commands)
    for name, command in commands.items():
        assert command.description and len(command.description) > 20, f"`sadp-data {name} --help` has no description"
        for action in _options(command).values():
            assert action.help and action.help.strip(), f"sadp-data {name} {action.option_strings or action.dest}"
        command.format_help()  # every %-placeholder in the help texts expands


def test_help_texts_state_the_defaults_the_options_really_have() -> None:
    """Where a help text says "default X" and the option has a default of its own, X is that default."""
    checked = 0
    for name, command in _subparsers(build_parser()).items():
        for action in _options(command).values():
            if action.default in (None, False, argparse.SUPPRESS):
                continue
            text = action.help % {"default": action.default, "prog": command.prog}
            stated = re.search(r"\bdefault:? ([^\s;)]+)", text)
            assert stated, f"sadp-data {name} {action.option_strings}: the help does not state its default"
            assert stated.group(1).rstrip(":,.") == str(action.default), f"sadp-data {name} {action.option_strings}"
            checked += 1
    assert checked >= 6


def test_demo_option_help_matches_the_demo_defaults() -> None:
    from sadp_data.bench.training_data import DemoConfig
    from sadp_data.schedule import KeepRatioSchedule

    demo = _options(_subparsers(build_parser())["demo"])
    full, quick = DemoConfig(), DemoConfig.quick()
    schedule = KeepRatioSchedule(full.keep_ratio, full.epochs, full.warmup_epochs, full.anneal_fraction, "decreasing")
    pruned = [schedule(epoch) for epoch in range(full.epochs) if schedule.phase(epoch) == "prune"]
    keep = demo["keep_ratio"].help
    assert "mean" in keep and f"default {full.keep_ratio}" in keep
    assert f"{max(pruned):.1f}" in keep and f"{min(pruned):.1f}" in keep  # SADP's decreasing schedule, 1.0 to 0.4
    assert f"default {full.epochs}" in demo["epochs"].help and f"--quick {quick.epochs}" in demo["epochs"].help
    assert f"default {full.train_size:,}" in demo["train_size"].help
    assert f"--quick {quick.train_size:,}" in demo["train_size"].help
    assert f"default {full.batch_size}" in demo["batch_size"].help and f"default {full.seed}" in demo["seed"].help


def test_backend_and_backends_say_what_they_select_and_name_each_other() -> None:
    bench = _options(_subparsers(build_parser())["bench"])
    backend, backends = bench["backend"].help, bench["backends"].help
    assert backend.startswith("loader suite") and "--backends" in backend and "webdataset" in backend
    assert backends.startswith("kernels suite") and re.search(r"--backend\b(?!s)", backends) and "numba" in backends
    args = build_parser().parse_args(["bench", "kernels", "--backends", "numpy", "--backend", "torch"])
    assert (args.backends, args.backend) == ("numpy", "torch")


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["bench", "loader", "--backend", "numba"], "--backends"),
        (["bench", "kernels", "--backends", "webdataset"], "--backend"),
    ],
)
def test_a_backend_given_to_the_other_flag_points_to_it(argv, hint, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--quick", "--no-progress"])
    assert exit_info.value.code == 2
    assert re.search(re.escape(hint) + r"\b(?!s)", capsys.readouterr().err)


def test_bare_bench_lists_the_suites_and_runs_nothing(capsys, monkeypatch) -> None:
    from sadp_data.bench import suite

    def refuse(*args, **kwargs):
        raise AssertionError("a bare `sadp-data bench` must not run a suite")

    monkeypatch.setattr(suite, "run_suites", refuse)
    assert main(["bench"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in (*suite.SUITES, *suite.OWN_SUITES, "all", "report"):
        line = next((line for line in lines if line.split()[:1] == [name]), None)
        assert line is not None, f"{name} is not listed"
        assert re.search(r"\d+ (s|min|h)\b|seconds", line), f"{name}: no duration in {line!r}"
    assert any("sadp-data bench all" in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "suites"),
    [
        (["bench", "all"], ["loader", "kernels", "store", "score", "train"]),
        (["bench", "--quick", "--json", "out"], ["loader", "kernels", "store", "score", "train"]),
        (["bench", "--json", "out"], ["loader", "kernels", "store", "score", "train"]),
        (["bench", "store", "kernels"], ["store", "kernels"]),
    ],
)
def test_bench_all_and_the_documented_forms_still_run_their_suites(argv, suites, monkeypatch) -> None:
    from sadp_data.bench import suite

    ran = []
    monkeypatch.setattr(suite, "run_suites", lambda names, options, target=None: ran.append(names) or {})
    assert main(argv) == 0
    assert ran == [suites]


def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A tiny MNIST-style IDX folder (uncompressed train files)."""
    folder.mkdir(parents=True)
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape)
    (folder / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.tobytes())


@pytest.mark.parametrize("kind", ["npz", "idx"])
def test_the_same_data_converted_from_two_folders_gives_identical_index_files(kind: str, tmp_path: Path) -> None:
    """index.json names the source without a local absolute path, so where the data lay does not show."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30, dtype=np.uint8)
    written = {}
    for folder in ("alice/work", "bob/elsewhere/deeper"):
        root = tmp_path / folder / "data"
        if kind == "npz":
            root.mkdir(parents=True)
            np.savez(root / "digits.npz", x=images, y=labels.astype(np.int64))
            spec = root / "digits.npz"
        else:
            _write_idx(root, images, labels)
            spec = root
        out = tmp_path / folder / "shards"
        assert main(["convert", str(spec), str(out), "--shard-size", "8", "--no-progress"]) == 0
        written[folder] = (out / "index.json").read_bytes()
    first, second = written.values()
    assert first == second
    assert str(tmp_path).encode() not in first and b"alice" not in first
    source = json.loads(first)["source"]
    assert source == ("npz:digits.npz" if kind == "npz" else "idx:data:train")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_convert_shows_progress_in_every_phase_unless_told_not_to(workers: str, tmp_path: Path, capsys) -> None:
    """Reading the source, writing, checking the shards back, and the index and sidecar each show a bar."""
    np.savez(tmp_path / "digits.npz", x=np.zeros((40, 4, 4), np.uint8), y=np.arange(40) % 10)
    argv = ["convert", str(tmp_path / "digits.npz"), "--shard-size", "8", "--workers", workers]
    assert main([argv[0], argv[1], str(tmp_path / "shown"), *argv[2:]]) == 0
    shown = capsys.readouterr().err
    phases = ["read source", "convert train", "index train"] + (["check train shards"] if workers == "1" else [])
    for phase in phases:
        assert re.search(re.escape(phase) + r".*100%", shown), f"no finished progress bar for {phase!r} in {shown!r}"
    assert main([argv[0], argv[1], str(tmp_path / "quiet"), *argv[2:], "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_the_quick_demo_states_one_duration_in_help_code_and_docs() -> None:
    from _docs import ROOT

    from sadp_data.bench.training_data import QUICK_DURATION, DemoConfig

    figure = QUICK_DURATION.split(";")[0]  # e.g. "about 70 s on an idle 2-core CPU"
    assert figure in _options(_subparsers(build_parser())["demo"])["quick"].help
    demo = " ".join((ROOT / "docs" / "demo.md").read_text().split())
    assert figure in demo and "about a minute" not in demo and "≤ 2 min" not in demo
    assert "≤" not in (DemoConfig.quick.__doc__ or "")
