"""``prepare`` on the inputs users have besides the raw release: the processed ImageNet-21K-P release (folders
and its ``.tar.gz``), parquet image sets, and exact class lists (``--classes``); local and on a real S3 server.

The same images give the same shards whatever the input kind (byte for byte: the processed images are at the
output size and are copied, the others resized), every member is accounted for, the given split is kept, and
bad input stops before any work with a one-line error."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from in21k.cli import main
from in21k.pipeline import prepare
from tests.pipeline.conftest import prep_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SIZE = 96  # the processed size: the synth's small images (short side 64..224) are partly under it
SYNTH = dict(
    classes=6,
    images="12:30",
    seed=3,
    large_share=0.0,
    small_share=0.3,
    bad_share=0.1,
    odd_share=0.1,
    size=SIZE,
    min_images=16,
    val_per_class=3,
)
PREP = dict(size=SIZE, min_images=16, val_per_class=3, shard_size=16)


def synth(out: Path, **kw) -> dict:
    from in21k.synth import SynthConfig, write_synthetic_release

    return write_synthetic_release(SynthConfig(out=str(out), **{**SYNTH, **kw}))


def shards(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/in21k-*.tar"))}


def samples(out: Path) -> dict[str, dict]:
    """key -> {split, cls, jpg, wnid} of every sample in the shards."""
    found: dict[str, dict] = {}
    for path in sorted(out.glob("*/in21k-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                entry = found.setdefault(key, {"split": path.parent.name})
                entry[ext] = tar.extractfile(m).read()
    for entry in found.values():
        entry["wnid"] = json.loads(entry["json"])["wnid"]
    return found


def manifest(out: Path) -> list[dict]:
    return [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One synthetic release in the processed layouts and as parquet (same seed: the same images)."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, kw in {
        "processed": {"layout": "processed"},
        "tar.gz": {"layout": "processed-tar-gz"},
        "parquet": {"layout": "parquet"},
    }.items():
        synth(root / name, **kw)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def reference(made, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("processed-out")
    prepare(prep_config(str(made["processed"]), out, **PREP))
    return out


def test_processed_release_keeps_its_split_copies_images_at_size_and_accounts_for_every_member(made, reference):
    report = json.loads((made["processed"] / "synth_report.json").read_text())
    members = report["processed"]  # wnid -> name -> {split, kind, copied}
    rows = manifest(reference)
    assert len(rows) == sum(len(m) for m in members.values())  # every file in a class folder, once
    assert {(r["wnid"], r["member"]) for r in rows} == {(w, n) for w, m in members.items() for n in m}
    noun = {c["wnid"]: c["wordnet_noun"] for c in report["classes"]}
    files = made["processed"] / "imagenet21k_resized"
    written = samples(reference)
    for r in rows:
        given = members[r["wnid"]][r["member"]]
        if not noun[r["wnid"]]:
            assert (r["status"], r["reason"]) == ("dropped_class", "not_wordnet_noun")
        elif given["split"] == "small_classes":
            assert (r["status"], r["reason"]) == ("dropped_class", "small_class")
        else:  # the release's own split, and images at size written byte for byte
            assert r["status"] == "written" and r["split"] == given["split"], r
            folder = {"train": "imagenet21k_train", "validation": "imagenet21k_val"}[given["split"]]
            source = (files / folder / r["wnid"] / r["member"]).read_bytes()
            jpg = written[r["key"]]["jpg"]
            at_size = not given["copied"]  # resized by the processing: an RGB JPEG at the size
            assert (jpg == source) == at_size, r
            assert (r["width"], r["height"]) == (SIZE, SIZE)
    result = json.loads((reference / "report.json").read_text())
    assert result["split"] == "kept as the input gives it"
    copied = sum(
        1
        for r in rows
        if r["status"] == "written"
        and written[r["key"]]["jpg"] != b""
        and not members[r["wnid"]][r["member"]]["copied"]
    )
    assert result["totals"]["copied_at_size"] == copied > 0
    assert 0 < copied < result["totals"]["written"]  # the small ones were resized
    identity = result["release"]
    assert identity["layout"] == "processed" and identity["match"] is None and identity["outside_class_folders"] == 1
    assert "This run vs published ImageNet-21K-P" in (reference / "report.md").read_text()


def test_tar_gz_and_parquet_local_and_on_s3_give_the_same_shards(made, reference, s3_server, ray_local, tmp_path):
    bucket = s3_server.make_bucket("in21k-inputs")
    so = dict(storage_options=s3_server.storage_options)
    s3_server.upload_dir(made["processed"], bucket, "processed")
    s3_server.upload_dir(made["tar.gz"], bucket, "gz")
    s3_server.upload_dir(made["parquet"], bucket, "parquet")
    expected = shards(reference)
    # The extracted release on S3, written to S3.
    prepare(prep_config(f"s3://{bucket}/processed", f"s3://{bucket}/out-processed", **PREP, **so))
    import fsspec

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert {name: fs.cat_file(f"{bucket}/out-processed/{name}") for name in expected} == expected
    # The archive on S3 (staged once, into DST/_staging on S3), to local disk; and locally.
    gz = prepare(prep_config(f"s3://{bucket}/gz/imagenet21k_resized.tar.gz", tmp_path / "gz", **PREP, **so))
    assert shards(tmp_path / "gz") == expected
    identity = json.loads((tmp_path / "gz" / "report.json").read_text())["release"]
    archive = (made["tar.gz"] / "imagenet21k_resized.tar.gz").read_bytes()
    assert (identity["md5"], identity["outer_size"]) == (hashlib.md5(archive).hexdigest(), len(archive))
    assert gz["raw_members"] == len(manifest(reference))
    # Parquet: on S3 (converted into staged tars on the way) and locally, same shards.
    prepare(prep_config(f"s3://{bucket}/parquet", tmp_path / "pq-s3", **PREP, **so))
    assert shards(tmp_path / "pq-s3") == expected
    # A variant users have too: plain image bytes and wnid labels, no metadata.
    plain = tmp_path / "plain"
    for path in sorted((made["parquet"] / "data").glob("*.parquet")):
        table = pq.read_table(path)
        names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
        image = table.column("image").combine_chunks()
        out = pa.table(
            {"jpg": image.field("bytes"), "wnid": pa.array([names[i] for i in table.column("label").to_pylist()])}
        )
        (plain / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(out, plain / "data" / path.name)
    summary = prepare(prep_config(str(plain), tmp_path / "pq-plain", **PREP))
    assert summary["raw_members"] == summary["written"]
    got, ref = samples(tmp_path / "pq-plain"), samples(reference)
    # Without file names the keys are made from the file and row; each image keeps its split, label and bytes.
    assert sorted((v["split"], v["cls"], v["jpg"]) for v in got.values()) == sorted(
        (v["split"], v["cls"], v["jpg"]) for v in ref.values()
    )


def test_resplit_gives_the_shards_of_the_same_files_as_class_folders(made, ray_local, tmp_path):
    flat = tmp_path / "flat"  # the raw release's class-folder layout, the same files
    for path in (made["processed"] / "imagenet21k_resized").glob("imagenet21k_*/n*/*"):
        (flat / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, flat / path.parent.name / path.name)
    resplit = prepare(prep_config(str(made["processed"]), tmp_path / "resplit", **PREP, resplit=True))
    prepare(prep_config(str(flat), tmp_path / "folders", **PREP))
    assert shards(tmp_path / "resplit") == shards(tmp_path / "folders") != {}
    report = json.loads((tmp_path / "resplit" / "report.json").read_text())
    assert report["split"] == "made by --val-per-class" and resplit["validation_samples"] > 0


def test_class_list_fixes_the_label_order_and_keeps_small_classes(made, ray_local, tmp_path):
    report = json.loads((made["processed"] / "synth_report.json").read_text())
    small = sorted(w for w, m in report["processed"].items() if all(v["split"] == "small_classes" for v in m.values()))
    nouns = (made["processed"] / "class_list.txt").read_text().split()
    small_noun = next(w for w in small if w in nouns)  # in imagenet21k_small_classes: under --min-images
    listed = [w for w in nouns if w not in small][::-1] + [small_noun]
    assert listed != sorted(listed)
    (tmp_path / "list.txt").write_text("# mine\n" + "\n".join(listed) + "\n")
    out = tmp_path / "out"
    summary = prepare(prep_config(str(made["processed"]), out, **PREP, classes=str(tmp_path / "list.txt")))
    assert summary["classes_kept"] == len(listed) and summary["classes_flagged"] == 1
    tsv = [line.split("\t") for line in (out / "classes.tsv").read_text().splitlines()[1:]]
    assert [row[1] for row in tsv] == listed and [int(row[0]) for row in tsv] == list(range(len(listed)))
    tree = json.loads((out / "tree.json").read_text())
    assert [c["wnid"] for c in tree["classes"]] == listed
    assert json.loads((out / "_info.json").read_text())["num_classes"] == len(listed)
    import torch

    assert torch.load(out / "imagenet21k_miil_tree.pth", weights_only=True)["class_list"] == listed
    for v in samples(out).values():
        assert int(v["cls"]) == listed.index(v["wnid"])
    result = json.loads((out / "report.json").read_text())
    assert [f["wnid"] for f in result["flagged_classes"]] == [small_noun] and result["flagged_classes"][0]["train"] > 0
    reasons = Counter(d["reason"] for d in result["dropped_classes"])
    assert reasons == {"not_in_class_list": len(report["classes"]) - len(listed)}
    assert "## Flagged classes" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-list", "is neither a file nor one of timm's lists (imagenet"),
        ("missing-class", "has 2 of its 7 classes not in this release: n01440764, n01443537"),
        ("no-image-column", "has no image column (bytes, or {bytes, path} structs); columns found: name (string)"),
        ("names-not-wnids", "the class names in its metadata are not wnids (e.g. 'tench'"),
    ],
)
def test_bad_input_is_one_line_before_any_work(case, expected, made, tmp_path, capsys):
    raw, extra = str(made["processed"]), []
    if case == "unknown-list":
        extra = ["--classes", "imagenet99k"]
    elif case == "missing-class":
        nouns = (made["processed"] / "class_list.txt").read_text().split()
        (tmp_path / "list.txt").write_text("\n".join(nouns + ["n01440764", "n01443537"]))
        extra = ["--classes", str(tmp_path / "list.txt")]
    else:
        raw = str(tmp_path / "set")
        (tmp_path / "set").mkdir()
        columns = (
            {"name": pa.array(["a"])}
            if case == "no-image-column"
            else {"image": pa.array([b"\xff\xd8"]), "label": pa.array([0])}
        )
        table = pa.table(columns)
        if case == "names-not-wnids":
            features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": ["tench"]}}
            table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, tmp_path / "set" / "train-00000-of-00001.parquet")
    out = tmp_path / "out"
    rc = main(["prepare", "--raw", raw, "--out", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("in21k prepare: error: ") and expected in err[-1], err
    assert not out.exists() or not (out / "_work" / "job.json").exists()
    if case != "missing-class":  # the class list is checked against the listing, before indexing
        assert not out.exists()
