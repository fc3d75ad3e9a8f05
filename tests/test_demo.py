"""``in21k demo`` end to end, as ``make demo`` runs it (two training epochs to keep the suite short): the session's
``demo_run`` (tests/conftest.py), which other tests reuse."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.ray
def test_demo_runs_every_stage_and_reports(demo_run):
    out, summary = demo_run.out, demo_run.summary
    t = summary["totals"]
    synth = json.loads((out / "raw" / "synth_report.json").read_text())["totals"]
    assert t["raw_members"] == synth["members"] == t["written"] + t["rejected"] + t["dropped_class"]
    assert t["classes_dropped"] >= 1 and t["rejected"] >= 1  # the demo data exercises pruning and rejection
    # well above chance: at least three times uniform guessing on every level
    assert summary["semantic_top1"] > 3 * summary["chance_semantic_top1"]
    report = out / "report"
    for name in (
        "report.md",
        "class_sizes.png",
        "rejections.png",
        "training_curves.png",
        "per_level_accuracy.png",
        "predictions.png",
        "matched_pairs.png",
    ):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "semantic top-1" in text and "Held-out predictions" in text
    # The planted copies and the evaluation set's pictures are found, and nothing else is flagged.
    clean = summary["clean"]
    assert "## Duplicates and the evaluation set" in text and "![matched pairs](matched_pairs.png)" in text
    assert all(clean["recall"][kind] == 1.0 for kind in ("exact", "reencode", "rescale")), clean["recall"]
    assert clean["recall"]["crop"] >= 0.8 and clean["false_flag_rate"] <= 0.01 and clean["eval_false_matches"] == 0
    assert clean["removed"]["eval_match"] >= 10 and clean["eval_sets"][0]["unreadable"] == 1
    prepared = (out / "prepared" / "report.md").read_text()
    assert "## Duplicates and evaluation sets" in prepared and "![matched pairs](report_pairs.png)" in prepared
    right, total = map(int, summary["heldout_path_levels_correct"].split("/"))
    assert total > 0 and right / total > 0.5
    assert str(report / "report.md") in demo_run.stderr  # tells the user where everything is
