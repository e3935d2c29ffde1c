"""The frontier bench: the study's JSON shape, its statistics and its report, on a tiny run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spikingjelly")

from sadp_data.bench.frontier import (
    ContestedCells,
    FrontierConfig,
    Part,
    Variant,
    events_config,
    frontier_targets,
    run_frontier_bench,
    summarise,
    write_frontier_report,
)
from sadp_data.bench.training_data import DemoConfig, _nmnist_fold
from sadp_data.sources import Source

RUN_KEYS = {
    "dataset",
    "method",
    "keep_ratio",
    "realized_keep_ratio",
    "seed",
    "examples_processed",
    "train_time_s",
    "test_accuracy",
    "accuracy_per_epoch",
    "stats",
    "probes",
}


def test_nmnist_folds_partition_the_pooled_recordings():
    train = Source("train", [{"y.cls": i, "id": i} for i in range(50)])
    test = Source("test", [{"y.cls": i, "id": 100 + i} for i in range(7)])
    tested, trained = [], []
    for fold in range(5):
        source, held = _nmnist_fold(train, test, DemoConfig(dataset="nmnist", folds=5, fold=fold))
        ids = [source.data[i]["id"] for i in range(len(source))]
        held_ids = [item["id"] for item in held]
        assert not set(ids) & set(held_ids)
        assert len(ids) + len(held_ids) == 57
        tested += held_ids
        trained.append(ids)
    assert sorted(tested) == sorted(list(range(50)) + list(range(100, 107)))  # every recording tested once
    assert trained[0] != trained[1]


def _tiny_config() -> FrontierConfig:
    mlp = DemoConfig(train_size=512, test_size=256, eval_size=256, epochs=3, model="mlp", hidden=(32,), batch_size=64)
    parts = [
        Part(
            "fashion-mnist/mlp",
            mlp,
            ("random", "sadp", "epsilon_greedy"),
            (0.5,),
            (0, 1),
            (Variant("sadp α=1", 0.5, (("weight_power", 1.0),)),),
            probe_every=1,
            probe_size=16,
            variant_seed_count=1,
            contested=ContestedCells(("sadp",), (0.5,), (2,)),
        )
    ]
    events = events_config(60, 30, epochs=2, time_steps=2, channels=(2, 4), batch_size=30)
    parts.append(Part("nmnist/conv", events, ("sadp",), (0.5,), (0,)))
    return FrontierConfig(tuple(parts), workers=2)


@pytest.mark.slow
def test_frontier_bench_writes_runs_summary_targets_and_report(tmp_path, synthetic_nmnist):
    result = run_frontier_bench(
        _tiny_config(),
        nmnist_dir=synthetic_nmnist,
        show_progress=False,
        partial_json=tmp_path / "p.json",
    )
    runs = result["runs"]
    # Seed 0: full, the three methods and the variant; seed 1 without the variant; seed 2 (contested) full and sadp.
    per_seed = Counter(r["seed"] for r in runs if r["part"] == "fashion-mnist/mlp")
    assert sorted(per_seed.items()) == [(0, 5), (1, 4), (2, 2)]
    assert len(runs) == 11 + 2
    for run in runs:
        assert RUN_KEYS <= set(run)
        assert len(run["accuracy_per_epoch"]) == (3 if run["part"] == "fashion-mnist/mlp" else 2)
    sadp = [r for r in runs if r["variant"] == "sadp" and r["part"] == "fashion-mnist/mlp"]
    # 3 epochs at k = 0.5: a warm-up epoch, one pruned at 0.5 and an anneal epoch (round(0.125 · 3) = 0, raised to 1).
    assert all(r["realized_keep_ratio"] == pytest.approx(2.5 / 3) for r in sadp)
    assert all(r["examples_processed"] == 512 + 256 + 512 for r in sadp)
    assert [s["epoch"] for s in sadp[0]["stats"]] == [0, 1, 2]
    assert [p["epoch"] for p in sadp[0]["probes"]] == [0, 1]  # every epoch but the last
    estimators = {"uniform", "stored", "fresh", "optimal", "stored_unbiased", "fresh_unbiased"}
    assert estimators == set(sadp[0]["probes"][0]["estimator"])
    full = [r for r in runs if r["method"] == "full" and r["part"] == "fashion-mnist/mlp"]
    # Paired seeds: every run of a seed starts from the same weights, so warm-up epochs agree.
    for seed in (0, 1, 2):
        first = {r["accuracy_per_epoch"][0] for r in runs if r["seed"] == seed and r["part"] == "fashion-mnist/mlp"}
        assert len(first - {full[seed]["accuracy_per_epoch"][0]}) <= 1  # full uses its own shuffled loader
    paired = [p for p in result["summary"]["paired"] if p["part"] == "fashion-mnist/mlp"]
    assert {p["versus"] for p in paired} == {"full", "random", "epsilon_greedy", "sadp α=1"}
    pairs = {p["versus"]: p["pairs"] for p in paired}
    assert pairs == {"full": 3, "random": 2, "epsilon_greedy": 2, "sadp α=1": 1}  # each on the seeds both ran
    mlp = json.loads(json.dumps(result["config"]))["parts"][0]
    assert mlp["contested"] == {"methods": ["sadp"], "keep_ratios": [0.5], "seeds": [2]}
    assert mlp["variant_seeds"] == [0]
    assert "fashion-mnist/mlp: sadp@0.5 vs every baseline" in result["targets"]
    assert json.loads((tmp_path / "p.json").read_text())["partial"]
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(result))
    report = write_frontier_report(path).read_text()
    assert "## fashion-mnist/mlp" in report and "Diagnostics of the default SADP runs" in report
    assert "the ablation variants on seeds [0]" in report and "contested cells (sadp and full data" in report
    assert "(3) |" in report and "± — (1) |" in report  # pairs per difference; no interval from one pair
    assert "| sadp | 0.5 | 0–2 |" in report  # the contested cells' table: every seed they ran
    assert (tmp_path / "frontier-fashion-mnist-mlp.png").stat().st_size > 1000


def _run(part, variant, keep, seed, accuracy, curve=(0.5, 0.6, 0.7)):
    return {
        "part": part,
        "variant": variant,
        "method": variant,
        "keep_ratio": keep,
        "seed": seed,
        "test_accuracy": accuracy,
        "accuracy_per_epoch": list(curve),
        "time_per_epoch_s": [1.0, 1.0, 1.0],
        "theoretical_speedup": 1.0 / keep if keep < 1 else 1.0,
        "speedup": 1.0 / keep if keep < 1 else 1.0,
        "realized_keep_ratio": keep,
        "examples_processed": 100 * keep,
        "train_time_s": 3.0,
    }


def test_paired_differences_and_targets():
    rng = np.random.default_rng(0)
    runs = []
    for seed in range(5):
        base = 0.80 + 0.01 * rng.standard_normal()  # a seed effect shared by every method
        runs.append(_run("p", "full", 1.0, seed, base + 0.004, (0.79, 0.80, base + 0.004)))
        runs.append(_run("p", "sadp", 0.7, seed, base + 0.002 + 0.0002 * seed))
        runs.append(_run("p", "random", 0.7, seed, base))
    summary = summarise(runs)
    by = {(p["versus"], p["keep_ratio"]): p for p in summary["paired"]}
    assert by[("random", 0.7)]["difference_pt"] == pytest.approx(0.2 + 0.02 * 2)
    assert by[("random", 0.7)]["ci95_pt"] < 0.05  # pairing removes the seed effect
    assert by[("full", 0.7)]["difference_pt"] == pytest.approx(-0.2 + 0.02 * 2)
    targets = frontier_targets(summary, "p")
    assert targets["p: sadp@0.7 vs every baseline"]["pass"]
    assert targets["p: full − sadp@0.7"]["measured"] == pytest.approx(0.16)
    assert targets["p: full − sadp@0.7"]["pass"]


def test_rows_average_the_grid_seeds_and_differences_pool_every_pair():
    runs = []
    for seed in range(7):  # seeds 5 and 6 are a contested cell's: full data and SADP only
        shift = 0.01 * seed
        runs.append(_run("p", "full", 1.0, seed, 0.80 + shift))
        runs.append(_run("p", "sadp", 0.5, seed, 0.80 + shift + (0.001 if seed < 5 else 0.004)))
        if seed < 5:
            runs.append(_run("p", "random", 0.5, seed, 0.79 + shift))
        if seed < 2:
            runs.append({**_run("p", "sadp", 0.5, seed, 0.81 + shift), "variant": "sadp α=1"})
    summary = summarise(runs)
    rows = {r["variant"]: r for r in summary["rows"]}
    assert rows["sadp"]["seeds"] == rows["full"]["seeds"] == rows["random"]["seeds"] == 5
    assert rows["sadp"]["accuracy_mean"] == pytest.approx(0.801 + 0.02)  # seeds 0-4 only
    assert rows["sadp α=1"]["seeds"] == 2  # an ablation row keeps its own seeds
    by = {p["versus"]: p for p in summary["paired"]}
    assert by["full"]["pairs"] == 7 and by["full"]["difference_pt"] == pytest.approx((5 * 0.1 + 2 * 0.4) / 7)
    assert by["random"]["pairs"] == 5 and by["sadp α=1"]["pairs"] == 2


def test_seeds_option_sets_the_grid_and_drops_the_contested_cells(monkeypatch, tmp_path):
    import sadp_data.bench.frontier as frontier
    from sadp_data.cli import main

    asked = []

    def fake_run(config, **_):
        asked.append(config)
        raise SystemExit(0)  # the configuration is all this test needs

    monkeypatch.setattr(frontier, "run_frontier_bench", fake_run)
    with pytest.raises(SystemExit):
        main(["bench", "frontier", "--seeds", "2", "--no-progress", "--json", str(tmp_path / "f.json")])
    (config,) = asked
    assert all(p.seeds == (0, 1) and p.extra_seeds == () and p.variant_seeds == (0, 1) for p in config.parts)


@pytest.mark.slow
def test_cli_quick_frontier_writes_json_report_and_plots(tmp_path):
    from sadp_data.cli import main

    out = tmp_path / "frontier.json"
    assert main(["bench", "frontier", "--quick", "--seeds", "1", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["run"]["quick"] and result["run"]["command"].startswith("sadp-data bench frontier")
    assert {r["seed"] for r in result["runs"]} == {0}
    assert (tmp_path / "FRONTIER.md").read_text().startswith("# Accuracy against cost")
    assert (tmp_path / "frontier-fashion-mnist-mlp.png").is_file()
    assert not (tmp_path / "frontier.partial.json").exists()  # removed once the whole result is written


def test_all_leaves_the_frontier_study_out():
    from sadp_data.bench.suite import resolve_suites

    assert "frontier" not in resolve_suites(["all"])
    assert resolve_suites(["frontier"]) == ["frontier"]
    with pytest.raises(ValueError, match="frontier"):
        resolve_suites(["frontiers"])


def test_load_adjusted_speedup_ignores_when_the_machine_was_busy():
    from sadp_data.bench.frontier_summary import _load_adjusted_efficiency

    load = [1.0, 5.0, 1.0, 1.0]  # the second epoch ran on a busy machine
    keeps = [1.0, 0.9, 0.1, 1.0]
    full = {"time_per_epoch_s": [10 * c for c in load]}
    run = {
        "stats": [{"keep_ratio": k} for k in keeps],
        "time_per_epoch_s": [10 * k * c * 1.02 for k, c in zip(keeps, load, strict=True)],
    }
    assert _load_adjusted_efficiency(run, full) == pytest.approx(1 / 1.02)
    plain = sum(full["time_per_epoch_s"]) / sum(run["time_per_epoch_s"]) / (4 / sum(keeps))
    assert plain < 0.95  # the plain ratio blames the run for the busy epoch it did most work in


def test_resummarise_recomputes_summary_and_targets_from_the_runs(tmp_path):
    from sadp_data.bench.frontier import resummarise
    from sadp_data.cli import main

    runs = []
    for seed in range(3):
        runs.append(_run("p", "full", 1.0, seed, 0.80, (0.79, 0.80, 0.80)))
        runs[-1]["stats"] = []
        for variant, accuracy in (("sadp", 0.801), ("random", 0.79)):
            runs.append({**_run("p", variant, 0.5, seed, accuracy), "stats": [{"keep_ratio": 0.5}] * 3})
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"runs": runs, "summary": {}, "targets": {}, "config": {"parts": [{"name": "p"}]}}))
    result = resummarise(path)
    assert result["targets"]["p: sadp@0.5 vs every baseline"]["measured"] == pytest.approx(1.1)
    assert json.loads(path.read_text())["resummarised"]
    with pytest.raises(SystemExit):
        main(["bench", "train", "--resummarise", "--json", str(path)])


def test_a_part_trains_the_grid_on_its_seeds_and_only_the_contested_cells_on_theirs() -> None:
    (mlp, *_) = FrontierConfig.default(nmnist=False).parts
    assert mlp.all_seeds == tuple(range(10))
    labels = [[label for _, label in mlp.specs(seed)] for seed in mlp.all_seeds]
    assert [len(runs) for runs in labels] == [30, 30, 30, 22, 22, 5, 5, 5, 5, 5]  # the ablation on seeds 0-2
    assert labels[5] == ["full", "sadp", "sadp", "epsilon_greedy", "epsilon_greedy"]
    assert sorted(spec.keep_ratio for spec, _ in mlp.specs(7)) == [0.5, 0.5, 0.7, 0.7, 1.0]
    with pytest.raises(ValueError, match="has no seed 10"):
        mlp.specs(10)
    overlapping = Part("p", mlp.config, ("sadp",), (0.5,), (0, 1), contested=ContestedCells(("sadp",), (0.5,), (1, 2)))
    assert overlapping.all_seeds == (0, 1, 2) and overlapping.extra_seeds == (2,)  # a grid seed is not trained twice
    assert mlp.variant_seeds == (0, 1, 2)
    with pytest.raises(ValueError, match=r"contested cells \['ucb', 0.9\] are not in its grid"):
        Part("p", mlp.config, ("sadp",), (0.5,), (0,), contested=ContestedCells(("sadp", "ucb"), (0.9,), (1,)))
    with pytest.raises(ValueError, match=r"variant_seed_count must be 1\.\.2, got 0"):
        Part("p", mlp.config, ("sadp",), (0.5,), (0, 1), variant_seed_count=0)


def test_the_lever_study_runs_valid_variants_paired_with_the_defaults() -> None:
    from sadp_data.bench.frontier_levers import lever_config
    from sadp_data.methods import get_method

    (part,) = lever_config().parts
    specs = part.specs(0)
    assert [spec.method for spec, _ in specs].count("sadp") == 2 + 6 and specs[0][1] == "full"
    for spec, _ in specs:
        if spec.method != "full":
            get_method(spec.method, **dict(spec.method_options))  # every lever value is accepted
    assert len(part.seeds) == 5 and part.config.train_size == 60000


def test_the_seed_study_pools_earlier_seeds_per_keep_ratio_and_reads_equivalence() -> None:
    import argparse

    from sadp_data.bench.frontier_seeds import paired_summary, seed_range, seeds_config

    part = "fashion-mnist/mlp"
    runs = []
    for seed in range(8):
        runs.append(_run(part, "full", 1.0, seed, 0.890))
        runs.append(_run(part, "epsilon_greedy", 0.5, seed, 0.890))
        runs.append(_run(part, "sadp", 0.5, seed, 0.890 + (0.0002 if seed % 2 else -0.0001)))
        if seed < 5:  # the other keep ratio has fewer seeds, and a large gain
            runs.append(_run(part, "epsilon_greedy", 0.7, seed, 0.880))
            runs.append(_run(part, "sadp", 0.7, seed, 0.885 + 0.001 * seed))
    runs.append(_run("other/part", "sadp", 0.5, 99, 0.1))  # another part's runs are never paired
    tie, gain = paired_summary(runs, 0.5), paired_summary(runs, 0.7)
    assert tie["seeds"] == list(range(8)) and gain["seeds"] == list(range(5))
    assert tie["sadp_minus_epsilon_greedy"]["mean"] == pytest.approx(0.005)
    assert tie["sadp_minus_epsilon_greedy"]["equivalent_within_margin"]  # differences of ±0.02 pt: within 0.1 pt
    assert gain["sadp_minus_epsilon_greedy"]["mean"] == pytest.approx(0.7)
    low, high = gain["sadp_minus_epsilon_greedy"]["ci90"]
    assert 0.1 < low < 0.7 < high and not gain["sadp_minus_epsilon_greedy"]["equivalent_within_margin"]
    assert seed_range("10-19") == tuple(range(10, 20)) and seed_range("3") == (3,)
    for bad in ("ten", "5-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            seed_range(bad)
    with pytest.raises(ValueError, match=r"keep 0\.3"):
        paired_summary(runs, 0.3)  # no seed has both methods there
    (study,) = seeds_config((10, 11), (0.5, 0.7)).parts
    assert study.seeds == (10, 11) and study.keep_ratios == (0.5, 0.7) and study.variants == ()


def test_the_report_lists_every_seed_study_beside_the_frontier_json(tmp_path: Path) -> None:
    from sadp_data.bench.frontier_report import _more_seeds_section, _seed_ranges

    assert _more_seeds_section(tmp_path) == []
    cell = {"mean": 0.05, "ci95_half_width": 0.1, "ci90": [-0.03, 0.13]}
    old = {"seeds": [0, 1, 2], "sadp_minus_epsilon_greedy": cell, "sadp_minus_full": cell}
    old |= {"sadp_mean": 89.0, "epsilon_greedy_mean": 88.9, "full_mean": 89.0}
    (tmp_path / "frontier-seeds.json").write_text(json.dumps({"paired": old}))
    new = {"0.5": {**old, "seeds": [0, 1, 2, 4, 10, 11]}, "0.7": {**old, "seeds": [0, 10]}}
    (tmp_path / "frontier-seeds-b.json").write_text(json.dumps({"paired": new}))
    (tmp_path / "frontier-seeds-b.partial.json").write_text("{not json")  # an unfinished study is skipped
    text = "\n".join(_more_seeds_section(tmp_path))
    assert "| `frontier-seeds-b.json` | 0.5 | 6 (0–2, 4, 10–11) |" in text
    assert (
        "| `frontier-seeds-b.json` | 0.7 | 2 (0, 10) |" in text and "| `frontier-seeds.json` | 0.5 | 3 (0–2) |" in text
    )
    assert "+0.050 ± 0.100 (90 %: -0.030 to +0.130)" in text
    assert _seed_ranges([3]) == "3"


def test_the_seed_study_writes_pooled_pairs_and_its_run_record(tmp_path: Path, monkeypatch) -> None:
    import sadp_data.bench.frontier_levers as frontier_levers
    import sadp_data.bench.frontier_seeds as frontier_seeds

    part = "fashion-mnist/mlp"
    earlier = [
        _run(part, v, k, s, 0.89) for s in (0, 1) for v, k in (("full", 1.0), ("sadp", 0.5), ("epsilon_greedy", 0.5))
    ]
    earlier.append(_run(part, "sadp", 0.5, 2, 0.5))  # a seed the new study reruns: its new run wins
    (tmp_path / "earlier.json").write_text(json.dumps({"runs": earlier}))
    asked = []

    def fake_bench(config, show_progress, partial_json):
        (study,) = config.parts
        asked.append((study.seeds, study.keep_ratios))
        runs = [_run(part, "full", 1.0, s, 0.89) for s in study.seeds]
        runs += [_run(part, "epsilon_greedy", 0.5, s, 0.89) for s in study.seeds]
        runs += [_run(part, "sadp", 0.5, s, 0.891) for s in study.seeds]
        return {"runs": runs}

    monkeypatch.setattr(frontier_levers, "run_frontier_bench", fake_bench)
    out = tmp_path / "seeds.json"
    assert frontier_seeds.main([str(out), str(tmp_path / "earlier.json"), "--seeds", "2-3", "--keep", "0.5"]) == 0
    result = json.loads(out.read_text())
    assert asked == [((2, 3), (0.5,))]
    cell = result["paired"]["0.5"]
    assert cell["seeds"] == [0, 1, 2, 3] and cell["sadp_minus_epsilon_greedy"]["per_seed"] == pytest.approx(
        [0, 0, 0.1, 0.1]
    )
    assert result["run"]["command"].endswith("--seeds 2-3 --keep 0.5") and result["run"]["machine"]["cpu_count"] >= 1
    with pytest.raises(SystemExit):
        frontier_seeds.main([str(out), str(tmp_path / "missing.json")])


def test_the_score_study_pairs_each_score_with_full_data_per_seed_and_keep_ratio() -> None:
    from sadp_data.bench.frontier_score import LABELS, paired_scores, score_config

    part = "fashion-mnist/conv"
    runs = []
    for seed in range(5):
        runs.append(_run(part, "full", 1.0, seed, 0.850))
        for keep, gain in ((0.5, 0.002), (0.7, -0.001)):
            runs.append(_run(part, LABELS["spike_aware"], keep, seed, 0.845) | {"train_time_s": 10.0})
            runs.append(
                _run(part, LABELS["full_gradient"], keep, seed, 0.845 + gain + 0.0001 * seed) | {"train_time_s": 12.0}
            )
    runs.append(_run(part, LABELS["full_gradient"], 0.5, 9, 0.99))  # no full run on seed 9: never paired
    paired = paired_scores(runs)
    assert set(paired) == {f"{part}@0.5", f"{part}@0.7"}
    cell = paired[f"{part}@0.5"]
    assert cell["seeds"] == [0, 1, 2, 3, 4]
    assert cell["full_gradient_minus_spike_aware"]["mean"] == pytest.approx(0.22)
    assert cell["spike_aware_minus_full"]["mean"] == pytest.approx(-0.5)
    assert cell["full_gradient_train_time_s"] == 12.0 and len(cell["spike_aware_examples_processed"]) == 1
    assert paired[f"{part}@0.7"]["full_gradient_minus_full"]["mean"] == pytest.approx(-0.58)
    one_seed = paired_scores([run for run in runs if run["seed"] == 0])[f"{part}@0.5"]
    assert one_seed["full_gradient_minus_spike_aware"]["ci95_half_width"] is None  # no interval from one seed
    conv, mlp = score_config((0, 1)).parts
    assert [spec.score for spec, _ in conv.specs(1)] == [None, "spike_aware", "spike_aware"] + ["full_gradient"] * 2
    assert mlp.config.train_size == 60000 and conv.config.train_size == 6000
