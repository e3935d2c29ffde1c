"""The code blocks of README.md and docs/*.md, for the tests that run them as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
NOT_RUN = re.compile(r"<!-- not-run: (?P<reason>\S.*?) -->")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w-]*)\s*$")
_HEADING = re.compile(r"^#{1,6} \S")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, what it says, and the not-run reason marked before it (or None)."""

    page: str  # relative to the repository root, e.g. "docs/ffcv.md"
    heading: str  # the heading line of its section, e.g. "## Lightning"; "" before the first heading
    language: str
    ordinal: int  # its place among the section's blocks of its language, from 0
    line: int  # the line of its opening fence, from 1
    text: str
    not_run: str | None


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a markdown page, in order. A fence may be indented (in a list item): the block's
    lines lose that indentation. Lines starting with ``#`` inside a block are code, not headings."""
    name = page.relative_to(ROOT).as_posix()
    found: list[Block] = []
    heading, counts, previous = "", {}, ""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is None:
            if _HEADING.match(line):
                heading, counts = line.rstrip(), {}
            if line.strip():
                previous = line.strip()
            i += 1
            continue
        indent, language = fence["indent"], fence["language"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{name}:{i + 1}: a code fence is never closed")
        text = "".join(
            row[len(indent) :] + "\n" if row.startswith(indent) else row.lstrip() + "\n" for row in lines[i + 1 : end]
        )
        marker = NOT_RUN.fullmatch(previous)
        ordinal = counts.get(language, 0)
        counts[language] = ordinal + 1
        found.append(Block(name, heading, language, ordinal, i + 1, text, marker["reason"] if marker else None))
        previous, i = "```", end + 1
    return found


def doc_block(page: str, heading: str, language: str = "python") -> str:
    """The first ```language block in the section under the heading line ``heading`` of ``page`` (a path
    relative to the repository root, e.g. ``"docs/integrations.md"`` and ``"## Lightning"``)."""
    for block in blocks(ROOT / page):
        if block.heading == heading and block.language == language and block.ordinal == 0:
            return block.text
    raise LookupError(f"{page}: no ```{language} block under {heading!r}")


def run_doc_block(page: str, heading: str, namespace: dict | None = None) -> dict:
    """Execute the python block under ``heading`` of ``page``; returns its namespace."""
    namespace = {} if namespace is None else namespace
    exec(compile(doc_block(page, heading), f"{page} ({heading.lstrip('# ')})", "exec"), namespace)
    return namespace
