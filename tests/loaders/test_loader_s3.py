"""Streaming from a real S3-compatible server (SeaweedFS on 127.0.0.1) gives the samples of local disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from in21k.errors import DataError
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

    # Credentials and endpoint as explicit storage options ...
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
    loader = create_loader(data=f"s3://{bucket}/p", split="validation", batch_size=2, num_workers=0,
                           storage_options=s3_server.storage_options)  # fmt: skip
    with pytest.raises(DataError, match=f"cannot read shard s3://{bucket}/p/validation/in21k-validation-000001.tar"):
        list(loader)
