"""The README's front matter as a new user meets it: the quick start runs as written, and the two set-up
commands are what CI runs and install no heavy dependency the main job does not need."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _docs import README, doc_block, run_doc_block

ROOT = README.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pytest.importorskip("spikingjelly")
    monkeypatch.chdir(tmp_path)  # it writes scores.zarr into the working folder
    run_doc_block("README.md", "## Quick start")
    printed = capsys.readouterr().out.splitlines()
    shown = doc_block("README.md", "## Quick start", "text").splitlines()
    summary = [line for line in shown if not line.startswith("epoch ") or line.startswith("epoch  phase")]
    assert printed[: len(summary)] == summary, "the plan summary is printed as the README shows it"
    lines = [line for line in printed if re.match(r"epoch \d:", line)]
    expected = re.findall(r"^(epoch \d: keep [\d.]+, \d+ examples), test", "\n".join(shown), re.M)
    assert [line.rsplit(", test", 1)[0] for line in lines] == expected and len(expected) == 5
    final = float(lines[-1].rsplit(" ", 1)[1].rstrip("%"))
    assert final > 75.0, lines  # the README shows 82.7 %; a broken loop would be near 10 %
    assert (tmp_path / "scores.zarr").is_dir()


def _commands() -> tuple[str, str]:
    section = README.read_text().split("## Set up\n", 1)[1].split("\n## ", 1)[0]
    demo, tests = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    return demo, tests


def _normalise(step: str) -> str:
    """A set-up step without the quiet flags CI adds (``-q``, ``-qq``) and the output redirection."""
    step = re.sub(r"\s+-q+\b", "", step.split(">", 1)[0]).replace("DEBIAN_FRONTEND=noninteractive ", "")
    return " ".join(step.split())


def test_ci_installs_what_the_readme_test_command_installs() -> None:
    _, tests = _commands()
    steps = [_normalise(step) for step in tests.split(" && ")]
    assert steps[-1] == "python -m pytest", "the README's test command ends by running the tests"
    ci = [_normalise(line) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    installs = [step for step in steps if step.startswith(("apt-get", "pip install"))]
    for step in installs:
        assert step in ci, f".ci/run does not run the README's set-up step {step!r}"


def _extras() -> dict[str, set[str]]:
    """Every extra's requirement names, with ``sadp-data[...]`` references expanded."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        found: set[str] = set()
        for requirement in optional[extra]:
            name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
            if name == "sadp-data":
                for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                    found |= names(inner.strip())
            else:
                found.add(name)
        return found

    return {extra: names(extra) for extra in optional}


def test_the_demo_set_up_is_light_and_no_extra_pulls_a_second_torch() -> None:
    demo, _ = _commands()
    assert "apt-get" not in demo and "sudo" not in demo, "the demo's set-up needs no root"
    extras = re.search(r'pip install -e "\.\[([^\]]*)\]"', demo).group(1).split(",")
    needed = set().union(*(_extras()[extra] for extra in extras))
    assert not needed & {"ffcv", "ray", "lightning", "accelerate", "webdataset", "moto"}, needed
    for extra, names in _extras().items():
        assert not names & {"torch", "torchvision", "torchaudio", "spikingjelly"}, f"extra {extra!r} pulls {names}"
    assert demo.index("pip install torch==") < demo.index("pip install -e") < demo.index("--no-deps spikingjelly")
