"""Scored shards on object storage and over HTTP, against real servers on 127.0.0.1 (``sadp_data/bench/servers.py``).

moto's standalone S3 server and nginx (with a counting proxy in front where bytes are counted): every
kept sample arrives exactly once per epoch and equals the source; pruned samples' bytes are not
fetched; a replaced object is refused; a server failure mid-epoch raises ``ShardError`` naming the
shard after the bounded retries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytest.importorskip("aiohttp")

from sadp_data.adapters.webdataset import ScoredShards
from sadp_data.bench.latency_proxy import LatencyProxy
from sadp_data.bench.servers import NginxServer, S3Server
from sadp_data.cli import main
from sadp_data.remote.fetch import FetchOptions
from sadp_data.shards import ShardError, ShardIndex
from sadp_data.shards.indexing import index_shards
from sadp_data.shards.publish import publish_shards
from sadp_data.sources import open_source

pytestmark = pytest.mark.remote

N, SHARD = 240, 40
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SADP_CACHE", str(tmp_path / "cache"))  # remote datasets' sidecars


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """N examples of 4 KiB (x: 64×64 uint8), as an .npz source."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (N, 64, 64), dtype=np.uint8)
    y = rng.integers(0, 10, N)
    path = tmp_path_factory.mktemp("source") / "data.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture
def bucket(s3, request):
    name = "b" + str(abs(hash(request.node.name)) % 10**8)
    s3.create_bucket(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def served(data, tmp_path_factory):
    """A scored-shards folder converted locally and served by nginx: ``(folder, server)``."""
    folder = tmp_path_factory.mktemp("served") / "shards"
    assert main(["convert", str(data[0]), str(folder), "--shard-size", str(SHARD), "--no-progress"]) == 0
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed")
    with NginxServer(folder.parent, nginx=NGINX) as server:
        yield folder, server


def _epoch(url, keep, epoch=1, workers=0, options=None, fetch=None, **loader):
    sampler = ScoredShards.sampler_for(
        url, storage_options=options, keep_ratio=keep, epochs=4, warmup_epochs=0, seed=5, schedule="constant"
    )
    sampler.set_epoch(epoch)
    dataset = ScoredShards(url, sampler, storage_options=options, fetch=fetch)
    try:
        batches = list(dataset.decode().to_tuple("x.npy", "y.cls").loader(16, num_workers=workers, **loader))
    finally:
        sampler.store.close()
    return sampler, dataset, batches


def _check_epoch(sampler, batches, x, y):
    """Every planned example exactly once, with the source's bytes."""
    indices = torch.cat([b[2] for b in batches]).numpy()
    planned = sampler.plan.order
    assert sorted(indices.tolist()) == sorted(planned.tolist()) and len(set(indices.tolist())) == len(planned)
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x[indices])
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), y[indices])


@pytest.mark.parametrize(
    ("workers", "client", "adaptive"),
    [(0, "fsspec", False), (2, "fsspec", False), (2, "obstore", False), (2, "fsspec", True)],
)
@pytest.mark.slow
def test_s3_convert_then_read_every_kept_sample_once(s3, bucket, data, workers, client, adaptive):
    """With obstore in forked workers: this must run before any test reads through obstore in this
    process (obstore is not fork-safe, see the last test). ``adaptive``: reads planned from the
    measured request costs (``FetchOptions(adaptive=True)``) deliver the same samples."""
    path, x, y = data
    url = f"{bucket}/fm"
    options = s3.storage_options()
    index = publish_shards(open_source(str(path)), url, shard_size=SHARD, progress=False, storage_options=options)
    assert all(entry.get("etag") for entry in index.shards)  # pinned to the objects as uploaded
    for keep in (1.0, 0.5):
        fetch = FetchOptions(client=client, adaptive=adaptive)
        sampler, _, batches = _epoch(url, keep, workers=workers, options=options, fetch=fetch)
        _check_epoch(sampler, batches, x, y)
    local = ShardIndex.load(url, storage_options=options)
    assert local.fingerprint == index.fingerprint and local.sidecar_path().is_dir()
    if (
        workers and client == "fsspec" and not adaptive
    ):  # shards built in parallel processes, then uploaded: the serial bytes
        again = publish_shards(
            open_source(str(path)), f"{bucket}/parallel", shard_size=SHARD, progress=False,
            storage_options=options, workers=2,
        )  # fmt: skip
        assert again.fingerprint == index.fingerprint


@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_pruned_bytes_are_not_fetched_over_http(served, data, client):
    folder, server = served
    _, x, y = data
    with LatencyProxy(server.url) as proxy:
        url = f"{proxy.url}/{folder.name}"
        fetch = FetchOptions(gap_bytes=0, whole_shard_fraction=2.0, client=client)
        sampler, dataset, batches = _epoch(url, 0.5, fetch=fetch)
        _check_epoch(sampler, batches, x, y)
        shard_requests = [r for r in proxy.request_log() if r["path"].endswith(".tar") and r["method"] == "GET"]
    index = dataset.index
    planned = int(index.offsets[sampler.plan.order, 2].sum())
    fetched = sum(r["bytes_sent"] for r in shard_requests)
    total = sum(entry["bytes"] for entry in index.shards)
    assert fetched == planned and fetched < 0.6 * total  # exactly the planned samples' bytes, counted at the server
    assert all(r["range"] for r in shard_requests) and len(shard_requests) == dataset.fetch_stats.requests


def test_a_loaded_index_is_read_once_for_sampler_and_dataset(served, data):
    folder, server = served
    _, x, y = data
    with LatencyProxy(server.url) as proxy:
        url = f"{proxy.url}/{folder.name}"
        index = ShardIndex.load(url)
        sampler = ScoredShards.sampler_for(index, keep_ratio=0.5, epochs=4, warmup_epochs=0, seed=5)
        sampler.set_epoch(1)
        dataset = ScoredShards(index, sampler).decode().to_tuple("x.npy", "y.cls")
        _check_epoch(sampler, list(dataset.loader(16)), x, y)
        sampler.store.close()
        index_reads = [r for r in proxy.request_log() if r["path"].endswith("/index.json")]
    assert len(index_reads) == 1 and dataset.index is index


def test_whole_shard_fallback_and_coalescing_trade_requests_for_bytes(served, data):
    folder, server = served
    with LatencyProxy(server.url) as proxy:
        url = f"{proxy.url}/{folder.name}"
        _epoch(url, 0.5, fetch=FetchOptions(gap_bytes=0, whole_shard_fraction=2.0))
        exact = proxy.stats()
        proxy.reset()
        _epoch(url, 0.5, fetch=FetchOptions(gap_bytes=1 << 20, whole_shard_fraction=2.0))
        merged = proxy.stats()
        proxy.reset()
        _epoch(url, 0.9, fetch=FetchOptions(whole_shard_fraction=0.8))
        whole = [r for r in proxy.request_log() if r["path"].endswith(".tar") and r["method"] == "GET"]
    assert merged["requests"] < exact["requests"] and merged["bytes_sent"] > exact["bytes_sent"]
    shard_bytes = {e["url"]: e["bytes"] for e in ShardIndex.load(folder).shards}
    assert all(r["bytes_sent"] == shard_bytes[r["path"].rsplit("/", 1)[-1]] for r in whole)


def test_a_replaced_object_is_refused(s3, bucket, data):
    path, _, _ = data
    url, options = f"{bucket}/fm", s3.storage_options()
    index = publish_shards(open_source(str(path)), url, shard_size=SHARD, progress=False, storage_options=options)
    location = index.shard_location
    name = index.shards[1]["url"]
    original = bytearray(location.read_bytes(name))
    original[600] ^= 0xFF  # same size, different content
    location.fs.pipe_file(location.join(name), bytes(original))
    with pytest.raises(ShardError, match=f"{name} has ETag .* replaced"):
        ShardIndex.load(url, storage_options=options)


def test_a_changed_object_without_an_etag_fails_its_checksum(served, data, tmp_path):
    folder, _ = served
    copy = tmp_path / "www" / "copy"
    shutil.copytree(folder, copy)
    with NginxServer(copy.parent, nginx=NGINX) as other:
        index = json.loads((copy / "index.json").read_text())
        assert "etag" not in index["shards"][0]  # written locally: the crc32c of every sample is the pin
        shard = copy / index["shards"][0]["url"]
        raw = bytearray(shard.read_bytes())
        raw[700] ^= 0xFF
        shard.write_bytes(bytes(raw))
        with pytest.raises(ShardError, match=f"{shard.name}.*checksum mismatch"):
            _epoch(f"{other.url}/copy", 1.0)


@pytest.mark.parametrize("client", ["fsspec", "obstore"])
def test_a_server_failure_mid_epoch_names_the_shard(served, tmp_path, client):
    folder, _ = served
    copy = tmp_path / "www" / "copy"
    shutil.copytree(folder, copy)
    with NginxServer(copy.parent, nginx=NGINX) as other:
        url = f"{other.url}/copy"
        sampler = ScoredShards.sampler_for(url, keep_ratio=1.0, epochs=2, warmup_epochs=0, seed=1)
        dataset = ScoredShards(url, sampler, fetch=FetchOptions(readahead=0, client=client))
        later = ScoredShards(url, sampler, fetch=FetchOptions(readahead=0, client=client))
        once = ScoredShards(url, sampler, fetch=FetchOptions(readahead=0, retries=1, client=client))
        samples = iter(dataset)
        next(samples)
        for shard in copy.glob("*.tar"):
            shard.unlink()  # the objects vanish mid-epoch: 404, not retried
        with pytest.raises(ShardError, match=r"shard http://127\.0\.0\.1:\d+/copy/train-\d+\.tar"):
            list(samples)
        dataset = later
        other.stop()  # the server is gone: connection refused, retried, then named
        with pytest.raises(ShardError, match=r"train-\d+\.tar.*(after|at most) 3 attempts"):
            list(dataset)
        with pytest.raises(ShardError, match=r"(after|at most) 1 attempts"):  # FetchOptions.retries is the bound
            list(once)


def test_obstore_takes_the_s3_options_it_can_translate_and_names_the_rest(s3):
    from sadp_data.remote.obstore_reads import obstore_config, split_url

    settings = obstore_config("s3://bucket/prefix", s3.storage_options())
    assert settings["config"] == {
        "access_key_id": "testing", "secret_access_key": "testing", "endpoint": s3.endpoint_url,
        "region": "us-east-1", "virtual_hosted_style_request": False,
    }  # fmt: skip
    assert settings["client_options"] == {"allow_http": True}  # a plain-HTTP endpoint on 127.0.0.1
    assert obstore_config("https://host/data", {}) == {"config": {}, "client_options": {}}
    with pytest.raises(ValueError, match=r"\['profile'\].*client_options"):
        obstore_config("s3://bucket", {"profile": "dev"})
    with pytest.raises(ValueError, match=r"client_kwargs\.verify"):
        obstore_config("s3://bucket", {"client_kwargs": {"verify": False}})
    with pytest.raises(ValueError, match=r"FetchOptions\.client must be"):
        FetchOptions(client="boto3")
    with pytest.raises(ValueError, match=r"config_kwargs\.s3\.payload_signing_enabled"):
        obstore_config("s3://b", {"config_kwargs": {"s3": {"addressing_style": "path", "payload_signing_enabled": 1}}})
    assert split_url("gcs://bucket/a/b.tar") == ("gs://bucket", "a/b.tar")  # obstore's name for it
    with pytest.raises(ValueError, match="obstore reads"):
        split_url("ftp://host/x")


def test_index_remote_shards_in_place_and_stream_them(served, data, tmp_path):
    folder, server = served
    _, x, y = data
    out = tmp_path / "index"
    names = sorted(p.name for p in folder.glob("*.tar"))
    pattern = f"{server.url}/{folder.name}/train-{{000000..{len(names) - 1:06d}}}.tar"
    index = index_shards(pattern, out, progress=False)
    assert index.meta["shard_root"] == f"{server.url}/{folder.name}" and index.remote
    assert index.fingerprint == ShardIndex.load(folder).fingerprint  # the same shards: the same fingerprint
    assert all(entry.get("etag") for entry in index.shards)
    with pytest.raises(ShardError, match="trusted_roots"):  # a local index naming a host: the reader opts in
        ShardIndex.load(out)
    sampler, _, batches = _epoch(ShardIndex.load(out, trusted_roots=[server.url]), 0.5)
    _check_epoch(sampler, batches, x, y)


def test_convert_and_info_on_the_command_line(s3, bucket, data, capsys):
    path, _, _ = data
    url = f"{bucket}/cli"
    options = json.dumps(s3.storage_options())
    command = ["convert", str(path), url, "--shard-size", str(SHARD), "--no-progress", "--storage-options", options]
    assert main(command) == 0
    assert url in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(command)
    assert "--overwrite" in capsys.readouterr().err
    assert main([*command[:-2], "--shard-size", "100", "--overwrite", "--storage-options", options]) == 0
    index = ShardIndex.load(url, storage_options=json.loads(options))
    assert len(index.shards) == 3 and sorted(index.shard_location.fs.ls(url.removeprefix("s3://"))) == sorted(
        f"{url.removeprefix('s3://')}/{name}"
        for name in ["index.json", "offsets.npy", "train.wids.json"] + [e["url"] for e in index.shards]
    )  # the old conversion's extra shards are gone
    assert main(["info", url, "--verify", "--storage-options", options]) == 0
    assert "all 3 shards match" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["info", url, "--storage-options", "[1]"])
    assert "--storage-options must be a JSON object" in capsys.readouterr().err


def test_obstore_in_a_process_forked_after_the_parent_used_it_fails_fast(served, data):
    """obstore is not fork-safe: DataLoader workers forked after the main process read through it raise
    at once (instead of hanging). Last in this file: from here on this process has used obstore."""
    folder, server = served
    _, x, y = data
    url = f"{server.url}/{folder.name}"
    sampler, _, batches = _epoch(url, 0.5, fetch=FetchOptions(client="obstore"))  # in this process
    _check_epoch(sampler, batches, x, y)
    with pytest.raises(RuntimeError, match=r"forked from process \d+ after it read through obstore"):
        _epoch(url, 0.5, workers=2, fetch=FetchOptions(client="obstore"))
