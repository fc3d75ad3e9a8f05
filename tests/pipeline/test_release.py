"""Which release is this: identification by layout and counts, and the "this run vs published" table."""

from __future__ import annotations

from in21k.pipeline.release import identify, markdown, summary_line

TOTALS = {"classes_kept": 11_219, "train_samples": 11_790_000, "validation_samples": 560_950}


def test_fall11_whole_tar_is_identified_by_layout_and_counts() -> None:
    r = identify(
        "whole-tar", {"size": 1_310_000_000_000}, {"raw_members": 14_197_122}, classes_seen=21_841, split_classes=None
    )
    assert r["variant"] == "fall11" and r["match"].startswith("fall11") and r["differences"] == []
    assert r["md5"] is None  # read by byte range: never hashed
    text = "\n".join(markdown(r, TOTALS))
    assert "| classes | 11,219 | **11,221** | 10,450 |" in text
    assert "Difference to fall11 (this run minus published): classes -2, train -7,632, validation -102." in text
    assert "MD5 not computed" in text
    assert summary_line(r).startswith("identified as fall11")


def test_counts_that_differ_are_named_and_unknown_sets_are_shown_beside_both() -> None:
    r = identify("class-tars", {}, {"raw_members": 14_000_000}, classes_seen=21_841, split_classes=None)
    assert r["variant"] == "fall11" and r["differences"] == ["14,000,000 members where the release has 14,197,122"]
    counts = {"raw_members": 11_600_000, "given_train": 11_060_223, "given_validation": 522_500}
    processed = identify(
        "processed-tar-gz", {"md5": "ab" * 16, "size": 10}, counts, classes_seen=19_000, split_classes=10_450
    )
    assert processed["variant"] == "winter21" and processed["differences"] == []
    assert "MD5 `" + "ab" * 16 + "`" in "\n".join(markdown(processed, TOTALS))
    unknown = identify("folders", {}, {"raw_members": 120}, classes_seen=6, split_classes=None)
    assert unknown["match"] is None and unknown["variant"] is None
    text = "\n".join(markdown(unknown, {"classes_kept": 4, "train_samples": 80, "validation_samples": 12}))
    assert "not a known release" in text and "| classes | 4 | 11,221 | 10,450 |" in text and "**" not in text
