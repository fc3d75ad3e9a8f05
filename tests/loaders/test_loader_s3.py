"""Streaming from a real S3-compatible server (SeaweedFS on 127.0.0.1) gives the samples of local disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from in21k import storage
from in21k.errors import ConfigError, DataError
from in21k.loaders import create_loader
from tests.loaders.loader_helpers import batch_keys, key_by_digest


@pytest.mark.s3
def test_s3_gives_the_same_batches_as_local_disk(prepared: Path, s3_server) -> None:
    bucket = s3_server.make_bucket("in21k-loader-test")
    s3_server.upload_dir(prepared, bucket, prefix="prepared")
    url = f"s3://{bucket}/prepared"
    table = key_by_digest(prepared, "train")
    kw = dict(split="train", batch_size=4, num_workers=2, seed=11, decode="none", rank=1, world_size=2)
    local = create_loader(data=str(prepared), **kw)
    local.set_epoch(2)
    expected = batch_keys(local, table)

    # Credentials and endpoint as explicit storage options ... (streamed by pyarrow, shard after shard)
    assert storage.stream_client(f"{url}/train/x.tar", s3_server.storage_options) == "pyarrow"
    remote = create_loader(data=url, storage_options=s3_server.storage_options, **kw)
    remote.set_epoch(2)
    assert batch_keys(remote, table) == expected
    assert remote.epoch_stats()["shards_read"] == local.epoch_stats()["shards_read"]
    # ... and from the usual environment variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).
    with s3_server.activate():
        from_env = create_loader(data=url, **kw)
        from_env.set_epoch(2, start_step=2)
        assert batch_keys(from_env, table) == expected[2:]


@pytest.mark.s3
def test_missing_object_names_the_url(prepared: Path, s3_server) -> None:
    bucket = s3_server.make_bucket("in21k-loader-missing")
    s3_server.upload_dir(prepared, bucket, prefix="p")
    s3_server.client().delete_object(Bucket=bucket, Key="p/validation/in21k-validation-000001.tar")
    loader = create_loader(
        data=f"s3://{bucket}/p",
        split="validation",
        batch_size=2,
        num_workers=0,
        storage_options=s3_server.storage_options,
    )
    with pytest.raises(DataError, match=f"cannot read shard s3://{bucket}/p/validation/in21k-validation-000001.tar"):
        list(loader)


@pytest.mark.s3
def test_options_pyarrow_cannot_express_fall_back_to_s3fs(prepared: Path, s3_server) -> None:
    bucket = s3_server.make_bucket("in21k-loader-fallback")
    s3_server.upload_dir(prepared, bucket, prefix="p")
    url = f"s3://{bucket}/p"
    table = key_by_digest(prepared, "validation")
    kw = dict(split="validation", batch_size=2, num_workers=1, decode="none")
    expected = batch_keys(create_loader(data=str(prepared), **kw), table)
    options = {**s3_server.storage_options, "config_kwargs": {"max_pool_connections": 4}}  # a botocore option
    assert storage.stream_client(f"{url}/x.tar", options) == "fsspec"
    assert batch_keys(create_loader(data=url, storage_options=options, **kw), table) == expected
    # Asked for by name, a client that cannot express the options is an error that says what to do.
    with pytest.raises(ConfigError, match="config_kwargs have no pyarrow equivalent; use client 'fsspec'"):
        storage.stream_client(f"{url}/x.tar", options, "pyarrow")
    for client in ("fsspec", "pyarrow"):
        loader = create_loader(data=url, storage_options=s3_server.storage_options, read_client=client, **kw)
        assert batch_keys(loader, table) == expected


@pytest.mark.gcs
def test_gcs_emulator_through_pyarrow_gives_the_same_batches(prepared: Path, gcs_server) -> None:
    gcs_server.make_bucket("in21k-loader-gcs")
    url = "gs://in21k-loader-gcs/p"
    with gcs_server.activate():
        store = storage.Store(url)
        for path in sorted(p for p in prepared.rglob("*") if p.is_file()):
            store.write_bytes(path.relative_to(prepared).as_posix(), path.read_bytes())
        assert storage.stream_client(f"{url}/train/x.tar") == "pyarrow"
        table = key_by_digest(prepared, "train")
        kw = dict(split="train", batch_size=4, num_workers=2, seed=3, decode="none")
        remote = create_loader(data=url, **kw)
        assert batch_keys(remote, table) == batch_keys(create_loader(data=str(prepared), **kw), table)
        assert remote.epoch_stats()["shard_errors"] == 0


RELEASE_CHECK = """
import json, sys, weakref
from in21k import storage
bucket, options = sys.argv[1], json.loads(sys.argv[2])
store = storage.Store(f"s3://{bucket}/x", options)
store.write_json("a.json", {"a": 1})  # a request: the filesystem holds a live session on this process's loop
fs = weakref.ref(store.fs)
del store
print(fs() is not None)  # fsspec's instance cache keeps it
storage.release_filesystems()
print(fs() is None)
"""


@pytest.mark.s3
def test_filesystems_cached_before_the_workers_fork_are_closed_here(s3_server) -> None:
    """A forked loader worker empties fsspec's instance cache; a cached s3fs filesystem would then be finalised in
    the worker, on an event loop it does not run. ``release_filesystems`` (called before the workers fork) closes
    them in the process that made them. In a fresh process: what a long test session keeps alive (sessions of its
    earlier tests on fsspec's event loop) is not what this checks."""
    import json
    import subprocess
    import sys

    bucket = s3_server.make_bucket("in21k-release-test")
    args = [bucket, json.dumps(s3_server.storage_options)]
    done = subprocess.run([sys.executable, "-c", RELEASE_CHECK, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr[-3000:]
