"""``in21k synth``: real layout, real WordNet chains, deterministic bytes, honest counts."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from PIL import Image

from in21k.synth import READABLE_KINDS, UNREADABLE_KINDS, SynthConfig, write_synthetic_release
from in21k.tree import SemanticTree
from in21k.tree.wordnet import noun_synset


def _cfg(out, **kw) -> SynthConfig:
    base = dict(
        out=str(out), classes=12, images="6:20", seed=3, bad_share=0.2, odd_share=0.2, small_share=0.2, large_share=0.05
    )
    base.update(kw)
    return SynthConfig(**base)


def _read_class_tar(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def test_class_tars_match_report_member_by_member(tmp_path):
    report = write_synthetic_release(_cfg(tmp_path))
    assert report["totals"]["classes"] == 12
    seen = 0
    for cls in report["classes"]:
        members = _read_class_tar((tmp_path / f"{cls['wnid']}.tar").read_bytes())
        assert len(members) == cls["members"] == sum(cls["kinds"].values())
        assert set(members) == set(report["members"][cls["wnid"]])
        for name, data in members.items():
            assert name.startswith(cls["wnid"] + "_") and name.endswith(".JPEG")
            kind = report["members"][cls["wnid"]][name]
            assert _decodes(data) == (kind in READABLE_KINDS), (name, kind)
            if kind == "empty":
                assert data == b""
            if kind == "png":
                assert data[:8] == b"\x89PNG\r\n\x1a\n"
            if kind in ("cmyk", "gray"):
                assert Image.open(io.BytesIO(data)).mode == {"cmyk": "CMYK", "gray": "L"}[kind]
            seen += 1
    assert seen == report["totals"]["members"]
    assert report["totals"]["readable"] + report["totals"]["unreadable"] == seen
    for kind in READABLE_KINDS + UNREADABLE_KINDS:
        assert report["totals"]["kinds"][kind] > 0, kind


def test_classes_form_real_wordnet_chains(tmp_path):
    report = write_synthetic_release(_cfg(tmp_path, classes=30, images="2:3", non_noun_classes=2))
    nouns = [c["wnid"] for c in report["classes"] if c["wordnet_noun"]]
    fake = [c["wnid"] for c in report["classes"] if not c["wordnet_noun"]]
    assert len(nouns) == 28 and len(fake) == 2
    assert all(noun_synset(w) is None for w in fake)
    assert (tmp_path / "synsets.txt").read_text().split() == sorted(nouns)
    tree = SemanticTree.build(nouns)
    assert tree.num_levels >= 3
    assert any(len(level) >= 2 for level in tree.levels[1:])  # siblings exist below the roots
    fall11 = SemanticTree.builtin("fall11")
    chosen = set(nouns)
    for w in nouns:  # a class comes with every fall11 ancestor: whole chains
        assert all(fall11.wnids[a] in chosen for a in fall11.class_tree[fall11.wnid_to_index[w]])


def test_sizes_and_class_spread(tmp_path):
    report = write_synthetic_release(
        _cfg(
            tmp_path,
            classes=6,
            images="10:60",
            bad_share=0,
            odd_share=0,
            small_share=0.3,
            large_share=0.2,
            non_noun_classes=0,
        )
    )
    counts = sorted(c["members"] for c in report["classes"])
    assert counts[0] == 10 and counts[-1] == 60
    sizes = []
    for cls in report["classes"]:
        for data in _read_class_tar((tmp_path / f"{cls['wnid']}.tar").read_bytes()).values():
            sizes.append(Image.open(io.BytesIO(data)).size)
    assert any(min(s) < 224 for s in sizes)
    assert any(max(s) > 2000 for s in sizes)
    assert sum(300 <= min(s) <= 500 for s in sizes) > len(sizes) / 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_synthetic_release(_cfg(tmp_path / "a"))
    write_synthetic_release(_cfg(tmp_path / "b"))
    write_synthetic_release(_cfg(tmp_path / "c", seed=4))
    for name in a["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) != sorted(
        p.name for p in (tmp_path / "c").iterdir()
    ) or any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes() for n in a["files"])


@pytest.mark.parametrize("whole_name", ["fall11_whole.tar", "winter21_whole.tar.gz"])
def test_whole_tar_holds_the_same_class_tars(tmp_path, whole_name):
    flat = write_synthetic_release(_cfg(tmp_path / "flat"))
    whole = write_synthetic_release(_cfg(tmp_path / "whole", layout="whole-tar", whole_name=whole_name))
    assert whole["files"] == [whole_name] and whole["totals"] == flat["totals"]
    blob = (tmp_path / "whole" / whole_name).read_bytes()
    if whole_name.endswith(".gz"):
        blob = gzip.decompress(blob)
    inner = _read_class_tar(blob)
    assert sorted(inner) == sorted(flat["files"])
    for name, data in inner.items():
        assert data == (tmp_path / "flat" / name).read_bytes()


def test_folders_layout(tmp_path):
    flat = write_synthetic_release(_cfg(tmp_path / "flat"))
    write_synthetic_release(_cfg(tmp_path / "dirs", layout="folders"))
    for cls in flat["classes"]:
        members = _read_class_tar((tmp_path / "flat" / f"{cls['wnid']}.tar").read_bytes())
        folder = tmp_path / "dirs" / cls["wnid"]
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == members


def test_bad_config_is_rejected(tmp_path, capsys):
    with pytest.raises(ValueError, match="MIN:MAX"):
        write_synthetic_release(_cfg(tmp_path, images="ten"))
    with pytest.raises(ValueError, match="non-noun"):
        write_synthetic_release(_cfg(tmp_path, non_noun_classes=12))

    from in21k.cli import main

    # More planted copies than the release has originals: one error line that says what to change.
    assert main(["synth", str(tmp_path / "plant"), "--classes", "6", "--images", "4:6", "--plant", "50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give a smaller --plant" in err[0]


def test_report_is_json_on_disk(tmp_path):
    report = write_synthetic_release(_cfg(tmp_path))
    assert json.loads((tmp_path / "synth_report.json").read_text())["totals"] == report["totals"]


def test_processed_layout_follows_the_original_script_and_parquet_holds_its_splits(tmp_path):
    import pyarrow.parquet as pq

    kw = dict(classes=6, images="8:20", seed=4, size=96, min_images=10, val_per_class=2, small_share=0.3, large_share=0)
    report = write_synthetic_release(_cfg(tmp_path / "p", layout="processed", **kw))
    root = tmp_path / "p" / "imagenet21k_resized"
    assert (root / "README.txt").is_file()  # a file outside the class folders
    processed = report["processed"]
    for c in report["classes"]:
        kept = processed.get(c["wnid"], {})
        assert len(kept) == c["readable"]  # unreadable members are dropped, as the original's "general failure"
        splits = {v["split"] for v in kept.values()}
        if c["readable"] > 10:
            names = sorted(kept)
            assert [n for n in names if kept[n]["split"] == "validation"] == names[:2]  # first in ls order
            assert splits == {"train", "validation"}
        else:
            assert splits <= {"small_classes"}
        for name, v in kept.items():
            folder = {
                "train": "imagenet21k_train",
                "validation": "imagenet21k_val",
                "small_classes": "imagenet21k_small_classes",
            }[v["split"]]
            with Image.open(root / folder / c["wnid"] / name) as im:
                assert (im.size == (96, 96)) != (v["copied"] and min(im.size) < 96), (name, im.size)
    parquet = write_synthetic_release(_cfg(tmp_path / "q", layout="parquet", image_format="webp", **kw))
    files = sorted((tmp_path / "q" / "data").glob("*.parquet"))
    expected = ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "validation-00000-of-00001.parquet"]
    assert [f.name for f in files] == [f.split("/")[-1] for f in parquet["files"]] == expected
    tables = [pq.read_table(f) for f in files]
    names = json.loads(tables[0].schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    assert names == sorted(w for w, m in processed.items() if any(v["split"] != "small_classes" for v in m.values()))
    rows = [r for t in tables for r in t.to_pylist()]
    assert len(rows) == sum(1 for m in processed.values() for v in m.values() if v["split"] != "small_classes")
    assert all(r["image"]["bytes"][8:12] == b"WEBP" and r["image"]["path"].endswith(".webp") for r in rows)


def test_planted_copies_and_evaluation_set_are_listed_pair_by_pair(tmp_path):
    from in21k.synth.planted import EVAL_DIR, PLANT_KINDS, SCOPES

    plain = write_synthetic_release(_cfg(tmp_path / "plain", odd_share=0.0))
    report = write_synthetic_release(_cfg(tmp_path / "planted", odd_share=0.0, plant=1, eval_images=6))
    pairs = report["planted"]["pairs"]
    assert sorted((p["kind"], p["scope"]) for p in pairs if p["scope"] != "eval") == sorted(
        (k, s) for k in PLANT_KINDS for s in SCOPES
    )
    assert sum(p["scope"] == "eval" for p in pairs) == 3 and report["planted"]["eval_set"]["unreadable"] == 1
    tars = {
        c["wnid"]: _read_class_tar((tmp_path / "planted" / f"{c['wnid']}.tar").read_bytes()) for c in report["classes"]
    }
    for p in pairs:
        copy = tars[p["copy"]["wnid"]][p["copy"]["member"]]
        assert _decodes(copy)
        if "eval" in p["original"]:
            original = (tmp_path / "planted" / EVAL_DIR / p["original"]["eval"]).read_bytes()
        else:
            original = tars[p["original"]["wnid"]][p["original"]["member"]]
            assert (p["scope"] == "within_class") == (p["original"]["wnid"] == p["copy"]["wnid"])
        assert (copy == original) == (p["kind"] == "exact"), p
    assert len(list((tmp_path / "planted" / EVAL_DIR).iterdir())) == 6
    # Planting adds members and changes nothing else: the plain release's members, byte for byte.
    for c in plain["classes"]:
        before = _read_class_tar((tmp_path / "plain" / f"{c['wnid']}.tar").read_bytes())
        assert all(tars[c["wnid"]][name] == data for name, data in before.items())
