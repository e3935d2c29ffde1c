"""``sadp-data bench [SUITE ...]``: run benchmark suites, print their tables, write their JSON.

Suites: ``loader`` (backends ``torch``, ``webdataset``, ``ffcv``, ``dvs``, and ``remote`` when named:
S3 and HTTP on loopback servers), ``kernels``, ``store``,
``score``, ``train``; ``all`` runs them in that order (``sadp-data bench`` with no suite name lists
the suites, ``bench.guide``, unless ``--json`` or ``--quick`` asks for a run). Every JSON result gets a
``"run"`` entry: the command line, the machine, whether it was ``--quick``, when it started, how
long it took (``wall_s``) and the load average (1, 5, 15 min) when it ended — above the CPU count,
other processes competed for the CPUs and times are inflated — so ``sadp-data bench report`` can
state what produced each figure.

Where results go (``--json``): with several suites, or when the value is an existing folder or has
no ``.json`` suffix, each result is written to ``DIR/<name>.json`` as soon as it is ready (names:
``loader-<backend>``, ``kernels``, ``store``, ``score`` (``score-zoo`` with ``--zoo``), ``train``; with a
folder the score suite also writes its plot, ``DIR/score.png``); with one suite and a ``.json`` path, that
single file, as before (``score --zoo`` without ``--json``: ``bench/results/score-zoo.json``, plot beside it).
A single ``loader`` suite runs ``--backend`` (default ``webdataset``; ``all`` for every backend);
within several suites it runs every backend available: ``ffcv`` when it imports, ``dvs`` when an
N-MNIST folder is named (``--nmnist PATH`` or the ``SADP_NMNIST`` environment variable).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sadp_data.bench.machine import machine_info

SUITES = ("loader", "kernels", "store", "score", "train")
#: Suites that run only when named (``all`` leaves them out): the frontier study takes about two hours,
#: the scale bench needs about 12 GB of memory.
OWN_SUITES = ("frontier", "scale")
LOADER_BACKENDS = ("torch", "webdataset", "ffcv", "dvs", "remote")
KERNEL_BACKENDS = ("numba", "numpy", "torch", "cuda")
Results = Iterator[tuple[str, dict[str, Any]]]


def repository_root() -> Path:
    """The source checkout this package runs from (``bench/`` is installed as ``sadp_data.bench``)."""
    return Path(__file__).resolve().parents[2]


def default_results_dir() -> Path:
    return repository_root() / "bench" / "results"


def default_nmnist_dir() -> Path | None:
    """The N-MNIST folder named by the ``SADP_NMNIST`` environment variable (``None`` when unset).

    The repository ships no N-MNIST copy, so there is no default beyond what the user names; a
    named path that is not a folder is an error, not a silent skip.
    """
    named = os.environ.get("SADP_NMNIST")
    if not named:
        return None
    if not Path(named).is_dir():
        raise FileNotFoundError(f"SADP_NMNIST={named} is not a folder (an N-MNIST folder such as nmnist-small)")
    return Path(named)


@dataclass
class BenchOptions:
    """Settings shared by the suites (the ``sadp-data bench`` flags)."""

    quick: bool = False
    data: str | None = None
    nmnist: str | None = None
    backend: str | None = None
    backends: str = "numba,numpy,torch"
    device: str = "cpu"
    plot: str | None = None
    progress: bool = True
    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    seeds: int | None = None
    train_size: int | None = None
    epochs: int | None = None
    command: str = "sadp-data bench"
    partial_json: Path | None = None
    zoo: bool = False

    def nmnist_dir(self) -> Path | None:
        return Path(self.nmnist) if self.nmnist else default_nmnist_dir()


def run_record(
    command: str, suite: str, quick: bool, started: datetime, wall_s: float, machine: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``run`` entry of every result file (``sadp_data.bench.report`` reads it): command, timing, load, machine."""
    return {
        "command": command,
        "suite": suite,
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": machine_info() if machine is None else machine,
    }


def _score(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    if options.zoo:
        from sadp_data.bench.score_zoo_report import zoo_suite

        yield from zoo_suite(options.quick, options.command, options.progress, options.plot, json_dir, machine_info())
        return
    from sadp_data.bench.score import ScoreBenchConfig, format_score_table, plot_scores, run_score_bench

    config = ScoreBenchConfig.quick() if options.quick else ScoreBenchConfig()
    result = run_score_bench(config, data_dir=options.data, show_progress=options.progress)
    print(format_score_table(result))
    plot = options.plot or (json_dir / "score.png" if json_dir is not None else None)
    if plot:
        plot_scores(result, plot)
        print(f"plot written to {plot}")
    yield "score", {key: value for key, value in result.items() if not key.startswith("_")}


def _kernels(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench.kernels import SIZES, format_kernel_table, run_kernel_bench

    sizes = (10**5, 10**6) if options.quick else SIZES
    backends = tuple(name.strip() for name in options.backends.split(",") if name.strip())
    unknown = [name for name in backends if name not in KERNEL_BACKENDS]
    if unknown or not backends:
        raise ValueError(
            f"--backends {options.backends}: the kernels suite times the sampling kernels "
            f"{', '.join(KERNEL_BACKENDS)} (comma-separated); the loader suite's data backend is --backend"
        )
    result = run_kernel_bench(sizes, backends, device=options.device, progress=options.progress)
    print(format_kernel_table(result))
    yield "kernels", result


def _ffcv_available() -> bool:
    try:
        import ffcv  # noqa: F401
    except ImportError:
        return False
    return True


def _loader_backends(options: BenchOptions, several: bool) -> list[str]:
    """The loader backends to run: the one asked for, or every available one (``all``/several suites)."""
    if options.backend is not None and options.backend != "all":
        if options.backend not in LOADER_BACKENDS:
            raise ValueError(
                f"--backend {options.backend} is not a loader backend; use {', '.join(LOADER_BACKENDS)} or all "
                "(the kernels suite's sampling kernels are chosen with --backends)"
            )
        return [options.backend]
    if options.backend is None and not several:
        return ["webdataset"]
    chosen = ["torch", "webdataset"]
    if _ffcv_available():
        chosen.append("ffcv")
    else:
        print("loader: ffcv does not import; skipping its backend")
    if options.nmnist_dir() is not None:
        chosen.append("dvs")
    else:
        print("loader: no N-MNIST folder (--nmnist); skipping the dvs backend")
    return chosen


def _print_targets(result: dict[str, Any]) -> None:
    """A result's targets as a PASS/MISS table below its figures, when it has any."""
    from sadp_data.bench.targets import format_targets

    if result.get("targets"):
        print()
        print(format_targets(result["targets"]))


def _loader(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench import loader

    rounds = 1 if options.quick else 3
    for backend in _loader_backends(options, several):
        if backend == "remote":
            from sadp_data.bench.loader_remote import format_remote_table, run_remote_bench

            if options.nmnist_dir() is None:
                raise ValueError("--backend remote needs --nmnist PATH (N-MNIST: its raw events are the samples)")
            quick = {"rounds": 1, "limit": 200, "latencies_ms": (0.0, 5.0), "repeat": 1} if options.quick else {}
            result = run_remote_bench(options.nmnist_dir(), progress=options.progress, **quick)
            print(format_remote_table(result))
            _print_targets(result)
        elif backend == "dvs":
            folder = options.data if options.backend == "dvs" and options.data else options.nmnist_dir()
            if folder is None:
                raise ValueError("--backend dvs needs --data PATH or --nmnist PATH (an N-MNIST folder)")
            result = loader.run_dvs_bench(folder, rounds=rounds, limit=100 if options.quick else None)
            for name, figures in result["integration"].items():
                print(f"{name:>6}: {figures['events_per_s'] / 1e6:7.1f} M events/s")
        else:
            if backend == "ffcv" and not _ffcv_available():
                raise RuntimeError("--backend ffcv needs ffcv (pip install -e '.[ffcv]'; see the README's set-up)")
            runner = {
                "torch": loader.run_torch_bench,
                "webdataset": loader.run_loader_bench,
                "ffcv": loader.run_ffcv_bench,
            }[backend]
            result = runner(
                options.data, rounds=rounds, limit=6000 if options.quick else None, progress=options.progress
            )
            print(loader.format_loader_table(result))
            _print_targets(result)
        yield f"loader-{backend}", result


def _store(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench.store import StoreBenchConfig, format_store_table, run_store_bench

    result = run_store_bench(StoreBenchConfig.quick() if options.quick else StoreBenchConfig(), options.progress)
    print(format_store_table(result))
    yield "store", result


def _train(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench.train import TrainBenchConfig, format_train_table, run_train_bench

    config = TrainBenchConfig.quick() if options.quick else TrainBenchConfig()
    config = config.with_sizes(train_size=options.train_size, epochs=options.epochs)
    if options.seeds is not None:
        config = dataclasses.replace(config, seeds=tuple(range(options.seeds)))
    if options.methods is not None:
        config = dataclasses.replace(config, methods=options.methods)
    if options.datasets is not None:
        config = dataclasses.replace(config, datasets=options.datasets)
    nmnist = options.nmnist_dir()
    if nmnist is None and "nmnist" in config.datasets:
        print("train: no N-MNIST folder (--nmnist); training on Fashion-MNIST only")
        config = dataclasses.replace(config, datasets=tuple(d for d in config.datasets if d != "nmnist"))
    result = run_train_bench(config, data_dir=options.data, nmnist_dir=nmnist, show_progress=options.progress)
    print(format_train_table(result))
    _print_targets(result)
    yield "train", result


def _frontier(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench.frontier import FrontierConfig, format_frontier_table, run_frontier_bench

    nmnist = options.nmnist_dir()
    if nmnist is None:
        print("frontier: no N-MNIST folder (--nmnist); running the Fashion-MNIST parts only")
    config = (FrontierConfig.quick if options.quick else FrontierConfig.default)(nmnist=nmnist is not None)
    if options.seeds is not None:
        config = dataclasses.replace(
            config,
            parts=tuple(
                dataclasses.replace(p, seeds=tuple(range(options.seeds)), contested=None, variant_seed_count=None)
                for p in config.parts
            ),
        )  # N seeds of the whole grid, the ablation on each, no contested cells
    partial = json_dir / "frontier.partial.json" if json_dir is not None else options.partial_json
    result = run_frontier_bench(
        config, data_dir=options.data, nmnist_dir=nmnist, show_progress=options.progress, partial_json=partial
    )
    print(format_frontier_table(result))
    _print_targets(result)
    yield "frontier", result


def _scale(options: BenchOptions, several: bool, json_dir: Path | None) -> Results:
    from sadp_data.bench.scale import format_scale_table, run_scale_bench

    result = run_scale_bench(10**6 if options.quick else 10**8, world=4)
    print(format_scale_table(result))
    _print_targets(result)
    yield "scale", result


RUNNERS: dict[str, Callable[[BenchOptions, bool, Path | None], Results]] = {
    "loader": _loader,
    "kernels": _kernels,
    "store": _store,
    "score": _score,
    "train": _train,
    "frontier": _frontier,
    "scale": _scale,
}


def resolve_suites(names: list[str]) -> list[str]:
    """Expand ``all`` (also the default for no names), drop repeats, check the names."""
    unknown = [name for name in names if name not in (*SUITES, *OWN_SUITES, "all")]
    if unknown:
        raise ValueError(
            f"unknown bench suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES + OWN_SUITES)}, all or report"
        )
    chosen: list[str] = []
    for name in names or ["all"]:
        for suite in SUITES if name == "all" else (name,):
            if suite not in chosen:
                chosen.append(suite)
    return chosen


def output_folder(suites: list[str], json_target: str | None, options: BenchOptions) -> Path | None:
    """The folder results go to, or ``None`` for none or for one ``.json`` file (see the module docstring)."""
    if json_target is None:
        return None
    target = Path(json_target)
    if len(suites) > 1 or target.is_dir() or target.suffix != ".json":
        return target
    if suites == ["loader"] and options.backend == "all":
        raise ValueError(f"--json {json_target}: --backend all writes one file per backend; give a folder instead")
    return None


def run_suites(suites: list[str], options: BenchOptions, json_target: str | None = None) -> dict[str, dict[str, Any]]:
    """Run ``suites`` in order; write each result as soon as it is ready; return them by name."""
    if options.zoo:
        from sadp_data.bench.score_zoo_report import zoo_outputs

        json_target, plot = zoo_outputs(suites, json_target, options.plot, default_results_dir())
        options = dataclasses.replace(options, plot=plot)
    folder = output_folder(suites, json_target, options)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    elif json_target is not None:
        options = dataclasses.replace(options, partial_json=Path(json_target).with_suffix(".partial.json"))
    machine = machine_info()
    results: dict[str, dict[str, Any]] = {}
    for suite in suites:
        if len(suites) > 1:
            print(f"\n== bench {suite} ==")
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        for name, result in RUNNERS[suite](options, len(suites) > 1, folder):
            now = time.perf_counter()
            result["run"] = run_record(options.command, suite, options.quick, started, now - clock, machine)
            started, clock = datetime.now(timezone.utc), now
            path = folder / f"{name}.json" if folder is not None else (Path(json_target) if json_target else None)
            if path is not None:
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(f"figures written to {path}")
                if name == "frontier":
                    from sadp_data.bench.frontier import write_frontier_report

                    report = write_frontier_report(path)
                    path.with_suffix(".partial.json").unlink(missing_ok=True)
                    print(f"report written to {report}")
            results[name] = result
    if len(suites) > 1:
        print("\n" + ", ".join(f"{name} {result['run']['wall_s']:.0f} s" for name, result in results.items()))
        print(f"total {sum(result['run']['wall_s'] for result in results.values()) / 60:.1f} min")
        if folder is not None:
            print(f"write the report with: sadp-data bench report --json {folder}")
    return results
