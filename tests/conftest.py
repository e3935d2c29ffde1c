"""Shared test set-up: the numba CUDA simulator, and where the N-MNIST event data comes from.

Tests that exercise event-data code (readers, conversion, tonic's layout, the DVS and remote loader
benches, the N-MNIST demo) run on a small synthetic folder in the ``nmnist-small`` layout
(``synthetic_nmnist``), so a fresh clone tests them without any download. Tests that need the real
recordings (their contents, or agreement with tonic on real files) are marked ``needs_nmnist`` and
take the folder from the ``nmnist_subset`` fixture; they skip, saying how to provide it, when the
subset is absent. ``nmnist`` runs a test on both: the synthetic folder always, the subset when found.
"""

import os
from pathlib import Path

import pytest

# Run numba.cuda kernels on the CPU simulator unless the caller chose otherwise (set before numba loads).
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# The shared helpers (``_docs``, ``_ranks``, ...) live here, beside test folders that mirror the package: test
# files that run themselves in a subprocess (torchrun, rank workers) import them through PYTHONPATH.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join([_TESTS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

# Read once, then taken out of the environment: code under test (``sadp-data bench``'s default N-MNIST
# folder) must not pick up the developer's folder; tests name their folders explicitly.
_NAMED = os.environ.pop("SADP_NMNIST", None)
NMNIST_SUBSET = Path(_NAMED) if _NAMED else Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"
NMNIST_FILES = ("train1K.txt", "test100.txt", "samples")


def nmnist_subset_missing() -> str | None:
    """Why the real N-MNIST subset cannot be used (``None`` when it can): the skip reason of the
    ``needs_nmnist`` tests, naming the folder looked at and how to point the tests at a copy."""
    missing = [name for name in NMNIST_FILES if not (NMNIST_SUBSET / name).exists()]
    if not missing:
        return None
    return (
        f"N-MNIST subset not found at {NMNIST_SUBSET} (no {', '.join(missing)}): set "
        "SADP_NMNIST=/path/to/nmnist-small, a folder with samples/<id>.bs2 (or .bin) recordings in N-MNIST's "
        "binary format and the label lists train1K.txt and test100.txt ('#sample #class' header, then "
        "'<id>\\t<label>' lines); see docs/setup.md"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = nmnist_subset_missing()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("needs_nmnist"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def synthetic_nmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic N-MNIST folder (300 train, 50 test recordings) in the subset's layout (``_nmnist``)."""
    from _nmnist import write_synthetic_nmnist

    root = tmp_path_factory.mktemp("nmnist-synthetic")
    write_synthetic_nmnist(root)
    return root


@pytest.fixture
def nmnist_subset(request: pytest.FixtureRequest) -> Path:
    """The real N-MNIST subset; only for tests marked ``needs_nmnist`` (CI runs those with the data)."""
    if request.node.get_closest_marker("needs_nmnist") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses nmnist_subset: mark it @pytest.mark.needs_nmnist")
    return NMNIST_SUBSET


@pytest.fixture(scope="session", params=["synthetic", pytest.param("subset", marks=pytest.mark.needs_nmnist)])
def nmnist(request: pytest.FixtureRequest, synthetic_nmnist: Path) -> Path:
    """An N-MNIST folder, once synthetic and once the real subset (``needs_nmnist``: skipped when absent)."""
    return synthetic_nmnist if request.param == "synthetic" else NMNIST_SUBSET
