"""Fault tolerance: a training run killed with SIGKILL mid-epoch resumes exactly where it stopped."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sadp_data as sd
from sadp_data.cli import main

WORKER = Path(__file__).parent / "workers" / "resume_train.py"
TIMEOUT_S = 180
STEPS_BEFORE_KILL = 30 + 7  # the 30 warm-up steps, then 7 of the 15 steps of the first pruned epoch


def _run(workdir: Path, mode: str, pause: float = 0.0) -> subprocess.Popen:
    shards = (workdir / "shards.url").read_text() if (workdir / "shards.url").exists() else None
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), mode, str(pause), *([shards] if shards else [])],
        env={**os.environ, "OMP_NUM_THREADS": "1", "SADP_CACHE": str(workdir / "cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """nginx serving a folder on 127.0.0.1: ``(folder, base URL)``."""
    from sadp_data.bench.servers import NginxServer

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed")
    folder = tmp_path_factory.mktemp("served")
    with NginxServer(folder, nginx=nginx) as server:
        yield folder, server.url


def _fresh(workdir: Path, source: str, served: tuple[Path, str] | None) -> Path:
    """A run folder: its own sidecar, and for ``shards``/``http`` the examples converted to scored shards
    (local, or under nginx's folder and read by URL) whose address ``_run`` passes to the worker."""
    workdir.mkdir()
    if source == "tensors":
        sd.ScoreStore.create(workdir / "scores.zarr", 480).close()
        return workdir
    x, y = runpy.run_path(str(WORKER))["examples"]()  # the worker's own examples
    np.savez(workdir / "data.npz", x=x, y=y)
    out = workdir / "shards" if source == "shards" else served[0] / workdir.name
    assert main(["convert", str(workdir / "data.npz"), str(out), "--shard-size", "64", "--no-progress"]) == 0
    (workdir / "shards.url").write_text(str(out) if source == "shards" else f"{served[1]}/{workdir.name}")
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tensors", "shards", "http"])
def test_sigkill_mid_epoch_then_resume_continues_the_identical_order(tmp_path: Path, source: str, request) -> None:
    """Through ``wrap`` over tensors, and through ``ScoredShards`` with 2 DataLoader workers over a local
    folder and over nginx: a SIGKILL mid-epoch, then a resume from the last checkpoint, delivers the
    uninterrupted run's order exactly."""
    served = request.getfixturevalue("served") if source == "http" else None
    reference = _fresh(tmp_path / f"{source}-uninterrupted", source, served)
    _finish(_run(reference, "run"))
    expected = json.loads((reference / "final.json").read_text())

    workdir = _fresh(tmp_path / f"{source}-killed", source, served)
    victim = _run(workdir, "run", pause=0.05)
    deadline = time.monotonic() + TIMEOUT_S
    progress = workdir / "progress"
    while not (progress.exists() and len(progress.read_text().splitlines()) >= STEPS_BEFORE_KILL):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT_S)
    assert victim.returncode == -signal.SIGKILL

    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=False)
    assert checkpoint["loader"]["epoch"] == 1 and 0 < checkpoint["loader"]["position"] < 240  # mid-epoch
    if source != "tensors":
        assert checkpoint["loader"]["num_workers"] == 2 and all(checkpoint["loader"]["worker_positions"])
    with sd.ScoreStore.open(_sidecar(workdir), "r") as store:  # opens cleanly after the kill
        assert store.version >= checkpoint["store_version"]  # nothing flushed before the checkpoint is lost
        assert store.saved_snapshot() is not None
        assert (store.seen() > 0).all()  # the warm-up epoch scored everything

    _finish(_run(workdir, "resume"))
    resumed = json.loads((workdir / "final.json").read_text())
    assert resumed[: len(checkpoint["delivered"])] == checkpoint["delivered"]
    assert resumed == expected  # the remaining order, and every later epoch, as if never interrupted
    assert len(expected) == 480 + 240 + 240 + 480


def _sidecar(workdir: Path) -> Path:
    if not (workdir / "shards.url").exists():
        return workdir / "scores.zarr"
    from sadp_data.shards import ShardIndex

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SADP_CACHE", str(workdir / "cache"))
        return ShardIndex.load((workdir / "shards.url").read_text()).sidecar_path()


def test_writer_failure_reaches_the_training_loop(tmp_path: Path) -> None:
    """A sidecar that becomes unwritable (here: a file where a chunk directory must go) raises in training."""
    store = sd.ScoreStore.create(tmp_path / "s.zarr", 100, flush_interval=0.01)
    blocker = tmp_path / "s.zarr" / "score" / "c"
    if blocker.exists():
        import shutil

        shutil.rmtree(blocker)
    blocker.write_text("not a directory")
    model = torch.nn.Linear(4, 3)
    scorer = sd.SpikeAwareScorer(model, store)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(sd.ScoreStoreError, match=r"writing scores to .*s\.zarr failed"):
        for _ in range(200):
            out = model(x)
            scorer.step(torch.arange(8), out, y, torch.nn.functional.cross_entropy(out, y, reduction="none"))
            time.sleep(0.01)
    np.testing.assert_array_equal(store.scores()[:8] > 0, True)


# -- saved sampler states: fingerprint, format version, validated fields -------------------------------


@pytest.fixture
def scored(tmp_path: Path):
    """``scored(name, fingerprint)``: a 200-example store with scores (closed after the test)."""
    stores: list[sd.ScoreStore] = []

    def make(name: str, fingerprint: str | None = None) -> sd.ScoreStore:
        store = sd.ScoreStore.create(tmp_path / f"{name}.zarr", 200, fingerprint=fingerprint)
        store.update(np.arange(200), np.random.default_rng(len(stores)).random(200) + 0.05)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _sampler(store: sd.ScoreStore, keep_ratio: float = 0.5) -> sd.SADPSampler:
    return sd.SADPSampler(store, keep_ratio=keep_ratio, epochs=4, seed=3)


def _mid_epoch_state(store: sd.ScoreStore, keep_ratio: float = 0.5) -> dict:
    sampler = _sampler(store, keep_ratio)
    sampler.set_epoch(1)
    iterator = iter(sampler)
    for _ in range(10):
        next(iterator)
    return sampler.state_dict()


def test_a_state_saved_over_another_dataset_of_the_same_size_is_refused_naming_both_fingerprints(scored) -> None:
    from sadp_data import resume

    state = _mid_epoch_state(scored("a", "fp-aaaa"))
    assert state["format_version"] == resume.STATE_FORMAT and state["fingerprint"] == "fp-aaaa"
    with pytest.raises(resume.ResumeStateError, match=r"'fp-aaaa'.*'fp-bbbb'"):
        _sampler(scored("b", "fp-bbbb")).load_state_dict(state)
    same = _sampler(scored("a-again", "fp-aaaa"))  # the same data, another copy of its sidecar
    same.load_state_dict(state)
    assert same.resume_position == 10


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_replicas", 0, "an integer >= 1"),
        ("position", "3", "an integer >= 0"),
        ("epoch", -1, "an integer >= 0"),
        ("epoch", 2.0, "an integer"),
        ("seed", None, "an integer"),
        ("snapshot_version", "7", "an integer >= 0 or None"),
        ("resumed_from", [0, 4], "resumed_from"),
        ("resumed_from", 4, "a pair"),
        ("plan_settings", [["keep_ratio", 0.5]], "a dict"),
        ("method", 3, "a method name"),
        ("fingerprint", 12, "a string or None"),
        ("format_version", 99, "format version"),
    ],
)
def test_a_malformed_state_field_is_refused_naming_the_key_the_value_and_what_was_expected(
    scored, key: str, value, expected: str
) -> None:
    from sadp_data import resume

    store = scored("a")
    state = {**_mid_epoch_state(store), key: value}
    with pytest.raises(resume.ResumeStateError, match=f"'{key}'") as raised:
        _sampler(store).load_state_dict(state)
    assert repr(value) in str(raised.value) and expected in str(raised.value)


def test_a_state_missing_a_key_or_not_a_dict_is_refused_by_name(scored) -> None:
    from sadp_data import resume

    store = scored("a")
    state = _mid_epoch_state(store)
    missing = {name: value for name, value in state.items() if name != "epoch"}
    with pytest.raises(resume.ResumeStateError, match="'epoch' is missing"):
        _sampler(store).load_state_dict(missing)
    with pytest.raises(resume.ResumeStateError, match=r"must be a dict.*got list"):
        _sampler(store).load_state_dict(list(state.items()))
    partial = {**state, "plan_settings": {"keep_ratio": 0.5}}
    with pytest.raises(resume.ResumeStateError, match=r"'plan_settings' lacks .*'epochs'"):
        _sampler(store).load_state_dict(partial)


def test_a_state_saved_before_plan_settings_were_recorded_is_refused_until_vouched_for(scored) -> None:
    """An older state (no format version, fingerprint or plan settings) could resume at another keep
    ratio: it is refused, saying what is missing; ``upgrade_state`` is the explicit opt-in."""
    from sadp_data import resume

    store = scored("a")
    legacy = _mid_epoch_state(store, keep_ratio=0.5)
    for name in ("format_version", "fingerprint", "plan_settings"):
        del legacy[name]
    with pytest.raises(resume.ResumeStateError, match=r"no 'plan_settings'.*upgrade_state"):
        _sampler(store, keep_ratio=0.7).load_state_dict(legacy)
    vouched = _sampler(store, keep_ratio=0.5)
    vouched.load_state_dict(resume.upgrade_state(legacy, vouched))
    assert vouched.resume_position == 10 and len(vouched) == vouched.epoch_length() - 10

    with_settings = {**legacy, "plan_settings": _sampler(store).state_dict()["plan_settings"]}
    resumed = _sampler(store)  # well-formed, and nothing to compare a fingerprint with: read as version 1
    resumed.load_state_dict(with_settings)
    assert resumed.resume_position == 10
    with pytest.raises(resume.ResumeStateError, match=r"no 'fingerprint'.*'fp-b'.*upgrade_state"):
        _sampler(scored("b", "fp-b")).load_state_dict(with_settings)


#: A mid-epoch state as every sadp-data since format version 1 saves it (JSON, as checkpoints keep it):
#: epoch 1 at position 10 of ``_sampler(scored("a", "fp-a"))``.
SAVED_STATE = json.loads(
    '{"format_version": 1, "fingerprint": "fp-a", "epoch": 1, "position": 10, "seed": 3, "num_examples": 200, '
    '"method": "sadp", "num_replicas": 1, "snapshot_version": 1, "resumed_from": null, "plan_settings": '
    '{"keep_ratio": 0.5, "epochs": 4, "warmup_epochs": 1, "anneal_fraction": 0.125, "schedule": "decreasing", '
    '"smoothing": 0.1, "method_options": {"gate": null, "normalize": false, "sharpness": 1.0, "staleness": 0.0, '
    '"target_ess": null, "weight_power": 0.0}, "shard_size": null, "window": null}}'
)


def test_a_saved_state_of_the_recorded_shape_resumes_and_the_sampler_still_saves_that_shape(scored) -> None:
    store = scored("a", "fp-a")
    resumed = _sampler(store)
    resumed.load_state_dict(SAVED_STATE)
    assert resumed.resume_position == 10 and len(resumed) == resumed.epoch_length() - 10
    assert json.loads(json.dumps(_mid_epoch_state(store))) == SAVED_STATE


def test_an_unversioned_state_without_plan_settings_loads_once_vouched_for(scored) -> None:
    """The oldest shape: no format version, fingerprint, plan settings, world size, snapshot or elastic
    record. Refused as it is; ``upgrade_state`` fills what it lacks from the sampler and it resumes."""
    from sadp_data import resume

    store = scored("a", "fp-a")
    newer = ("format_version", "fingerprint", "plan_settings", "num_replicas", "snapshot_version", "resumed_from")
    oldest = {key: value for key, value in SAVED_STATE.items() if key not in newer}
    with pytest.raises(resume.ResumeStateError, match=r"no 'fingerprint'.*upgrade_state"):
        _sampler(store).load_state_dict(oldest)
    sampler = _sampler(store)
    upgraded = resume.upgrade_state(oldest, sampler)
    assert upgraded["plan_settings"] == SAVED_STATE["plan_settings"] and upgraded["fingerprint"] == "fp-a"
    sampler.load_state_dict(upgraded)
    assert sampler.resume_position == 10


def test_plan_settings_are_one_frozen_value_that_the_state_carries_and_resume_compares(scored) -> None:
    import dataclasses

    from sadp_data.plan import PlanSettings

    store = scored("a")
    sampler = _sampler(store)
    settings = sampler.plan_settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.smoothing = 0.2  # type: ignore[misc]
    assert sampler.plan_settings is settings and settings == _sampler(store).plan_settings
    state = sampler.state_dict()
    assert state["plan_settings"] == settings.to_state() and sorted(state["plan_settings"]) == settings.state_keys()
    assert PlanSettings.from_state(200, 3, "sadp", state["plan_settings"]) == settings
    other = sd.SADPSampler(store, keep_ratio=0.5, epochs=4, seed=3, smoothing=0.2).plan_settings
    assert settings.differences(other) == [("smoothing", 0.1, 0.2)]


def test_a_state_with_a_plan_setting_no_sampler_can_have_is_refused_naming_it(scored) -> None:
    from sadp_data import resume

    store = scored("a")
    state = _mid_epoch_state(store)
    for bad in ({"keep_ratio": 2.0}, {"epochs": "four"}, {"method_options": [1]}):
        with pytest.raises(resume.ResumeStateError, match=r"'plan_settings'.*settings a sampler can have"):
            _sampler(store).load_state_dict({**state, "plan_settings": {**state["plan_settings"], **bad}})
