"""The join against brute force, the groups, and the policies of the clean-data stage (no Ray, no files)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from in21k.pipeline import clean, dedup
from in21k.pipeline.fingerprint import COLOR_BYTES


def _near(h: np.ndarray, rng: np.random.Generator, pairs: int, most: int) -> np.ndarray:
    """``h`` with ``pairs`` members overwritten by copies of others with up to ``most`` bits flipped."""
    h = h.copy()
    for _ in range(pairs):
        a, b = rng.choice(len(h), 2, replace=False)
        x = int(h[a])
        for bit in rng.choice(64, int(rng.integers(0, most + 1)), replace=False):
            x ^= 1 << int(bit)
        h[b] = np.uint64(x)
    return h


def _brute(h: np.ndarray, limit: int) -> set[tuple[int, int]]:
    i, j = np.triu_indices(len(h), 1)
    d = np.bitwise_count(h[i] ^ h[j])
    return set(zip(i[d <= limit].tolist(), j[d <= limit].tolist(), strict=True))


def test_the_join_finds_every_pair_within_its_radius_and_nothing_beyond_the_distance() -> None:
    rng = np.random.default_rng(0)
    h = _near(rng.integers(0, 2**63, 2500, dtype=np.uint64) * np.uint64(2), rng, 600, 12)
    got = dedup.scan_tables(h, range(len(dedup.tables())), 12)
    i, j = dedup.split_pairs(got["pairs"])
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert (got["distances"] == np.bitwise_count(h[i] ^ h[j])).all() and (got["distances"] <= 12).all()
    assert found <= _brute(h, 12)
    assert _brute(h, dedup.guaranteed_radius()) <= found  # radius 7: all of them
    assert len(found) / len(_brute(h, 12)) > 0.7 and got["within"] == len(found)  # each pair reported once
    # Any split of the tables into tasks gives the same pairs.
    parts = [dedup.scan_tables(h, range(a, min(a + 50, 330)), 12) for a in range(0, 330, 50)]
    merged = dedup.merge_scans(parts)
    assert np.array_equal(merged["pairs"], got["pairs"]) and np.array_equal(merged["distances"], got["distances"])
    # With colours, the pairs are verified: those that differ go, the closest of them are kept for the report.
    colors = rng.integers(0, 256, (len(h), COLOR_BYTES), dtype=np.uint8)
    colors[j] = colors[i]  # the pairs found: same colours...
    colors[j[::2]] = 255 - colors[i[::2]]  # ...but every other one differs
    checked = dedup.scan_tables(h, range(330), 12, colors, 7.0)
    assert 0 < len(checked["pairs"]) < len(found) and (checked["color_distances"] <= 7.0).all()
    assert len(checked["rejected"][0]) == dedup.REJECTED_KEPT and (checked["rejected"][2] > 7.0).all()


def test_a_huge_bucket_is_compared_within_a_window() -> None:
    h = np.zeros(40, np.uint64)  # one key for all: a run of 40
    got = dedup.scan_tables(h, [0], 0, window=5)
    assert got["truncated"] > 0 and len(got["pairs"]) == sum(min(5, 39 - k) for k in range(40))


def test_components_and_exact_copies() -> None:
    label = dedup.components(8, np.array([5, 1, 6, 3]), np.array([1, 2, 7, 7]))
    assert label.tolist() == [0, 1, 1, 3, 4, 1, 3, 3]
    copies, originals = dedup.exact_copies(
        np.array([7, 9, 7, 9, 7, 5], np.uint64), np.array([1, 1, 1, 1, 2, 1], np.uint64)
    )
    # rows 2 and 3 copy rows 0 and 1; row 4 has the same pixel hash as 0 but another phash: not the same picture
    assert copies.tolist() == [2, 3] and originals.tolist() == [0, 1]


def _release(cls: list[int], val: list[bool], pixels: list[int], phash: list[int]) -> clean.Release:
    n = len(cls)
    return clean.Release(
        part=np.zeros(n, np.int32),
        position=np.arange(n, dtype=np.int32),
        phash=np.array(phash, np.uint64),
        pixel_hash=np.arange(n, dtype=np.uint64) + 100,
        cls=np.array(cls, np.int32),
        val=np.array(val),
        pixels=np.array(pixels, np.int64),
    )


def _decide(release: clean.Release, policy: clean.Policy, evals: clean.EvalImages | None = None) -> dict[str, dict]:
    evals = evals or clean.EvalImages(
        np.empty(0, np.int16), [], np.empty(0, np.uint64), np.empty((0, COLOR_BYTES), np.uint8), []
    )
    keys = [f"n0000000{c}_{k}" for k, c in enumerate(release.cls.tolist())]

    def details(rows: np.ndarray, columns: tuple[str, ...]) -> dict:
        every = {
            "key": pa.array([keys[r] for r in rows], pa.string()),
            "colors": np.full((len(rows), COLOR_BYTES), 100, np.uint8),
            "source": pa.array(["raw"] * len(rows), pa.string()),
            "offset": np.zeros(len(rows), np.int64),
            "src_bytes": np.zeros(len(rows), np.int64),
        }
        return {c: every[c] for c in columns}

    table, summary = clean.decide(release, details, evals, policy, np.array([1, 2, 3]))  # the join in this process
    rows = table.to_pylist()
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)
    return {keys[r["position"]]: r for r in rows} | {"summary": summary}


# Members 0-2: one picture (hashes 0 and 3 bits apart) in classes 0, 0 and 2; 3: another picture; 4: a third
# picture twice in class 1, one copy in validation.
PICTURE = dict(
    cls=[0, 0, 2, 1, 1, 1],
    val=[False, False, False, False, True, False],
    pixels=[100, 900, 50, 10, 10, 99],
    phash=[0, 0b111, 0b1, 2**64 - 1, 2**40 - 1, 2**40 - 1],
)


def test_policies_in_a_class_and_across_classes() -> None:
    out = _decide(_release(**PICTURE), clean.Policy())  # keep-one in a class, drop-all across
    across = [k for k, r in out.items() if k != "summary" and r["reason"] == clean.REASON_ACROSS]
    assert sorted(across) == ["n00000000_0", "n00000000_1", "n00000002_2"]
    # The group's first member: the deepest class (2), so every copy names n00000002_2 as its group.
    assert {out[k]["dup_group"] for k in across} == {"n00000002_2"}
    # Two copies in class 1: the validation one stays (the split keeps its size), the other names it.
    kept, gone = out["n00000001_4"], out["n00000001_5"]
    assert kept["status"] == "written" and kept["reason"] is None
    assert (gone["status"], gone["reason"], gone["match"]) == ("rejected", clean.REASON_IN_CLASS, "n00000001_4")
    assert out["summary"]["removed"] == {clean.REASON_IN_CLASS: 1, clean.REASON_ACROSS: 3, clean.REASON_EVAL: 0}
    assert "n00000001_3" not in out  # a picture of its own: no decision

    out = _decide(_release(**PICTURE), clean.Policy(across_classes="keep-one"))
    assert out["n00000002_2"]["status"] == "written"  # the copy in the most specific class
    assert out["n00000000_0"]["reason"] == out["n00000000_1"]["reason"] == clean.REASON_ACROSS
    assert out["n00000000_0"]["match"] == "n00000002_2"

    out = _decide(_release(**PICTURE), clean.Policy(across_classes="keep-all", in_class="keep-all"))
    assert all(r["status"] == "written" for k, r in out.items() if k != "summary")
    assert out["summary"]["groups"] == 2 and out["summary"]["groups_across_classes"] == 1


@pytest.mark.parametrize("dedup_on", [True, False])
def test_an_evaluation_match_is_removed_with_its_name(dedup_on: bool) -> None:
    evals = clean.EvalImages(
        np.array([0], np.int16),
        ["val/ILSVRC2012_val_00000001.JPEG"],
        np.array([2**64 - 1], np.uint64),
        np.full((1, COLOR_BYTES), 100, np.uint8),
        ["imagenet1k-val"],
    )
    out = _decide(_release(**PICTURE), clean.Policy(dedup=dedup_on), evals)
    hit = out["n00000001_3"]
    assert (hit["status"], hit["reason"]) == ("rejected", clean.REASON_EVAL)
    assert hit["match"] == "imagenet1k-val:val/ILSVRC2012_val_00000001.JPEG" and hit["match_distance"] == 0
    assert out["summary"]["eval_sets"][0]["matched_images"] == 1
    assert ("n00000001_5" in out) == dedup_on  # without --dedup, copies inside the release are left alone
