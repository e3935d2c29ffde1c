"""README.md and docs/*.md as a reader meets them: every python block runs (here or in the test of what it
shows), every ``sadp-data`` command in a shell block parses, and every relative link resolves."""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from _docs import NOT_RUN, PAGES, README, ROOT, Block, blocks, run_doc_block

from sadp_data.cli import build_parser

TESTS = Path(__file__).resolve().parent
ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
OPTIONAL = {"ffcv", "ray", "lightning", "accelerate", "webdataset", "spikingjelly", "obstore", "s3fs"}


def _run_by_a_test(block: Block) -> str | None:
    """The test file that runs ``block`` through ``doc_block``/``run_doc_block`` with its page and heading
    written out, or None."""
    if block.ordinal != 0:
        return None
    for path in sorted(TESTS.rglob("test_*.py")):
        source = path.read_text()
        if "doc_block(" in source and f'"{block.page}"' in source and json.dumps(block.heading) in source:
            return str(path.relative_to(TESTS))
    return None


def _generic(block: Block) -> bool:
    return block.language == "python" and block.not_run is None and _run_by_a_test(block) is None


def _id(block: Block) -> str:
    return f"{block.page}:{block.line}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if _generic(b)], ids=_id)
def test_every_other_python_block_runs_as_written(block: Block, tmp_path: Path, monkeypatch) -> None:
    """The python blocks no dedicated test runs and none marks ``<!-- not-run: reason -->`` are self-contained:
    each runs as written in an empty folder."""
    monkeypatch.chdir(tmp_path)
    code = compile(block.text, _id(block), "exec")
    try:
        exec(code, {"__name__": "docs_block"})
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{_id(block)} needs {error.name}, an optional extra that is not installed")
        raise


def test_every_python_block_is_run_or_says_why_not() -> None:
    python = [block for block in ALL_BLOCKS if block.language == "python"]
    assert len(python) >= 10, "the pages' python blocks were not found"
    dedicated = {_id(block): _run_by_a_test(block) for block in python if _run_by_a_test(block)}
    quick_start = next(_id(b) for b in python if b.page.startswith("README"))  # the front page's first block
    assert dedicated.get(quick_start) == "test_readme_setup.py", "the quick start is run by its own test"
    for block in python:
        assert block.not_run is None or len(block.not_run) > 10, f"{_id(block)}: say why it is not run"
        assert not (block.not_run and _id(block) in dedicated), f"{_id(block)} is run by a test; drop its marker"


def test_not_run_markers_are_well_formed_and_sit_on_a_python_block() -> None:
    marked = {(block.page, block.line) for block in ALL_BLOCKS if block.not_run}
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "not-run" not in line:
                continue
            name = page.relative_to(ROOT).as_posix()
            assert NOT_RUN.fullmatch(line.strip()), f"{name}:{number}: write it as <!-- not-run: the reason -->"
            following = next(n for n in range(number, len(lines)) if lines[n].strip()) + 1
            assert (name, following) in marked and lines[following - 1].strip() == "```python", (
                f"{name}:{number}: a not-run marker must come right before a ```python fence"
            )


@pytest.mark.slow  # trains the conv SNN for two epochs through two DataLoader workers
def test_the_scored_shards_example_runs(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("webdataset")
    pytest.importorskip("spikingjelly")
    from sadp_data.cli import main

    monkeypatch.chdir(tmp_path)
    data = ROOT / "data" / "fashion-mnist"
    assert main(["convert", str(data), "shards", "--shard-size", "100", "--limit", "300", "--no-progress"]) == 0
    namespace = run_doc_block("docs/shards.md", "## Scored shards (WebDataset)")
    sampler = namespace["sampler"]
    assert sampler.epoch == 1 and len(sampler.plan) == 210  # the warm-up on all 300, then keep 0.7
    assert (sampler.store.seen() > 0).all(), "the warm-up epoch scored every example"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "json"], ids=_id)
def test_json_blocks_parse(block: Block) -> None:
    json.loads(block.text)


def _commands() -> list[tuple[str, str]]:
    """Every ``sadp-data ...`` command of the shell blocks, with where it is."""
    found = []
    for block in ALL_BLOCKS:
        if block.language not in {"bash", "sh", "shell"}:
            continue
        for number, line in enumerate(block.text.splitlines()):
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["sadp-data"]:
                    found.append((f"{block.page}:{block.line + 1 + number}", part.strip()))
    return found


@pytest.mark.parametrize(("where", "command"), _commands(), ids=[where for where, _ in _commands()])
def test_every_documented_command_parses(where: str, command: str, capsys) -> None:
    """Each shown ``sadp-data`` command names a subcommand and flags the command line has, with valid values."""
    try:
        build_parser().parse_args(shlex.split(command, comments=True)[1:])
    except SystemExit as exit:
        pytest.fail(f"{where}: {command!r} does not parse ({exit}): {capsys.readouterr().err.strip()}")


def test_the_pages_show_commands_of_every_subcommand() -> None:
    shown = {shlex.split(command)[1] for _, command in _commands()}
    assert {"demo", "convert", "info", "bench"} <= shown, shown


_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)\)")


def _prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside code fences, with inline code removed."""
    out, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append((number, re.sub(r"`[^`]*`", "", line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation and symbols dropped (letters,
    digits, ``-`` and ``_`` kept), spaces turned into ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.lstrip("#").strip()).lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, repeated headings numbered ``-1``, ``-2``, … as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(page):
        if re.match(r"#{1,6} \S", line):
            base = slug(line)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def _links() -> list[tuple[Path, int, str]]:
    return [
        (page, number, m["target"]) for page in PAGES for number, line in _prose(page) for m in _LINK.finditer(line)
    ]


def test_the_slug_rules() -> None:
    assert (
        slug("## Does it beat the alternatives? (the frontier study)")
        == "does-it-beat-the-alternatives-the-frontier-study"
    )
    assert slug("### Event datasets in tonic's layout") == "event-datasets-in-tonics-layout"
    assert slug("## `random_static`") == "random_static"
    assert slug("## 5. The levers and the evidence") == "5-the-levers-and-the-evidence"
    assert slug("## Trust — and ≤ limits") == "trust--and--limits"


def test_every_relative_link_resolves_to_a_file_and_heading() -> None:
    links = _links()
    assert len(links) > 30, "the pages' links were not found"
    broken, external = [], []
    for page, number, target in links:
        where = f"{page.relative_to(ROOT).as_posix()}:{number}"
        if re.match(r"[a-z]+:", target):
            assert target.startswith(("https://", "http://")), f"{where}: {target}"
            external.append(target)
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{where}: {target} (no such file)")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{where}: {target} (no heading #{anchor} in {resolved.name})")
        elif ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{where}: {target} (outside the repository)")
    assert not broken, "\n".join(broken)
    print("external links, not fetched:", *sorted(set(external)), sep="\n  ")


def test_no_page_refers_to_issue_numbers() -> None:
    """A page says what a thing is, not which tracker entry asked for it."""
    found = [
        f"{page.relative_to(ROOT).as_posix()}:{number}: {line.strip()[:80]}"
        for page in PAGES
        for number, line in _prose(page)
        if re.search(r"\bissues? \d+|(?<![\w/&])#\d+\b|\bthe issue\b", line, re.I)
    ]
    assert not found, "\n".join(found)


def _demo_rows(page: Path) -> list[list[str]]:
    text = page.read_text()
    table = text[text.index("| method | test acc |") :].split("\n\n", 1)[0]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table.splitlines()[2:]]


def test_the_front_page_result_is_the_demo_json_and_the_demo_page() -> None:
    """The README's one result table shows docs/demo.json's figures, rounded, as docs/demo.md does."""
    record = json.loads((ROOT / "docs" / "demo.json").read_text())
    rows = _demo_rows(README)
    assert rows == _demo_rows(ROOT / "docs" / "demo.md")
    for method, accuracy, seconds, speedup, theoretical, ratio in rows:
        figures = record["methods"][method]
        assert accuracy == f"{figures['test_accuracy']:.2%}".replace("%", " %"), method
        assert seconds == f"{figures['train_time_s']:.1f}", method
        shown = [speedup, theoretical, ratio]
        assert shown == [f"{figures[key]:.3f}" for key in ("speedup", "theoretical_speedup", "speedup_ratio")]
    command = record["run"]["command"].replace(" --no-progress", "")
    assert f"`{command}` on {record['run']['started'][:10]}" in README.read_text()
