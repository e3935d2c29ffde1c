"""``sadp-data bench report``: turn the suites' JSON in a folder into ``REPORT.md`` with PNG plots.

Reads whatever of ``train.json``, ``store.json``, ``loader-<backend>.json``, ``kernels.json`` and
``score.json`` the folder holds (a missing suite gets a line saying so) and writes, next to the
report: ``train-accuracy-<dataset>.png`` (accuracy vs training time per method), ``train-speedup.png``
(measured vs theoretical speedup per keep ratio), ``train-score-histograms.png`` (SADP's score
distribution after every epoch), ``loader-throughput.png`` and ``kernels-scaling.png`` (log-log).
The report states the machine and the command line recorded with each result (results written
before ``sadp-data bench`` recorded them are marked as such), each bench's targets with PASS/MISS,
and the time budget: the whole suite ≤ 60 min, ``--quick`` ≤ 5 min.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from sadp_data.bench.report_plots import (
    LOADER_ORDER,
    OWN_TABLE,
    plot_accuracy_vs_time,
    plot_kernel_scaling,
    plot_loader_throughput,
    plot_score_histograms,
    plot_speedups,
)
from sadp_data.bench.suite import OWN_SUITES
from sadp_data.bench.targets import format_targets, target

BUDGET_S = {False: 60 * 60, True: 5 * 60}
#: Results of backends that run only when named: outside the budget of ``all``.
NAMED_ONLY_RESULTS = ("loader-remote",)


def load_results(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``folder`` by file stem; a file that is not valid JSON is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of bench results (write them: sadp-data bench --json DIR)")
    results = {}
    for path in sorted(folder.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not results:
        raise FileNotFoundError(f"{folder} holds no bench results (*.json); run sadp-data bench --json {folder}")
    return results


def _provenance(results: dict[str, dict[str, Any]]) -> list[str]:
    """Machine(s) and command line(s) recorded with the results."""
    lines = []
    machines: dict[str, list[str]] = {}
    commands: dict[str, list[str]] = {}
    for name, result in results.items():
        run = result.get("run")
        if run is None:
            commands.setdefault("(not recorded: written before `sadp-data bench` recorded it)", []).append(name)
            continue
        commands.setdefault(f"`{run['command']}`", []).append(name)
        machine = run["machine"]
        description = (
            f"{machine['cpu']}, {machine['cpus_usable']} of {machine['cpu_count']} CPUs usable, "
            f"{machine['memory_gib']} GiB, {machine['platform']}; Python {machine['python']}, torch "
            f"{machine['torch']} ({machine['torch_threads']} threads), numpy {machine['numpy']}, numba "
            f"{machine['numba']}" + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        )
        machines.setdefault(description, []).append(name)
    for description, names in machines.items():
        lines.append(f"* Machine: {description} ({', '.join(names)}).")
    for command, names in commands.items():
        lines.append(f"* Command: {command} ({', '.join(names)}).")
    loads = {
        name: result["run"]["load_average"]
        for name, result in results.items()
        if result.get("run", {}).get("load_average")
    }
    if loads:
        cpus = min(
            (
                result["run"]["machine"]["cpus_usable"]
                for result in results.values()
                if "machine" in result.get("run", {})
            ),
            default=None,
        )
        crowded = cpus is not None and any(load[0] > cpus for load in loads.values())
        lines.append(
            "* Load average (1 min) when each result was done: "
            + ", ".join(f"{name} {load[0]:.1f}" for name, load in loads.items())
            + (
                " — above the number of CPUs: other processes competed and times are inflated."
                if crowded
                else f" (the suite's own work; at most {cpus} CPUs)."
            )
        )
    return lines


def _budget(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """Wall time per result and against the budget of the run that produced most of them."""
    timed = {name: result["run"] for name, result in results.items() if "run" in result}
    if not timed:
        return "No wall times were recorded with these results.", {}
    quick = statistics.mode(run["quick"] for run in timed.values())
    # Suites and backends that run only when named (the frontier study, the remote loader) have their own budget.
    total = sum(
        run["wall_s"]
        for name, run in timed.items()
        if run["quick"] == quick and run.get("suite") not in OWN_SUITES and name not in NAMED_ONLY_RESULTS
    )
    parts = ", ".join(f"{name} {run['wall_s'] / 60:.1f} min" for name, run in timed.items())
    limit = BUDGET_S[quick]
    budget = {
        "budget": target(
            f"wall time of the {'--quick' if quick else 'whole'} suite (min)", total / 60, limit / 60, "<="
        )
    }
    return f"Wall time: {total / 60:.1f} min for the suites of `all` ({parts}).", budget


def _superseded_train(results: dict[str, dict[str, Any]]) -> str | None:
    """Why the train suite's figures no longer speak for the library, or ``None``: a frontier study run after it
    (the study that measures the current defaults at equal cost, ``FRONTIER.md``) supersedes it."""
    train_started = results.get("train", {}).get("run", {}).get("started")
    frontier_started = results.get("frontier", {}).get("run", {}).get("started")
    if not (train_started and frontier_started and train_started < frontier_started):
        return None
    return (
        f"**Superseded.** This train suite ran on {train_started[:10]}, before the defaults changed (an unweighted "
        "draw on the `decreasing` keep-ratio schedule); its SADP rows show the method as it was then. The frontier "
        f"study of {frontier_started[:10]} measures today's defaults at equal cost, trained to a plateau, with paired "
        "seeds: see [FRONTIER.md](FRONTIER.md)."
    )


def _train_section(train: dict[str, Any], folder: Path, superseded: str | None = None) -> list[str]:
    from sadp_data.bench.train import format_train_table
    from sadp_data.schedule import KeepRatioSchedule

    config = train["config"]
    lines = ["## Train", ""] + ([superseded, ""] if superseded else [])
    lines.append(
        f"Seeds {', '.join(map(str, config['seeds']))}; "
        f"keep ratios {', '.join(f'{k:g}' for k in config['keep_ratios'])}; "
        f"methods {', '.join(config['methods'])}. Every run of a dataset and seed starts from the same weights "
        "with Adam and a cosine learning rate; steps of all runs are interleaved; time is the sum of a run's own "
        "training steps (evaluation excluded). "
        f"Time to accuracy: training time until the per-epoch accuracy reaches full data's mean final per-epoch "
        f"accuracy minus {100 * config['time_to_accuracy_margin']:g} points (in parentheses: seeds that reached it)."
    )
    lines += [
        "",
        "| dataset | train examples | test examples | per-epoch eval | epochs | batch | T | channels | "
        "warm-up / anneal epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, settings in config["datasets"].items():
        schedule = KeepRatioSchedule(1.0, settings["epochs"], settings["warmup_epochs"], settings["anneal_fraction"])
        lines.append(
            f"| {dataset} | {settings['train_size']} | {settings['test_size']} | {settings['eval_size']} | "
            f"{settings['epochs']} | {settings['batch_size']} | {settings['time_steps']} | "
            f"{tuple(settings['channels'])} | {settings['warmup_epochs']} / {schedule.anneal_epochs} |"
        )
    lines += ["", format_train_table(train), ""]
    for dataset in config["datasets"]:
        image = f"train-accuracy-{dataset}.png"
        plot_accuracy_vs_time(train, dataset, folder / image)
        lines += [f"![{dataset}: accuracy vs training time]({image})", ""]
    plot_speedups(train, folder / "train-speedup.png")
    lines += ["![measured vs theoretical speedup](train-speedup.png)", ""]
    if plot_score_histograms(train, folder / "train-score-histograms.png"):
        lines += ["![SADP score histograms over epochs](train-score-histograms.png)", ""]
    return lines


def _loader_section(loaders: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    from sadp_data.bench.loader import format_loader_table

    lines = ["## Loader", ""]
    for backend in LOADER_ORDER:
        if backend not in loaders:
            continue
        result = loaders[backend]
        lines.append(f"### {backend}")
        lines.append("")
        if backend == "dvs":
            lines += [f"{result['recordings']} recordings, {result['events']:,} events.", ""]
            lines += ["| implementation | M events/s |", "|---|---|"]
            lines += [f"| {k} | {v['events_per_s'] / 1e6:.1f} |" for k, v in result["integration"].items()]
        elif backend == "remote":
            from sadp_data.bench.loader_remote import format_remote_table

            lines.append(format_remote_table(result))
        else:
            lines.append(format_loader_table(result))
        lines.append("")
    if any(name not in OWN_TABLE for name in loaders):
        plot_loader_throughput(loaders, folder / "loader-throughput.png")
        lines += ["![loader throughput](loader-throughput.png)", ""]
    return lines


def write_report(folder: str | Path, out: str | Path | None = None, command: str | None = None) -> Path:
    """Write ``REPORT.md`` (default: in ``folder``) and its plots next to it; returns the report's path."""
    from sadp_data.bench.kernels import format_kernel_table
    from sadp_data.bench.score import format_score_table
    from sadp_data.bench.store import format_store_table

    results = load_results(folder)
    out = Path(out) if out is not None else Path(folder) / "REPORT.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    images = out.parent
    lines = ["# Benchmark report", ""]
    lines += _provenance(results)
    budget, budget_target = _budget(results)
    lines += [f"* {budget}", f"* Report written by `{command or 'sadp-data bench report'}`.", ""]
    superseded = _superseded_train(results)
    targets = {}
    for name in ("train", "store", *(f"loader-{backend}" for backend in LOADER_ORDER)):
        if not (name == "train" and superseded):
            targets.update(results.get(name, {}).get("targets", {}))
    targets = {**targets, **budget_target}
    lines += ["## Targets", "", format_targets(targets) if targets else "No targets in these results.", ""]
    if superseded:
        lines += [f"The train suite's targets are left out: {superseded}", ""]

    if "train" in results:
        lines += _train_section(results["train"], images, superseded)
    else:
        lines += ["## Train", "", "Not run (no train.json).", ""]
    if "store" in results:
        store = results["store"]
        lines += ["## Store", "", format_store_table(store), ""]
    else:
        lines += ["## Store", "", "Not run (no store.json).", ""]
    loaders = {name.split("-", 1)[1]: result for name, result in results.items() if name.startswith("loader-")}
    lines += _loader_section(loaders, images) if loaders else ["## Loader", "", "Not run (no loader-*.json).", ""]
    if "kernels" in results:
        plot_kernel_scaling(results["kernels"], images / "kernels-scaling.png")
        lines += ["## Kernels", "", format_kernel_table(results["kernels"]), ""]
        lines += ["![plan_epoch scaling](kernels-scaling.png)", ""]
    else:
        lines += ["## Kernels", "", "Not run (no kernels.json).", ""]
    if "score" in results:
        lines += ["## Score", "", "Spearman correlation of each score variant with the true gradient norm.", ""]
        lines += [format_score_table(results["score"]), ""]
        scatter = Path(folder) / "score.png"
        if scatter.is_file():
            lines += [f"![score vs true gradient norm]({os.path.relpath(scatter, out.parent)})", ""]
    else:
        lines += ["## Score", "", "Not run (no score.json).", ""]
    out.write_text("\n".join(lines))
    return out
