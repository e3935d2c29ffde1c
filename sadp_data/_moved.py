"""Old import paths of modules that moved into concept folders: they keep working, with a warning, for one release.

``install()`` (called by ``sadp_data/__init__.py``) puts a finder on ``sys.meta_path`` that answers only
the dotted paths in ``MOVED``: it imports the new module, warns with a ``DeprecationWarning`` naming
both paths, and hands back the *same* module object, so ``import sadp_data.store_format`` and
``from sadp_data.sharded_store import ShardedScoreStore`` keep working, and ``isinstance`` and module
state are shared with the new path. No file sits at an old path. ``renamed`` does the same for names
renamed inside a module (a module-level ``__getattr__``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

#: Old dotted path → the module's new dotted path.
MOVED: dict[str, str] = {
    "sadp_data._score_cuda": "sadp_data.scoring._closed_form_cuda",
    "sadp_data.arguments": "sadp_data._arguments",
    "sadp_data.compat": "sadp_data.adapters.infobatch",
    "sadp_data.datasets": "sadp_data.sources.datasets",
    "sadp_data.events": "sadp_data.sources.events",
    "sadp_data.events.dtype": "sadp_data.sources.events.dtype",
    "sadp_data.events.frames": "sadp_data.sources.events.frames",
    "sadp_data.events.nmnist": "sadp_data.sources.events.nmnist",
    "sadp_data.events.tonic_layout": "sadp_data.sources.events.tonic_layout",
    "sadp_data.fetch": "sadp_data.remote.fetch",
    "sadp_data.fetch_requests": "sadp_data.remote.fetch_requests",
    "sadp_data.folder_lock": "sadp_data._folder_lock",
    "sadp_data.indexing": "sadp_data.shards.indexing",
    "sadp_data.jit": "sadp_data.kernels.numba_cache",
    "sadp_data.parallel_convert": "sadp_data.shards.parallel_convert",
    "sadp_data.publish": "sadp_data.shards.publish",
    "sadp_data.readout": "sadp_data.scoring.readout",
    "sadp_data.remote_obstore": "sadp_data.remote.obstore_reads",
    "sadp_data.request_costs": "sadp_data.remote.request_costs",
    "sadp_data.score_kernels": "sadp_data.scoring._closed_form",
    "sadp_data.scorer": "sadp_data.scoring.scorer",
    "sadp_data.shard_error": "sadp_data.shards.errors",
    "sadp_data.shard_tar": "sadp_data.shards._tar",
    "sadp_data.shard_writer": "sadp_data.shards.writer",
    "sadp_data.sharded_plan": "sadp_data.distributed.partitioned_plan",
    "sadp_data.sharded_shuffle": "sadp_data.distributed._partition_shuffle",
    "sadp_data.sharded_store": "sadp_data.distributed.partitioned_store",
    "sadp_data.sharded_walk": "sadp_data.distributed._partition_walk",
    "sadp_data.staging": "sadp_data._staging",
    "sadp_data.store_format": "sadp_data.store._format",
    "sadp_data.store_snapshot": "sadp_data.store._snapshot",
    "sadp_data.store_update": "sadp_data.store._update",
    "sadp_data.store_writer": "sadp_data.store._writer",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old name works until the next release: use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module already imported under its new path."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the new module ran when it was imported); the import machinery set the module's
        ``__spec__`` to the old path's, so the new path's is put back (pickling, ``reload`` and spawned
        workers keep seeing the new path)."""
        module.__spec__ = self.spec


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old dotted paths of ``MOVED`` (and only those)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: an old path is answered before a stray folder there
    (say ``sadp_data/events/__pycache__`` left by an old install) could be taken for a namespace package."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())


def renamed(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that answers each old name of ``names`` with the new one, warning."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{module}.{names[name]}")
        return getattr(sys.modules[module], names[name])

    return __getattr__
