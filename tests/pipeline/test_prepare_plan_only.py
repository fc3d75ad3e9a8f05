"""``in21k prepare --plan-only``: the counts of a fall11-shaped release, and nothing written but ``_work/``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from in21k.pipeline import prepare
from tests.pipeline.conftest import prep_config, raw_arg

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def fall11_shaped(tmp_path_factory) -> tuple[Path, dict]:
    from in21k.synth.scale import write_fall11_scale

    raw = tmp_path_factory.mktemp("fall11-shape")
    return raw, write_fall11_scale(raw, members=20_000, seed=4)


def test_plan_only_counts_match_the_synth_report(fall11_shaped, ray_local, tmp_path, capsys) -> None:
    from in21k.cli import main

    raw, report = fall11_shaped
    expected = report["expected_prepare"]
    options = dict(min_images=expected["min_images"], val_per_class=expected["val_per_class"], shard_size=1000)
    out = tmp_path / "out"
    summary = prepare(prep_config(str(raw), out, plan_only=True, **options))
    kept = [c for c in report["classes"] if c["kept"]]
    assert summary["classes_seen"] == report["totals"]["classes"]
    assert summary["classes_kept"] == expected["classes_kept"] == len(kept)
    assert summary["dropped_classes_by_reason"] == {"too_few_images": expected["classes_dropped"]}
    assert summary["members"] == {
        "to_read": sum(c["members"] for c in kept),
        "dropped_class": expected["dropped_class_members"],
        "rejected_duplicate": 0,
    }
    assert summary["raw_members"] == report["totals"]["members"] and summary["to_read_not_readable_looking"] == 0
    assert summary["train_samples"] == expected["train_samples"]
    assert summary["validation_samples"] == expected["validation_samples"]
    assert summary["train_shards"] == 17 and summary["validation_shards"] == 1  # ceil(16,610 / 1000), ceil(800 / 1000)
    kept_bytes = 0
    for c in kept:
        with tarfile.open(raw / f"{c['wnid']}.tar") as tar:
            kept_bytes += sum(m.size for m in tar.getmembers())
    assert summary["bytes_to_read"] == kept_bytes
    # Nothing but _work/: no shard, no manifest, no dataset file, not even the job's options.
    assert [p.name for p in out.iterdir()] == ["_work"]
    work = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"_work/index.json", "_work/plan.json"} <= work
    assert all(w.startswith("_work/index/part-") for w in work - {"_work/index.json", "_work/plan.json"})
    assert json.loads((out / "_work" / "plan.json").read_text())["train_samples"] == expected["train_samples"]

    # The command prints the same plan, from the cached index (no Ray task runs: the index is reused).
    args = ["--min-images", "500", "--val-per-class", "50", "--shard-size", "1000"]
    assert main(["prepare", "--raw", str(raw), "--out", str(out), "--plan-only", "--no-progress", *args]) == 0
    text = capsys.readouterr().out
    assert f"{summary['classes_seen']:,} seen, {summary['classes_kept']:,} kept" in text
    assert f"{expected['train_samples']:,} samples in 17 shards" in text
    assert [p.name for p in out.iterdir()] == ["_work"]


def test_plan_only_then_a_run_agree(releases, ray_local, tmp_path) -> None:
    raw = raw_arg(releases["class-tars"])
    out = tmp_path / "out"
    plan = prepare(prep_config(raw, out, plan_only=True))
    assert not (out / "_work" / "job.json").exists()
    done = prepare(prep_config(raw, out))  # reuses the index the plan-only run cached
    assert (done["train_shards"], done["validation_shards"]) == (plan["train_shards"], plan["validation_shards"])
    assert done["written"] + done["rejected"] == plan["members"]["to_read"]
    assert done["dropped_class"] == plan["members"]["dropped_class"] and done["classes_kept"] == plan["classes_kept"]
    # A plan-only run into a finished output changes nothing there.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "_work" not in p.parts}
    again = prepare(prep_config(raw, out, plan_only=True))
    assert again["train_samples"] == plan["train_samples"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "_work" not in p.parts} == before
