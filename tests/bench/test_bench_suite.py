"""`sadp-data bench [SUITE ...]` and `bench report`: files and JSON shapes (no timings are asserted)."""

import importlib.util
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

from sadp_data.cli import main

pytest.importorskip("spikingjelly.activation_based")

RUN_KEYS = {
    "dataset",
    "method",
    "keep_ratio",
    "seed",
    "test_accuracy",
    "train_time_s",
    "theoretical_speedup",
    "accuracy_per_epoch",
}


def _check_targets(targets: dict) -> None:
    assert targets
    for entry in targets.values():
        assert set(entry) == {"description", "measured", "target", "comparison", "pass"}
        assert entry["comparison"] in ("<=", ">=")
        assert isinstance(entry["pass"], bool)


@pytest.mark.slow
def test_bench_store_quick_writes_its_json_into_a_folder(tmp_path: Path) -> None:
    assert main(["bench", "store", "--quick", "--no-progress", "--json", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "store.json").read_text())
    assert [(row["n"], row["batch_size"]) for row in result["updates"]] == [(10**6, 256), (10**6, 4096)]
    for row in result["updates"]:
        assert row["updates"] == row["n"] and row["update_s"] > 0 and row["flush_s"] >= 0
        assert row["updates_per_s"] >= row["updates_per_s_with_flush"] > 0
    assert [row["n"] for row in result["memory"]] == [10**6, 10**7]
    assert all(row["rss_delta_bytes"] > 0 for row in result["memory"])
    assert 0 < result["hook"]["overhead_fraction"] < 1
    _check_targets(result["targets"])
    assert set(result["targets"]) == {"updates_per_s", "bytes_per_example", "hook_overhead_fraction"}
    run = result["run"]
    assert run["command"].startswith("sadp-data bench store --quick") and run["quick"] is True
    assert run["machine"]["cpu_count"] >= 1 and run["wall_s"] > 0 and len(run["load_average"]) == 3


def _tiny_train(datasets: tuple[str, ...], methods: tuple[str, ...], nmnist_dir: Path | None = None):
    from sadp_data.bench.train import TrainBenchConfig, run_train_bench

    config = TrainBenchConfig(datasets=datasets, seeds=(0,), methods=methods).with_sizes(
        train_size=256, epochs=2, test_size=200
    )
    return run_train_bench(config, nmnist_dir=nmnist_dir, show_progress=False)


def _check_train_shape(result: dict, datasets: tuple[str, ...], methods: tuple[str, ...]) -> None:
    runs = result["runs"]
    expected = {(d, "full", 1.0) for d in datasets} | {(d, m, k) for d in datasets for m in methods for k in (0.5, 0.7)}
    assert {(r["dataset"], r["method"], r["keep_ratio"]) for r in runs} == expected
    for run in runs:
        assert RUN_KEYS <= set(run)
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["train_time_s"] > 0 and run["seed"] == 0
        assert len(run["accuracy_per_epoch"]) == len(run["time_per_epoch_s"]) == 2
        assert all(0.0 <= a <= 1.0 for a in run["accuracy_per_epoch"])
        # Warm-up epoch on all 256, then the pruned epoch (no anneal epoch at 2 epochs).
        assert run["examples_seen"] == 256 + round(run["keep_ratio"] * 256)
        assert run["theoretical_speedup"] == pytest.approx(2 / (1 + run["keep_ratio"]))
    sadp = [run for run in runs if run["method"] == "sadp"]
    assert sadp and all(len(run["score_histograms"]) == 2 for run in sadp)
    for histogram in sadp[0]["score_histograms"]:
        assert histogram["scored"] > 0 and sum(histogram["counts"]) + histogram["zeros"] == histogram["scored"]
        assert len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert all("score_histograms" not in run for run in runs if run["method"] in ("full", "random"))
    assert len(result["summary"]) == len(expected)
    _check_targets(result["targets"])


def test_train_bench_json_shape_from_a_tiny_run() -> None:
    methods = ("random", "sadp")
    result = _tiny_train(("fashion-mnist",), methods)
    _check_train_shape(result, ("fashion-mnist",), methods)
    assert result["config"]["methods"] == ["full", *methods]
    assert result["config"]["datasets"]["fashion-mnist"]["train_size"] == 256
    json.dumps(result)  # serialisable as is


@pytest.mark.slow
def test_train_bench_runs_nmnist_through_the_webdataset_adapter(synthetic_nmnist: Path) -> None:
    result = _tiny_train(("nmnist",), ("sadp",), synthetic_nmnist)
    _check_train_shape(result, ("nmnist",), ("sadp",))


def test_summary_means_speedups_and_time_to_accuracy() -> None:
    from sadp_data.bench.train import summarise, train_targets

    def run(method: str, keep: float, seed: int, accuracies: list[float], time: float, theoretical: float) -> dict:
        return {
            "dataset": "d",
            "method": method,
            "keep_ratio": keep,
            "seed": seed,
            "test_accuracy": accuracies[-1],
            "train_time_s": 2 * time,
            "theoretical_speedup": theoretical,
            "speedup": 20.0 / (2 * time),
            "accuracy_per_epoch": accuracies,
            "time_per_epoch_s": [time, time],
        }

    runs = [
        run("full", 1.0, 0, [0.80, 0.90], 10.0, 1.0),
        run("full", 1.0, 1, [0.80, 0.92], 10.0, 1.0),
        run("sadp", 0.7, 0, [0.906, 0.91], 8.0, 1.25),  # reaches 0.91 - 0.005 in epoch 1
        run("sadp", 0.7, 1, [0.70, 0.89], 8.0, 1.25),  # never reaches it
    ]
    rows = {(r["method"], r["keep_ratio"]): r for r in summarise(runs)}
    sadp = rows[("sadp", 0.7)]
    assert sadp["accuracy_mean"] == pytest.approx(0.90) and sadp["accuracy_std"] == pytest.approx(0.0141421, 1e-4)
    assert sadp["speedup_mean"] == pytest.approx(1.25) and sadp["speedup_ratio"] == pytest.approx(1.0)
    assert sadp["time_to_accuracy_target"] == pytest.approx(0.905)
    assert sadp["time_to_accuracy_s"] == pytest.approx(8.0) and sadp["time_to_accuracy_reached"] == 1
    assert rows[("full", 1.0)]["time_to_accuracy_s"] == pytest.approx(20.0)  # seed 1 only
    assert rows[("full", 1.0)]["time_to_accuracy_reached"] == 1
    targets = train_targets(list(rows.values()))
    gap = targets["d: sadp@0.7 accuracy gap"]
    assert gap["measured"] == pytest.approx(1.0) and gap["pass"] is False
    assert targets["d: sadp@0.7 speedup ratio"]["pass"] is True


def _write_synthetic_results(folder: Path) -> None:
    from sadp_data.bench.train import summarise, train_targets

    machine = {
        "platform": "Linux-test",
        "cpu": "Test CPU",
        "cpu_count": 2,
        "cpus_usable": 2,
        "memory_gib": 24.0,
        "python": "3.11",
        "torch": "2.13.0+cpu",
        "torch_threads": 2,
        "numpy": "2.4",
        "numba": "0.68",
        "gpu": None,
    }
    record = {
        "command": "sadp-data bench --json DIR",
        "quick": False,
        "wall_s": 60.0,
        "load_average": [3.5, 2.0, 1.0],
        "machine": machine,
    }
    runs = []
    for seed in (0, 1):
        for method, keep, theoretical in (("full", 1.0, 1.0), ("random", 0.5, 1.6), ("sadp", 0.5, 1.6)):
            entry = {
                "dataset": "fashion-mnist",
                "method": method,
                "keep_ratio": keep,
                "seed": seed,
                "test_accuracy": 0.85 + 0.01 * seed,
                "train_time_s": 30.0 / theoretical,
                "theoretical_speedup": theoretical,
                "speedup": theoretical * 0.97,
                "accuracy_per_epoch": [0.7, 0.8, 0.85 + 0.01 * seed],
                "time_per_epoch_s": [10.0 / theoretical] * 3,
            }
            if method == "sadp":
                entry["score_histograms"] = [
                    {"epoch": e, "scored": 10, "zeros": 0, "edges": [1.0, 2.0, 4.0], "counts": [4, 6]} for e in range(3)
                ]
            runs.append(entry)
    summary = summarise(runs)
    train = {
        "runs": runs,
        "summary": summary,
        "targets": train_targets(summary),
        "config": {
            "datasets": {
                "fashion-mnist": {
                    "train_size": 100,
                    "test_size": 50,
                    "eval_size": 50,
                    "epochs": 3,
                    "batch_size": 10,
                    "time_steps": 4,
                    "channels": [8, 16],
                    "warmup_epochs": 1,
                    "anneal_fraction": 0.125,
                }
            },
            "seeds": [0, 1],
            "keep_ratios": [0.5],
            "methods": ["full", "random", "sadp"],
            "time_to_accuracy_margin": 0.005,
        },
        "run": {**record, "suite": "train"},
    }
    store = {
        "updates": [
            {
                "n": 1000,
                "batch_size": 256,
                "updates": 1000,
                "update_s": 0.001,
                "flush_s": 0.001,
                "updates_per_s": 1e6,
                "updates_per_s_with_flush": 5e5,
                "update_call_us": 250.0,
            }
        ],
        "memory": [{"n": 1000, "rss_delta_bytes": 12000, "bytes_per_example": 12.0}],
        "hook": {"step_time_s": 0.1, "score_time_s": 0.001, "hook_time_s": 1e-6, "overhead_fraction": 0.01},
        "targets": {
            "updates_per_s": {
                "description": "updates/s",
                "measured": 5e5,
                "target": 5e6,
                "comparison": ">=",
                "pass": False,
            },
        },
        "run": {**record, "suite": "store"},
    }
    loader = {
        "backend": "torch",
        "raw": {"samples_per_s": 1000.0, "epoch_time_s": 1.0},
        "raw_by_workers": [{"num_workers": 0, "samples_per_s": 1000.0, "epoch_time_s": 1.0}],
        "results": [
            {
                "keep_ratio": keep,
                "num_workers": 0,
                "samples_per_s": 1100.0,
                "epoch_time_s": keep,
                "samples_per_s_vs_raw": 1.1,
                "epoch_time_vs_raw": keep,
            }
            for keep in (1.0, 0.7, 0.5)
        ],
    }
    dvs = {"backend": "dvs", "recordings": 10, "events": 5000, "integration": {"numba": {"events_per_s": 7e7}}}
    kernels = {
        "results": [
            {"n": n, "backend": "numba", "plan_epoch_s": n * 1e-8, "peak_rss_mb": 100.0, "first_call_s": 0.1}
            for n in (10**5, 10**6)
        ],
        "baselines": [{"n": n, "name": "torch.randperm", "seconds": n * 2e-8} for n in (10**5, 10**6)],
        "ratios": [{"n": n, "backend": "numba", "vs_randperm": 0.5} for n in (10**5, 10**6)],
    }
    variants = ("spike_aware", "rate", "grad_bound", "loss")
    score = {
        "settings": [
            {
                "name": "conv/ce/nonspiking-readout/init",
                "spearman": dict.fromkeys(variants, 0.9),
                "pearson": dict.fromkeys(variants, 0.9),
                "bound_violations": 0,
            }
        ],
        "overhead_fraction": 0.008,
        "overhead": {"step_time_s": 0.1, "score_time_s": 0.0008, "hook_time_s": 1e-6, "overhead_fraction": 0.008},
    }
    files = {"train": train, "store": store, "loader-torch": loader, "loader-dvs": dvs, "kernels": kernels}
    files["score"] = score  # written before runs were recorded: no "run" entry
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))


def test_bench_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_synthetic_results(tmp_path)
    out = tmp_path / "report" / "REPORT.md"
    assert main(["bench", "report", "--json", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## Targets", "## Train", "## Store", "## Loader", "## Kernels", "## Score"):
        assert heading in text
    assert "Test CPU" in text and "`sadp-data bench --json DIR`" in text and "not recorded" in text
    assert "store 3.5" in text  # the load average, which says whether other processes competed
    assert "| fashion-mnist | sadp | 0.5 | 2 |" in text and "MISS" in text and "PASS" in text
    for image in (
        "train-accuracy-fashion-mnist.png",
        "train-speedup.png",
        "train-score-histograms.png",
        "loader-throughput.png",
        "kernels-scaling.png",
    ):
        assert f"]({image})" in text
        assert (out.parent / image).stat().st_size > 1000


def test_bench_report_names_a_missing_folder(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "report", "--json", str(tmp_path / "absent")])
    assert exit_info.value.code == 2 and "absent is not a folder of bench results" in capsys.readouterr().err


def test_bench_suite_names_and_json_targets(tmp_path: Path) -> None:
    from sadp_data.bench.suite import BenchOptions, output_folder, resolve_suites

    assert resolve_suites([]) == ["loader", "kernels", "store", "score", "train"]
    assert resolve_suites(["store", "all"])[0] == "store" and len(resolve_suites(["store", "all"])) == 5
    with pytest.raises(ValueError, match="unknown bench suite"):
        resolve_suites(["stores"])
    options = BenchOptions()
    assert output_folder(["store"], str(tmp_path / "store.json"), options) is None  # one suite, one file
    assert output_folder(["store"], str(tmp_path / "results"), options) == tmp_path / "results"
    assert output_folder(["store", "train"], str(tmp_path / "x.json"), options) == tmp_path / "x.json"
    assert output_folder(["store"], str(tmp_path), options) == tmp_path  # an existing folder
    with pytest.raises(ValueError, match="one file per backend"):
        output_folder(["loader"], str(tmp_path / "loader.json"), BenchOptions(backend="all"))


def test_bench_loader_torch_backend_json_shape() -> None:
    from sadp_data.bench.loader import format_loader_table, run_torch_bench

    result = run_torch_bench(rounds=1, workers=(0,), limit=512, progress=False)
    assert result["backend"] == "torch" and result["raw"]["samples_per_s"] > 0
    assert [(r["keep_ratio"], r["num_workers"]) for r in result["results"]] == [(1.0, 0), (0.7, 0), (0.5, 0)]
    assert "wrap(SADPSampler)" in format_loader_table(result)


SADP_AT_HALF = [("sadp", 0.5), ("sadp-obstore", 0.5), ("sadp-adaptive", 0.5)]


@pytest.mark.slow
@pytest.mark.remote
def test_bench_loader_remote_json_shape(synthetic_nmnist: Path) -> None:
    """A tiny remote bench against moto and nginx: every pipeline per storage, the documented keys, and
    bytes counted at the server that follow the plan (keep 0.5 fetches about half of streaming's)."""
    pytest.importorskip("moto")
    pytest.importorskip("obstore")
    import shutil

    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("nginx is not installed")
    from sadp_data.bench.loader_remote import format_remote_table, run_remote_bench

    result = run_remote_bench(synthetic_nmnist, rounds=1, latencies_ms=(5.0,), limit=200, progress=False, repeat=1)
    rows = result["results"]
    assert {(r["storage"], r["pipeline"], r["keep_ratio"]) for r in rows} == {
        (storage, pipeline, keep)
        for storage in ("http", "s3")
        for pipeline, keep in [("stream", 1.0), ("sadp", 1.0), ("sadp", 0.7), *SADP_AT_HALF]
    }
    keys = {"keep_ratio", "latency_ms", "pipeline", "bytes_fetched", "requests", "epoch_s"}
    assert all(keys <= set(row) and row["samples"] > 0 for row in rows)
    for storage in ("http", "s3"):
        half = {r["pipeline"]: r for r in rows if r["storage"] == storage and r["keep_ratio"] == 0.5}
        assert half["sadp"]["samples"] == half["sadp-obstore"]["samples"] == half["sadp-adaptive"]["samples"] == 100
        assert half["sadp"]["bytes_fetched"] == half["sadp-obstore"]["bytes_fetched"]  # the same requests
        assert 0.3 < result["summary"][storage]["5"]["bytes_vs_stream"] < 0.7
        # adaptive reads at least the planned bytes (more where requests cost more than the bytes between them;
        # here, 2 shards read by 2 workers, it may read more than streaming, which gives each shard to one worker)
        assert half["sadp"]["bytes_fetched"] <= half["sadp-adaptive"]["bytes_fetched"]
        assert {"obstore_epoch_s_vs_stream_ci95", "adaptive_epoch_s_vs_stream_ci95"} <= set(
            result["summary"][storage]["5"]
        )
    _check_targets(result["targets"])
    table = format_remote_table(result)
    assert "through obstore" in table and "read alone" in table and "adaptive: bytes" in table
    clients = result["clients"]["http 5"]  # the same plan's ranges read alone, without the loader
    half = next(r for r in rows if (r["storage"], r["pipeline"], r["keep_ratio"]) == ("http", "sadp", 0.5))
    assert clients["fsspec"]["bytes"] == clients["obstore"]["bytes"] == half["bytes_fetched"]
    assert clients["ranges"] == half["requests"] and clients["fsspec"]["read_s"] > 0


def test_trimmed_mean_and_ratio_interval() -> None:
    from sadp_data.bench.loader import ratio_interval, trimmed_mean

    assert trimmed_mean([1.0, 2.0, 3.0, 4.0, 100.0], 0.2) == 3.0  # one burst of load is cut off
    assert trimmed_mean([5.0, 1.0], 0.2) == 3.0
    raw = list(np.random.default_rng(0).normal(30.0, 1.0, 60))
    low, high = ratio_interval([2 * t for t in raw], raw, trimmed_mean)
    assert 1.9 < low < 2.0 < high < 2.1
    low, high = ratio_interval(raw, raw, statistics.median)
    assert low < 1.0 < high and high - low < 0.05


def test_build_in_field_order_rebuilds_until_the_fields_are_in_declaration_order() -> None:
    from types import SimpleNamespace

    from sadp_data.bench.loader import build_in_field_order

    orders = iter([[[2, 0, 1]], [[0, 2, 1], [3]], [[0, 1, 2], [3]], [[1, 0, 2]]])

    def build():
        stages = next(orders)
        return SimpleNamespace(stages=stages, graph=SimpleNamespace(group_operations=lambda: stages))

    assert build_in_field_order(build).stages == [[0, 1, 2], [3]]
    with pytest.raises(RuntimeError, match="after 1 builds"):
        build_in_field_order(build, attempts=1)


def test_bench_one_suite_with_a_json_path_writes_that_file(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    assert main(["bench", "loader", "--backend", "torch", "--quick", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["backend"] == "torch" and result["settings"]["samples"] == 6000
    assert result["run"]["command"].startswith("sadp-data bench loader --backend torch")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loader.json"]


@pytest.mark.slow
def test_quick_bench_of_every_suite_and_its_report(tmp_path: Path) -> None:
    """The CI smoke test of `sadp-data bench --quick` (every suite) and `bench report`; figures not asserted."""
    assert main(["bench", "--quick", "--no-progress", "--json", str(tmp_path)]) == 0
    names = {path.name for path in tmp_path.glob("*.json")}
    assert {"kernels.json", "store.json", "score.json", "train.json", "loader-webdataset.json"} <= names
    if os.environ.get("CI") == "true" or importlib.util.find_spec("ffcv") is not None:  # CI installs ffcv
        ffcv = json.loads((tmp_path / "loader-ffcv.json").read_text())
        assert ffcv["backend"] == "ffcv" and len(ffcv["targets"]) == 4
        for row in ffcv["results"]:
            low, high = row["epoch_time_vs_raw_ci95"]
            assert 0 < low <= high
    assert main(["bench", "report", "--json", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "train" in report.lower() and list(tmp_path.glob("*.png"))


def test_a_train_suite_older_than_the_frontier_study_is_marked_superseded(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_synthetic_results(tmp_path)
    train = json.loads((tmp_path / "train.json").read_text())
    train["run"]["started"] = "2026-11-29T02:45:52+00:00"
    (tmp_path / "train.json").write_text(json.dumps(train))
    later = {**train["run"], "suite": "frontier", "started": "2026-12-02T00:52:58+00:00"}
    (tmp_path / "frontier.json").write_text(json.dumps({"run": later}))
    out = tmp_path / "REPORT.md"
    assert main(["bench", "report", "--json", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    targets, train_section = text.split("## Train", 1)
    assert "**Superseded.** This train suite ran on 2026-11-29" in train_section and "FRONTIER.md" in train_section
    assert "full − SADP" not in targets and "The train suite's targets are left out" in targets
    later["started"] = "2026-11-01T00:00:00+00:00"  # a frontier study older than the train suite supersedes nothing
    (tmp_path / "frontier.json").write_text(json.dumps({"run": later}))
    assert main(["bench", "report", "--json", str(tmp_path), "--out", str(out)]) == 0
    assert "Superseded" not in out.read_text()
