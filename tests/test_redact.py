"""No credential in anything in21k writes or prints (``in21k.redact``).

The unit tests pin what counts as a credential. The cross-stage test runs the commands a user types against the
local S3 server, with the secret given every way a user can (``--storage-options``, ``--loader.storage-options``,
a YAML ``--config``, the environment), plus a Ray auth token in ``RAY_AUTH_TOKEN``: prepare from S3 to S3, train
one epoch from it, then train on with ``--resume auto`` from the run's own saved (redacted) ``config.yaml`` and
credentials from the environment. Then it searches every file of the run folder and every object of the prepared
output (raw bytes, zip members, unpickled checkpoints, parquet rows) and everything the commands printed: neither
secret is anywhere.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from in21k.redact import REDACTED, RedactingFilter, redact, redact_url, remember, scrub_text, strip_redacted

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- what is a credential
def test_values_under_secret_keys_are_redacted_at_any_depth() -> None:
    options = {
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t-value",
        "anon": False,
        "token": None,
        "client_kwargs": {
            "endpoint_url": "http://127.0.0.1:9000",
            "aws_secret_access_key": "nested-secret",
            "region_name": "us-east-1",
        },
        "headers": [{"Authorization": "Bearer abcdef"}, {"Accept": "*/*"}],
        "config_kwargs": {"max_pool_connections": 4},
        "session_token": "tok-123456",
        "X-Amz-Signature": "sig-value",
    }
    out = redact({"loader": {"storage_options": options}, "lr": 0.1, "model": "resnet50"})
    so = out["loader"]["storage_options"]
    assert so["key"] == so["secret"] == so["session_token"] == so["X-Amz-Signature"] == REDACTED
    assert so["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "aws_secret_access_key": REDACTED,
        "region_name": "us-east-1",
    }
    assert so["headers"] == [{"Authorization": REDACTED}, {"Accept": "*/*"}]
    # How to authenticate is not a secret: flags, unset values, gcsfs's token modes.
    assert so["anon"] is False and so["token"] is None and so["config_kwargs"] == {"max_pool_connections": 4}
    assert redact({"token": "anon"}) == {"token": "anon"} and redact({"token": {"private_key": "x"}}) == {
        "token": REDACTED
    }
    assert out["lr"] == 0.1 and out["model"] == "resnet50"
    assert options["secret"] == "s3cr3t-value"  # a copy: the options in use are untouched


def test_credentials_inside_urls_are_redacted() -> None:
    assert redact_url("https://alice:pa55word@host.example/data") == f"https://alice:{REDACTED}@host.example/data"
    signed = "https://b.s3.amazonaws.com/k.tar?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc123&X-Amz-Expires=60"
    assert redact_url(signed) == (
        f"https://b.s3.amazonaws.com/k.tar?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&X-Amz-Expires=60"
    )
    assert redact_url("s3://bucket/prefix/file.tar") == "s3://bucket/prefix/file.tar"
    assert redact({"raw": "https://u:pw-secret@h/x"})["raw"] == f"https://u:{REDACTED}@h/x"
    assert scrub_text("cannot read https://u:pw-secret@h/x: 403") == f"cannot read https://u:{REDACTED}@h/x: 403"


def test_secret_values_of_the_environment_and_of_given_options_are_scrubbed_from_text(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-0123")
    creds = tmp_path / "sa.json"
    creds.write_text(json.dumps({"type": "service_account", "client_email": "a@b.c", "private_key": "PEM-KEY-xyz"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    remember({"client_kwargs": {"aws_session_token": "given-token-987"}, "region": "eu-west-1"})
    text = "failed with env-secret-0123, PEM-KEY-xyz and given-token-987 in eu-west-1 for a@b.c"
    assert scrub_text(text) == f"failed with {REDACTED}, {REDACTED} and {REDACTED} in eu-west-1 for a@b.c"
    assert redact(["x env-secret-0123 y"]) == [f"x {REDACTED} y"]


def test_the_log_filter_scrubs_messages_and_tracebacks(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-555")
    logger = logging.getLogger("in21k.test_redact")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("options %s", {"token": "session-token-555"})
        try:
            raise OSError("request with session-token-555 refused")
        except OSError:
            logger.exception("read failed")
    finally:
        logger.removeHandler(handler)
    assert "session-token-555" not in stream.getvalue() and f"options {{'token': '{REDACTED}'}}" in stream.getvalue()


def test_a_saved_config_read_again_leaves_the_redacted_entries_out(caplog) -> None:
    from in21k.loaders.options import LoaderOptions

    assert strip_redacted({"key": REDACTED, "client_kwargs": {"endpoint_url": "u", "secret": REDACTED}}) == (
        {"client_kwargs": {"endpoint_url": "u"}},
        ["key", "client_kwargs.secret"],
    )
    saved = {"key": REDACTED, "secret": REDACTED, "client_kwargs": {"endpoint_url": "u"}}
    options = LoaderOptions(storage_options=saved)
    with caplog.at_level(logging.WARNING):
        options.validate()
    assert options.storage_options == {"client_kwargs": {"endpoint_url": "u"}}
    assert "key, secret were redacted" in caplog.text


def test_print_config_shows_no_secret(capsys) -> None:
    from in21k.cli import main

    flags = ["--data", "d", "--out", "o", "--loader.storage-options", '{"key": "AK", "secret": "printed-secret"}']
    assert main(["train", *flags, "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["loader"]["storage_options"] == {"key": REDACTED, "secret": REDACTED}


# ----------------------------------------------------------------------------------------- the commands
def _files_text(data: bytes, name: str) -> list[bytes]:
    """``data`` and every decoded form of it the secret could hide in: zip members (checkpoints, model files),
    unpickled torch objects, gzip, parquet rows."""
    found = [data]
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            found += [z.read(member) for member in z.namelist()]
        if name.endswith((".pt", ".pth", "run")):
            found.append(repr(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)).encode())
    elif data[:2] == b"\x1f\x8b":
        found.append(gzip.decompress(data))
    elif data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        found.append(repr(pq.read_table(io.BytesIO(data)).to_pylist()).encode())
    return found


def _holders(blobs: dict[str, bytes], secrets: list[str]) -> list[tuple[str, str]]:
    """(name, secret) for every blob that holds one of ``secrets`` in any of its forms."""
    return [
        (name, secret)
        for name, data in blobs.items()
        for form in _files_text(data, name)
        for secret in secrets
        if secret.encode() in form
    ]


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_no_credential_in_anything_prepare_and_train_write(s3_server, tmp_path) -> None:
    from tests.pipeline.conftest import write_release

    bucket, ray_token = "credentials-test", "ray-token-" + "5" * 54
    secrets = [s3_server.secret, ray_token]
    options = s3_server.storage_options  # key, secret, client_kwargs.endpoint_url
    raw = tmp_path / "raw"
    write_release(raw)  # 6 classes of 12..30 members
    s3_server.make_bucket(bucket)
    for tar in sorted(raw.glob("n*.tar")):
        s3_server.client().upload_file(str(tar), bucket, f"raw/{tar.name}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_AUTH"))}
    run, inputs = tmp_path / "run", tmp_path / "inputs"  # inputs: the user's own files, which hold the secret
    inputs.mkdir()
    printed: dict[str, bytes] = {}

    def in21k(name: str, *args: str, env: dict[str, str]) -> str:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "in21k", *args], capture_output=True, env=env, timeout=300)
        print(f"in21k {name}: {time.monotonic() - started:.1f} s")
        printed[f"{name}: stdout"], printed[f"{name}: stderr"] = proc.stdout, proc.stderr
        assert proc.returncode == 0, f"in21k {name}\n{proc.stderr.decode(errors='replace')[-4000:]}"
        return proc.stderr.decode(errors="replace")

    data = f"s3://{bucket}/prepared"
    in21k(
        "prepare",
        "prepare",
        "--raw",
        f"s3://{bucket}/raw",
        "--out",
        data,
        "--storage-options",
        json.dumps(options),
        "--min-images",
        "17",
        "--val-per-class",
        "3",
        "--shard-size",
        "12",
        "--num-cpus",
        "1",
        "--no-progress",
        env={**clean, "RAY_AUTH_TOKEN": ray_token},
    )
    small = {
        "model": "resnet10t",
        "image_size": 32,
        "batch_size": 8,
        "amp": "none",
        "plot": False,
        "run": {"max_steps_per_epoch": 2, "val_max_batches": 1, "save_every": 1},
        "loader": {"num_workers": 0, "transform": "eval", "storage_options": options},
    }
    (inputs / "train.yaml").write_text(yaml.safe_dump(small))
    in21k(
        "train",
        "train",
        "--data",
        data,
        "--out",
        str(run),
        "--config",
        str(inputs / "train.yaml"),
        "--epochs",
        "1",
        "--loader.storage-options",
        json.dumps(options),
        env=clean,
    )
    redacted = {"key": REDACTED, "secret": REDACTED, "client_kwargs": options["client_kwargs"]}
    assert yaml.safe_load((run / "config.yaml").read_text())["loader"]["storage_options"] == redacted
    first_model = (run / "model.pt").read_bytes()  # the resumed run writes its own
    assert torch.load(run / "model.pt", weights_only=True)["config"]["loader"]["storage_options"] == redacted
    # Resumed from the run's own config.yaml: its credentials come from the environment, not from a checkpoint.
    log = in21k(
        "resume",
        "train",
        "--config",
        str(run / "config.yaml"),
        "--epochs",
        "2",
        "--resume",
        "auto",
        env={**clean, **s3_server.env},
    )
    assert "resumed from" in log and "key, secret were redacted" in log, log[-3000:]
    assert json.loads(printed["resume: stdout"].decode().strip().splitlines()[-1])["steps"] == 4

    written = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    written["model.pt of the first run"] = first_model
    client, prefix = s3_server.client(), "prepared/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            written[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    kinds = {
        "config.yaml",
        "model.pt",
        "metrics.jsonl",
        "logs/rank-0.log",
        "prepared/_info.json",
        "prepared/prepare_config.yaml",
        "prepared/report.json",
        "prepared/report.md",
        "prepared/_work/job.json",
        "prepared/imagenet21k_miil_tree.pth",
    }
    assert kinds <= set(written), sorted(kinds - set(written))
    assert any(n.startswith("checkpoints/ckpt-") for n in written) and any(n.endswith(".parquet") for n in written)
    # The search finds a secret where there is one: the user's own input file.
    assert _holders({"train.yaml": (inputs / "train.yaml").read_bytes()}, secrets) == [("train.yaml", secrets[0])]
    assert _holders(written, secrets) == [] and _holders(printed, secrets) == []
    assert yaml.safe_load(written["prepared/prepare_config.yaml"])["storage_options"] == redacted
    # The resumed run had no credential in its options: the environment's were used, and no placeholder is left.
    resumed = torch.load(run / "model.pt", weights_only=True)["config"]["loader"]["storage_options"]
    assert resumed == {"client_kwargs": options["client_kwargs"]}
