"""Targets: one PASS/MISS entry per figure a suite promises, and their Markdown table.

Every suite's JSON carries ``"targets"``: ``{name: {"description", "measured", "target",
"comparison", "pass"}}``; ``pass`` is derived, never typed in. The suites and the report import
this module and nothing else from each other for it.
"""

from __future__ import annotations

from typing import Any


def target(description: str, measured: float, required: float, comparison: str) -> dict[str, Any]:
    """One target entry of a suite's JSON; ``pass`` is derived from ``measured comparison required``."""
    if comparison not in ("<=", ">="):
        raise ValueError(f"comparison must be '<=' or '>=', got {comparison!r}")
    passed = measured <= required if comparison == "<=" else measured >= required
    return {
        "description": description,
        "measured": measured,
        "target": required,
        "comparison": comparison,
        "pass": bool(passed),
    }


def format_targets(targets: dict[str, dict[str, Any]]) -> str:
    """One Markdown row per target: description, measured, required (``<=``/``>=`` target), PASS/MISS."""
    lines = ["| target | measured | required | |", "|---|---|---|---|"]
    for entry in targets.values():
        relation = {"<=": "≤", ">=": "≥"}[entry["comparison"]]
        lines.append(
            f"| {entry['description']} | {entry['measured']:.4g} | {relation} {entry['target']:.4g} | "
            f"{'PASS' if entry['pass'] else 'MISS'} |"
        )
    return "\n".join(lines)
