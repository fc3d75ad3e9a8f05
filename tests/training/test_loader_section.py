"""Every loader option reaches the loader from ``in21k train``'s YAML (the ``loader:`` section) and flags.

The proof is behavioural: a dataset on a local S3 server whose credentials and endpoint are given *only* in
the YAML's ``loader.storage_options`` (the process has no AWS variables), with one train shard deleted.
With ``loader.shard_errors: skip`` in the same YAML the run trains and reports the skipped shard; with the
default (``raise``) the command ends with a one-line error naming the shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml

from in21k.config import resolve_config
from in21k.loaders.options import LoaderOptions
from in21k.training.config import TrainConfig
from tests.loaders.prepared_data import make_prepared_dataset

TRAIN = [
    "--model", "resnet10t",
    "--image-size", "32",
    "--epochs", "1",
    "--batch-size", "4",
    "--amp", "none",
    "--no-plot",
    "--run.log-every", "1",
]  # fmt: skip


def test_every_create_loader_option_has_a_key_in_the_section():
    import inspect

    from in21k.loaders import create_loader

    # What the trainer decides itself; everything else of create_loader is a LoaderOptions field.
    trainer_owned = {
        "data",
        "split",
        "batch_size",
        "options",
        "seed",
        "train",
        "image_size",
        "decode",
        "rank",
        "world_size",
        "option_overrides",
    }
    params = set(inspect.signature(create_loader).parameters) - trainer_owned
    fields = {f.name for f in dataclasses.fields(LoaderOptions)}
    assert params <= fields  # nothing is left unreachable
    # ... and every field can be set from YAML and from a flag, merging key by key.
    assert {"storage_options", "shard_errors", "corrupt", "timm_args", "num_workers"} <= fields


def test_yaml_section_and_flags_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": "d", "out": "o", "loader": {"shard_errors": "skip", "num_workers": 3}}))
    cfg = resolve_config(TrainConfig, config_file=path, overrides={"loader": {"num_workers": 1}})
    assert cfg.loader.shard_errors == "skip" and cfg.loader.num_workers == 1 and cfg.loader.corrupt == "skip"
    with pytest.raises(ValueError, match=r"section 'loader'.*'shard_error' \(did you mean 'shard_errors'\?\)"):
        resolve_config(TrainConfig, overrides={"data": "d", "out": "o", "loader": {"shard_error": "skip"}})
    with pytest.raises(ValueError, match="loader.shard_errors.*'maybe' is not one of"):
        resolve_config(TrainConfig, overrides={"data": "d", "out": "o", "loader": {"shard_errors": "maybe"}})


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "in21k", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.s3
@pytest.mark.slow
def test_storage_options_and_shard_errors_from_yaml(s3_server, tmp_path):
    local = make_prepared_dataset(
        tmp_path / "local",
        num_classes=4,
        shard_lengths_train=[8, 8, 8, 8],
        shard_lengths_val=[8],
        image_size=32,
        seed=3,
    )
    bucket = s3_server.make_bucket("in21k-loader-yaml")
    s3_server.upload_dir(local, bucket, "p")
    s3_server.client().delete_object(Bucket=bucket, Key="p/train/in21k-train-000002.tar")
    url = f"s3://{bucket}/p"
    # No AWS_* variables at all: the credentials and the endpoint can only come from the YAML.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    config = {"loader": {"storage_options": s3_server.storage_options, "shard_errors": "skip", "num_workers": 1}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))

    proc = run(
        ["train", "--data", url, "--out", str(tmp_path / "run"), "--config", str(tmp_path / "train.yaml"), *TRAIN], env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loader = next(r for r in records if r["kind"] == "loader")
    assert loader["shard_errors"] == 1 and loader["batches"] == 8  # 32 samples / 4, the missing 8 replaced
    assert "in21k-train-000002.tar" in (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["loader"]["shard_errors"] == "skip"

    # The same run with the default policy, the section's other keys given as flags instead of YAML.
    (tmp_path / "creds.yaml").write_text(yaml.safe_dump({"loader": {"storage_options": s3_server.storage_options}}))
    proc = run(
        [
            "train",
            "--data",
            url,
            "--out",
            str(tmp_path / "run2"),
            "--config",
            str(tmp_path / "creds.yaml"),
            "--loader.num-workers",
            "0",
            *TRAIN,
        ],
        env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("in21k train: error: cannot read shard") and "in21k-train-000002.tar" in error
    assert "Traceback" not in proc.stderr
