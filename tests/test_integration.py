"""The whole path on real data: Fashion-MNIST -> wrap -> SNN -> scorer -> Zarr sidecar -> next epoch's plan."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import sadp_data as sd
from sadp_data.sources.datasets import FashionMNIST, default_data_dir, load_idx

pytest.importorskip("spikingjelly.activation_based")
from sadp_data.adapters.spikingjelly import ConvSNN, reset


@pytest.mark.slow
def test_train_a_tiny_snn_through_the_whole_path(tmp_path: Path) -> None:
    train = FashionMNIST(split="train", limit=192)
    torch.manual_seed(0)
    model = ConvSNN(channels=(4, 8), time_steps=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = tmp_path / "scores.zarr"
    store = sd.ScoreStore.create(path, len(train), fingerprint=sd.dataset_fingerprint(train))
    sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=3, batch_size=32, seed=0, anneal_fraction=1 / 3)
    loader = sd.wrap(DataLoader(train, batch_size=32, num_workers=1), sampler)
    scorer = sd.SpikeAwareScorer(model, store)
    delivered = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epoch_indices = []
        for x, y, idx, w in loader:
            out = model(x)
            loss = scorer.step(idx, out, y, F.cross_entropy(out, y, reduction="none"), w)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            reset(model)
            epoch_indices.append(idx)
        delivered.append(torch.cat(epoch_indices).numpy())
    assert [len(d) for d in delivered] == [192, 96, 192]  # warm-up, pruned, anneal
    assert sampler.plan.snapshot_version > 0
    store.close()
    reopened = sd.ScoreStore.open(path, "r", num_examples=192, fingerprint=sd.dataset_fingerprint(train))
    expected_seen = np.bincount(np.concatenate(delivered), minlength=192)
    np.testing.assert_array_equal(reopened.seen(), expected_seen)
    assert np.all(reopened.scores() > 0)
    np.testing.assert_array_equal(np.unique(reopened.last_epoch()), [2])


def test_shipped_fashion_mnist_is_intact() -> None:
    labels = load_idx(default_data_dir() / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10
    images = load_idx(default_data_dir() / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and abs(images.mean() - 73.15) < 0.01


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(ValueError, match="bad-idx1-ubyte: expected 13 bytes"):
        load_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(bad)
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte"):
        FashionMNIST(tmp_path)


@pytest.mark.slow
def test_demo_writes_the_documented_json(tmp_path: Path, capsys) -> None:
    from sadp_data.cli import main

    out = tmp_path / "out.json"
    plot = tmp_path / "plot.png"
    argv = [
        "demo",
        "--quick",
        "--train-size",
        "256",
        "--epochs",
        "3",
        "--no-progress",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"full", "random", "sadp"}
    for figures in result["methods"].values():
        assert 0.0 <= figures["test_accuracy"] <= 1.0
        assert figures["train_time_s"] > 0 and figures["speedup"] > 0
        assert len(figures["accuracy_per_epoch"]) == 3
        assert figures["accuracy_per_epoch"][-1] == figures["test_accuracy"]  # the plot's last point is the table's
    assert result["methods"]["sadp"]["theoretical_speedup"] == pytest.approx(3 / 2.7)  # warm-up, 0.7, anneal
    assert result["scored_examples"] == 256
    assert plot.stat().st_size > 1000
    run = result["run"]  # the bench suites' run record
    assert set(run) >= {"command", "suite", "quick", "started", "wall_s", "load_average", "machine"}
    assert run["command"].startswith("sadp-data demo --quick") and run["suite"] == "demo" and run["quick"] is True
    assert run["wall_s"] > 0 and run["machine"]["cpus_usable"] >= 1
    assert len(result["load_per_epoch"]) == 3 and isinstance(result["timings_distorted"], bool)
    sadp, full = result["methods"]["sadp"], result["methods"]["full"]
    conclusion = result["conclusion"]
    assert conclusion.startswith(
        f"SADP: {100 * sadp['test_accuracy']:.2f} % vs full {100 * full['test_accuracy']:.2f} %"
    )
    assert f"at {sadp['train_time_s'] / full['train_time_s']:.2f}x" in conclusion and "random" in conclusion
    assert conclusion in printed.splitlines()


def test_the_demo_says_when_load_distorted_its_timings() -> None:
    from sadp_data.bench.demo import load_warning

    assert load_warning([1.2, 1.9, 2.0], cpus=2) is None
    warning = load_warning([2.5, 4.1, 3.9], cpus=2)
    assert warning is not None and "distorted" in warning and "3.5" in warning and "2 " in warning


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys) -> None:
    from sadp_data.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--no-progress", "--data", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "missing train-images-idx3-ubyte" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_kernels_writes_the_documented_json(tmp_path: Path) -> None:
    from sadp_data.bench.kernels import run_kernel_bench

    result = run_kernel_bench(sizes=(2000,), backends=("numba",), progress=False)
    assert [(r["n"], r["backend"]) for r in result["results"]] == [(2000, "numba")]
    assert {b["name"] for b in result["baselines"]} == {"torch.randperm", "numpy.choice", "torch.multinomial"}
    row = result["results"][0]
    assert row["plan_epoch_s"] > 0 and row["peak_rss_mb"] > 0
    assert result["ratios"][0]["vs_randperm"] > 0 and result["ratios"][0]["choice_speedup"] > 0
