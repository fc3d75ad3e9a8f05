"""A wrong address fails fast: a wrong endpoint, a missing bucket or object, missing or refused credentials end
``in21k train`` (and ``prepare``) within 10 s with one ``error:`` line naming the URL and the cause, on ``s3://``,
``gs://`` and ``http://``, against the real local servers (a closed port for the wrong endpoint). Transient
failures after a first successful read keep their retries: tests/loaders/test_loader_faults.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from in21k import storage
from tests.http_static import static_server
from tests.loaders.loader_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.gcs]

# Nothing from this machine's own cloud setup: no credentials unless a case gives them, no instance metadata.
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_EMULATOR_HOST", "GOOGLE_"))}
CLEAN.update(
    AWS_EC2_METADATA_DISABLED="true",
    AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    AWS_CONFIG_FILE="/nonexistent",
    AWS_DEFAULT_REGION="us-east-1",
)


def _command(args: list[str], env: dict[str, str], out: Path) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "in21k", *args, "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    return done.returncode, done.stderr, time.monotonic() - start


def test_wrong_addresses_fail_within_seconds_with_one_line(s3_server, gcs_server, tmp_path: Path) -> None:
    s3_bucket = s3_server.make_bucket("in21k-access")
    gs_bucket = gcs_server.make_bucket("in21k-access")
    closed = f"http://127.0.0.1:{free_port()}"
    s3 = {**CLEAN, **s3_server.env}
    gs = {**CLEAN, **gcs_server.env}
    with static_server(tmp_path) as http:
        # (case, command line, environment, what the one line must say)
        cases = [
            (
                "s3 endpoint",
                ["train", "--data", f"s3://{s3_bucket}/x"],
                {**s3, "AWS_ENDPOINT_URL": closed, "AWS_ENDPOINT_URL_S3": closed},
                ["connection refused", closed],
            ),
            (
                "s3 bucket",
                ["train", "--data", "s3://in21k-no-such-bucket/x"],
                s3,
                ["bucket 'in21k-no-such-bucket' does not exist"],
            ),
            ("s3 object", ["train", "--data", f"s3://{s3_bucket}/nothing"], s3, ["is not a prepared dataset"]),
            (
                "s3 no credentials",
                ["train", "--data", f"s3://{s3_bucket}/x"],
                {k: v for k, v in s3.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                ["no credentials were found", "AWS_ACCESS_KEY_ID"],
            ),
            (
                "s3 refused credentials",
                ["train", "--data", f"s3://{s3_bucket}/x"],
                {**s3, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
                ["credentials were refused"],
            ),
            ("s3 output bucket", ["prepare", "--raw", str(tmp_path)], s3, []),
            (
                "gs endpoint",
                ["train", "--data", f"gs://{gs_bucket}/x"],
                {**gs, "STORAGE_EMULATOR_HOST": closed},
                ["connection refused", closed],
            ),
            (
                "gs bucket",
                ["train", "--data", "gs://in21k-no-such-bucket/x"],
                gs,
                ["bucket 'in21k-no-such-bucket' does not exist"],
            ),
            ("gs object", ["train", "--data", f"gs://{gs_bucket}/nothing"], gs, ["is not a prepared dataset"]),
            ("http endpoint", ["train", "--data", f"{closed}/x"], CLEAN, ["connection refused"]),
            ("http object", ["train", "--data", f"{http}/nothing"], CLEAN, ["is not a prepared dataset"]),
        ]
        outs = {name: (tmp_path / name.replace(" ", "-")) for name, *_ in cases}
        outs["s3 output bucket"] = "s3://in21k-no-such-out-bucket/o"  # type: ignore[assignment]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: _command(c[1], c[2], outs[c[0]]), cases))
    for (name, args, _, says), (status, stderr, seconds) in zip(cases, results, strict=True):
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, f"{name}: {stderr[-3000:]}"
        line = errors[0]
        assert line.startswith(f"in21k {args[0]}: error: "), name
        url = args[2] if name != "s3 output bucket" else outs[name]
        assert str(url) in line, f"{name}: the line names {url}: {line}"
        for text in says or ["bucket 'in21k-no-such-out-bucket' does not exist"]:
            assert text in line, f"{name}: {line}"
        assert seconds <= 10, f"{name} took {seconds:.1f} s"


def test_classify_reads_each_cause_once(s3_server, tmp_path: Path) -> None:
    """The same classification inside a read: an address that answered before, then misses an object."""
    bucket = s3_server.make_bucket("in21k-access-read")
    options = s3_server.storage_options
    storage.check_access(f"s3://{bucket}/", options, what="folder")  # answers: the bucket is there
    with pytest.raises(storage.NotFoundError, match=rf"s3://{bucket}/gone: no such object"):
        storage.read_bytes(f"s3://{bucket}/gone", storage_options=options)
    with pytest.raises(storage.AccessError, match="does not exist"):
        storage.check_access("s3://in21k-no-such-bucket/x", options)


def test_a_library_error_past_the_check_is_one_line_too() -> None:
    """Credentials that vanish mid-run reach the read itself: botocore's error becomes the same one line."""
    from botocore.exceptions import NoCredentialsError

    def open_object(fresh: bool) -> None:
        raise NoCredentialsError()

    with pytest.raises(storage.AccessError, match=r"^s3://b/k: no credentials were found .*AWS_ACCESS_KEY_ID"):
        storage.ResilientStream("s3://b/k", open_object, retry=storage.Retry(attempts=3, base_delay=0.01))
