"""docs/api.md is checked against the code: every public name is on the page, and every call the page writes
out, ``name(parameters)``, lists the parameters the code has, in its order, with its literal defaults."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest
from _docs import ROOT

import sadp_data

API = ROOT / "docs" / "api.md"
# the modules a user imports from besides sadp_data itself; every adapter is added below
MODULES = (
    "sadp_data.methods",
    "sadp_data.distributed",
    "sadp_data.diagnostics",
    "sadp_data.sources.datasets",
)
_CALL = re.compile(r"(?P<name>\.?[A-Za-z_][\w.]*)\((?P<args>.*)\)")


def _adapters() -> list[str]:
    import sadp_data.adapters

    return [
        f"sadp_data.adapters.{m.name}"
        for m in pkgutil.iter_modules(sadp_data.adapters.__path__)
        if not m.name.startswith("_")
    ]


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or else the classes and functions the module (or, for a package, its submodules) defines
    whose names do not start with ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and (obj.__module__ == module.__name__ or obj.__module__.startswith(module.__name__ + "."))
    ]


def _rows() -> list[list[str]]:
    """Each table row's and paragraph's code spans, in order (pipes escaped in cells unescaped)."""
    rows = []
    for line in API.read_text().splitlines():
        spans = [span.replace("\\|", "|") for span in re.findall(r"`((?:[^`\\]|\\.)+)`", line)]
        if spans:
            rows.append(spans)
    return rows


def _split(args: str) -> list[str]:
    """Top-level comma-separated items of a parameter list."""
    items, depth, quote, current = [], 0, "", ""
    for char in args:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += char
    return [item for item in [*items, current.strip()] if item]


def _resolve(name: str, context: list[object]) -> object | None:
    """``name`` (dotted) looked up in the row's objects, then in sadp_data, then as a module path."""
    head, *rest = name.split(".")
    candidates = [getattr(obj, head) for obj in context if hasattr(obj, head)]
    if hasattr(sadp_data, head):
        candidates.append(getattr(sadp_data, head))
    if not candidates and head == "sadp_data":
        for cut in range(len(rest), 0, -1):
            try:
                candidates, rest = [importlib.import_module(".".join(["sadp_data", *rest[:cut]]))], rest[cut:]
                break
            except ImportError:
                continue
    for obj in candidates:
        for part in rest:
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    return None


def _calls() -> list[tuple[str, object, list[str]]]:
    """Every written-out call on the page: (as written, the object it names, its parameter items). A call
    is looked up in the classes its row named last (``.open(...)`` after ``ScoreStore.create(...)``, ``weights_of(...)``
    after ``EpochPlan``), then in the row's module and in sadp_data. Not calls: ``name()`` (a reference to a method
    by name) and expressions on an instance such as ``sampler.schedule.budget(N)``."""
    found = []
    for spans in _rows():
        context: list[object] = []
        for span in spans:
            if re.fullmatch(r"sadp_data(\.\w+)+", span):
                try:
                    context.insert(0, importlib.import_module(span))
                except ImportError:
                    pass  # a name in a module, such as sadp_data.methods.METHODS
                continue
            call = _CALL.fullmatch(span)
            if call is None:
                named = _resolve(span, context) if re.fullmatch(r"[A-Z]\w*", span) else None
                if inspect.isclass(named):
                    context.insert(0, named)
                continue
            name, items = call["name"], _split(call["args"])
            head = name.lstrip(".").split(".")[0]
            if not items or (name[0] != "." and head[0].islower() and "." in name and head != "sadp_data"):
                continue
            if name.startswith("."):
                owners = [c for c in context if inspect.isclass(c) and hasattr(c, name[1:])]
                obj = getattr(owners[0], name[1:]) if owners else None
            else:
                obj = _resolve(name, context)
            found.append((span, obj, items))
            if inspect.isclass(obj) and obj not in context:
                context.insert(0, obj)
            elif obj is not None and "." in name and not name.startswith("."):
                owner = _resolve(name.rsplit(".", 1)[0], context)
                if inspect.isclass(owner):
                    context.insert(0, owner)
    return found


def test_every_public_name_is_on_the_page() -> None:
    text = API.read_text()
    missing = []
    for module in [sadp_data, *(importlib.import_module(name) for name in (*MODULES, *_adapters()))]:
        names = public_names(module)
        assert names, f"{module.__name__}: no public names found"
        missing += [f"{module.__name__}.{name}" for name in names if not re.search(rf"`[^`]*\b{name}\b", text)]
        if module is not sadp_data and f"`{module.__name__}`" not in text:
            missing.append(f"a row for {module.__name__}")
    assert not missing, "docs/api.md does not mention: " + ", ".join(missing)


def test_every_written_out_call_matches_the_code() -> None:
    calls = _calls()
    assert len(calls) > 20, calls
    wrong = []
    for span, obj, items in calls:
        if obj is None:
            wrong.append(f"{span}: names nothing in sadp_data")
            continue
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        actual = [p for p in signature.parameters.values() if p.name not in {"self", "cls"}]
        partial = items[-1:] in (["..."], ["…"])
        written = [item.split("=", 1)[0].strip().lstrip("*") for item in items if item not in {"...", "…"}]
        names = [p.name for p in actual]
        if (names[: len(written)] if partial else names) != written:
            wrong.append(f"{span}: the code has ({', '.join(names)})")
            continue
        for item, parameter in zip(items, actual, strict=False):  # a partial list is shorter
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            if "=" not in item and not (variadic or partial) and parameter.default is not parameter.empty:
                wrong.append(f"{span}: {parameter.name} has a default, {parameter.default!r}")
            if "=" not in item or not item.split("=", 1)[1].strip():
                continue
            try:
                default = ast.literal_eval(item.split("=", 1)[1].strip())
            except (ValueError, SyntaxError):
                continue
            if parameter.default != default:
                wrong.append(f"{span}: {parameter.name} defaults to {parameter.default!r}")
    assert not wrong, "docs/api.md drifted from the code:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", [sadp_data.__name__, *MODULES])
def test_the_module_list_holds_importable_modules(module: str) -> None:
    assert importlib.import_module(module)


def test_the_command_line_section_names_every_subcommand_and_flag() -> None:
    import argparse

    from sadp_data.cli import build_parser

    section = API.read_text().split("## Command line\n", 1)[1]
    bullets = {line.split("`")[1].split()[1]: line for line in section.splitlines() if line.startswith("* `sadp-data ")}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in commands.choices.items():
        if name not in bullets:
            missing.append(f"sadp-data {name}")
            continue
        flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
        missing += [f"sadp-data {name} {flag}" for flag in flags if flag != "--help" and flag not in bullets[name]]
    assert not missing, "docs/api.md's command line lacks: " + ", ".join(missing)
