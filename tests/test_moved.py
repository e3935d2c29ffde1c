"""Old import paths of moved modules keep working for one release: they warn and give the same module."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import sadp_data
from sadp_data._moved import MOVED

#: Names renamed inside a module: (module, old name, new name).
RENAMED = [
    ("sadp_data", "ShardedScoreStore", "PartitionedScoreStore"),
    ("sadp_data.distributed.partitioned_store", "ShardedScoreStore", "PartitionedScoreStore"),
    ("sadp_data.distributed.partitioned_plan", "shard_bounds", "partition_bounds"),
    ("sadp_data.distributed.partitioned_plan", "sharded_plan", "partitioned_plan"),
    ("sadp_data.distributed.partitioned_plan", "sharded_plan_epoch", "partitioned_plan_epoch"),
]


def _fresh_import(name: str) -> tuple[object, list[warnings.WarningMessage]]:
    """Import ``name`` as a first import would (its ``sys.modules`` entry dropped), recording warnings."""
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    sys.modules.pop(name, None)
    return module, caught


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_warns_naming_both_paths_and_gives_the_new_module(old: str) -> None:
    new = MOVED[old]
    module, caught = _fresh_import(old)
    assert module is importlib.import_module(new)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(old in message and new in message for message in messages), messages
    assert module.__spec__.name == new  # pickling and spawned workers see the new path


def test_from_an_old_path_import_a_name_works() -> None:
    sys.modules.pop("sadp_data.sharded_store", None)
    with pytest.warns(DeprecationWarning, match="sadp_data.sharded_store moved to sadp_data.distributed") as caught:
        from sadp_data.sharded_store import PartitionedScoreStore
    assert PartitionedScoreStore is sadp_data.PartitionedScoreStore
    assert caught[0].filename == __file__  # the warning points at the import statement, not at importlib


@pytest.mark.parametrize(("module", "old", "new"), RENAMED)
def test_an_old_name_warns_and_is_the_new_object(module: str, old: str, new: str) -> None:
    target = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} moved to {module}.{new}"):
        value = getattr(target, old)
    assert value is getattr(target, new)
    with pytest.raises(AttributeError, match="no_such_name"):
        target.no_such_name  # noqa: B018


@pytest.mark.slow
def test_the_new_paths_and_every_public_name_import_without_a_warning() -> None:
    """In a fresh interpreter (nothing imported yet), with deprecation warnings made errors."""
    code = (
        "import importlib, sadp_data\n"
        f"for name in {sorted(set(MOVED.values()))!r}:\n"
        "    importlib.import_module(name)\n"
        "for name in sadp_data.__all__:\n"
        "    getattr(sadp_data, name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:sadp_data", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
