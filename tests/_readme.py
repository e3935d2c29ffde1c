"""The README's code blocks, for the tests that run them as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str, language: str = "python") -> str:
    """The first ```language block after the README line ``heading`` (e.g. ``"## Lightning"``)."""
    text = README.read_text()
    section = text[text.index(heading + "\n") :]
    fence = f"```{language}\n"
    start = section.index(fence) + len(fence)
    return section[start : section.index("```", start)]


def run_readme_block(heading: str, namespace: dict | None = None) -> dict:
    """Execute the README's python block under ``heading``; returns its namespace."""
    namespace = {} if namespace is None else namespace
    exec(compile(readme_block(heading), f"README.md ({heading.lstrip('# ')})", "exec"), namespace)
    return namespace
