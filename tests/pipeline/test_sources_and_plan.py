"""Header-only tar indexing, layout detection and the plan (class pruning, val split, class-mixed shards)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from in21k.dataset import sample_key
from in21k.pipeline.plan import make_plan, num_shards, num_train_shards
from in21k.pipeline.sources import Container, describe, index_container, list_nested_tars, open_source
from tests.pipeline.conftest import prep_config

# Real WordNet 3.0 nouns: two fish under vertebrate, one dog, and a plant.
FISH = ("n02512053", "n02563648")  # fish, pumpkinseed
VERTEBRATE = "n01471682"
DOG = "n02084071"
PLANT = "n00017222"


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members_of(wnid: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{wnid}_{i}.JPEG", f"{wnid}-{i}-".encode() * (i + 1)) for i in range(n)]


def test_index_reads_offsets_from_headers(tmp_path: Path) -> None:
    long_name = "n01440764_" + "9" * 120 + ".JPEG"  # needs a GNU long-name header
    members = members_of("n01440764", 5) + [(long_name, b"long"), ("n01440764_empty.JPEG", b"")]
    path = tmp_path / "n01440764.tar"
    path.write_bytes(tar_bytes(members))
    rows = index_container(Container("n01440764", "tar", str(path)))
    assert rows["error"] == ""
    assert rows["member"] == [m for m, _ in members]
    blob = path.read_bytes()
    for (name, data), off, size in zip(members, rows["offset"], rows["size"], strict=True):
        assert blob[off : off + size] == data, name


def test_nested_class_tars_have_absolute_offsets(tmp_path: Path) -> None:
    inner = {w: members_of(w, 3) for w in ("n01440764", "n01443537")}
    outer = tmp_path / "fall11_whole.tar"
    outer.write_bytes(tar_bytes([(f"{w}.tar", tar_bytes(m)) for w, m in inner.items()]))
    layout, fs, path = describe(str(outer))
    assert layout == "whole-tar"
    containers = list_nested_tars(fs, path)
    assert [c.wnid for c in containers] == sorted(inner)
    blob = outer.read_bytes()
    for c in containers:
        rows = index_container(c)
        for (_, data), off, size in zip(inner[c.wnid], rows["offset"], rows["size"], strict=True):
            assert blob[off : off + size] == data and rows["source"][0] == str(outer)


def test_damaged_tar_keeps_members_before_the_damage(tmp_path: Path) -> None:
    blob = tar_bytes(members_of("n01440764", 4))
    path = tmp_path / "n01440764.tar"
    path.write_bytes(blob[:1024] + b"\x07" * 700)  # 1st member intact, then a garbage header
    rows = index_container(Container("n01440764", "tar", str(path)))
    assert rows["member"] == ["n01440764_0.JPEG"] and rows["error"]


def test_an_unreachable_object_store_is_no_damage(tmp_path: Path, monkeypatch) -> None:
    """A tar that cannot be read for a transient reason (connection refused midway) must fail its index task, to be
    retried, not enter the cached index as damaged with the members read so far."""
    from in21k import tarformat
    from in21k.pipeline import sources

    blob = tar_bytes(members_of("n01440764", 40))

    class Flaky(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() > 2048:
                raise ConnectionRefusedError("connection refused by the object store")
            return super().read(n)

    class FlakyFS:
        def open(self, *args, **kwargs):
            return Flaky(blob)

        def size(self, path: str) -> int:
            return len(blob)

    monkeypatch.setattr(sources, "filesystem", lambda url, options=None: (FlakyFS(), url))
    monkeypatch.setattr(tarformat, "SCAN_READ", 1024)
    with pytest.raises(ConnectionRefusedError):
        index_container(Container("n01440764", "tar", "s3://bucket/raw/n01440764.tar"))
    # A local file that fails the same way is what it was before: damage, with the members before it.
    rows = index_container(Container("n01440764", "tar", str(tmp_path / "n01440764.tar")))
    assert rows["error"].startswith("cannot read: ConnectionRefusedError")


def test_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        describe(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no classes found"):
        open_source(str(tmp_path / "empty"), staging=None)
    (tmp_path / "n01440764.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="single class tar"):
        describe(str(tmp_path / "n01440764.tar"))


def index_of(classes: dict[str, int], *, extra: list[tuple[str, str, int]] = ()) -> dict[str, list]:
    cols = {k: [] for k in ("wnid", "member", "source", "offset", "size")}
    rows = [(w, f"{w}_{i}.JPEG", 100 + i) for w, n in classes.items() for i in range(n)] + list(extra)
    for wnid, member, size in rows:
        cols["wnid"].append(wnid)
        cols["member"].append(member)
        cols["source"].append(f"/raw/{wnid}.tar")
        cols["offset"].append(512 * len(cols["offset"]))
        cols["size"].append(size)
    return cols


def shuffled(cols: dict[str, list], seed: int) -> dict[str, list]:
    order = list(range(len(cols["wnid"])))
    random.Random(seed).shuffle(order)
    return {k: [v[i] for i in order] for k, v in cols.items()}


def test_class_pruning_reasons() -> None:
    index = index_of(
        {FISH[0]: 30, FISH[1]: 30, DOG: 30, PLANT: 10, "n00000001": 30},
        extra=[(DOG, f"{DOG}_x.txt", 5), (DOG, f"{DOG}_e.JPEG", 0)],
    )
    plan = make_plan(index, prep_config("/raw", "/out", min_images=20, val_per_class=5, exclude_subtree=[VERTEBRATE]))
    reasons = {c.wnid: c.reason for c in plan.classes}
    assert reasons == {
        FISH[0]: "excluded_subtree",
        FISH[1]: "excluded_subtree",
        DOG: "excluded_subtree",
        PLANT: "too_few_images",
        "n00000001": "not_wordnet_noun",
    }
    plan = make_plan(index, prep_config("/raw", "/out", min_images=20, val_per_class=5, exclude_subtree=[FISH[0]]))
    assert plan.kept_wnids == [DOG]
    dog = next(c for c in plan.classes if c.wnid == DOG)
    assert (dog.members, dog.readable) == (32, 30)  # the .txt and the empty member do not count
    assert sum(s.num_rows for s in plan.shards) + len(plan.unsharded) == len(index["wnid"])


def test_validation_split_is_stable_and_never_picks_unreadable_members() -> None:
    index = index_of({FISH[0]: 40, DOG: 40}, extra=[(DOG, f"{DOG}_e.JPEG", 0)])
    cfg = prep_config("/raw", "/out", min_images=20, val_per_class=7, shard_size=10)
    plans = [make_plan(shuffled(index, s), cfg) for s in range(3)]
    vals = [[r["key"] for s in p.shards if s.split == "validation" for r in p.rows(s)] for p in plans]
    trains = [[[r["key"] for r in p.rows(s)] for s in p.shards if s.split == "train"] for p in plans]
    assert vals[0] == vals[1] == vals[2] and len(vals[0]) == 14
    assert trains[0] == trains[1] == trains[2]
    assert f"{DOG}_e" not in vals[0]
    other_seed = make_plan(index, prep_config("/raw", "/out", min_images=20, val_per_class=7, seed=1))
    assert [r["key"] for s in other_seed.shards if s.split == "validation" for r in other_seed.rows(s)] != vals[0]


def test_train_shards_are_class_mixed_permutations() -> None:
    index = index_of({FISH[0]: 60, FISH[1]: 60, DOG: 60})
    plan = make_plan(index, prep_config("/raw", "/out", min_images=20, val_per_class=5, shard_size=15))
    train = [s for s in plan.shards if s.split == "train"]
    assert len(train) == 11 and sorted(s.num_rows for s in train)[0] >= 15
    for s in train:
        assert len({r["wnid"] for r in plan.rows(s)}) == 3
    keys = [r["key"] for s in train for r in plan.rows(s)]
    assert len(keys) == len(set(keys)) == 165


def test_duplicate_keys_are_rejected() -> None:
    index = index_of({DOG: 25}, extra=[(DOG, f"{DOG}_3.jpeg", 50)])
    plan = make_plan(index, prep_config("/raw", "/out", min_images=20, val_per_class=5))
    cols = plan.unsharded_columns(plan.unsharded)
    assert list(zip(cols["status"].to_pylist(), cols["reason"].to_pylist(), strict=True)) == [("rejected", "duplicate")]
    assert cols["key"].to_pylist() == [f"{DOG}_3"] and cols["member"].to_pylist() == [f"{DOG}_3.jpeg"]
    assert sample_key(DOG, "weird.name.JPEG") == f"{DOG}_weird"


def test_shard_count_defaults_fit_the_cluster() -> None:
    cfg = prep_config("/raw", "/out", shard_size=1500, shard_multiple=4096)
    assert num_train_shards(11_797_632, cfg) == 8192
    assert num_train_shards(3000, cfg) == 2  # small data: no rounding to 4096 near-empty shards
    assert num_train_shards(10, prep_config("/raw", "/out", num_train_shards=64)) == 10
    # Validation follows the same rule: fall11's 561,052 images keep ceil(n / 1500) = 375 shards under 4096 (rounding
    # would make them ~137 images), and are rounded up to 384 for 64 readers.
    assert num_shards(561_052, cfg) == 375
    assert num_shards(561_052, prep_config("/raw", "/out", shard_size=1500, shard_multiple=64)) == 384
    assert num_shards(0, cfg) == 0


def test_shard_tar_bytes_match_tarfile(tmp_path: Path) -> None:
    from in21k.dataset import ShardTarWriter
    from in21k.tarformat import OWNER

    samples = [("n01440764_1", b"\xff\xd8jpeg" * 100, 3, {"wnid": "n01440764"}), ("n01440764_22", b"x", 0, {})]
    path = tmp_path / "ours.tar"
    writer = ShardTarWriter(str(path))
    for key, jpeg, cls, meta in samples:
        writer.write(key, jpeg, cls, meta)
    writer.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, jpeg, cls, meta in samples:
            import json

            parts = {
                "cls": str(cls).encode(),
                "jpg": jpeg,
                "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
            }
            for ext in sorted(parts):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(parts[ext]), 0, 0o644, 0, 0
                info.uname = info.gname = OWNER
                tar.addfile(info, io.BytesIO(parts[ext]))
    assert path.read_bytes() == buf.getvalue()


def test_write_shard_reads_by_range_and_rejects_a_member_cut_short(tmp_path: Path) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds
    from PIL import Image

    from in21k.pipeline.plan import ShardSpec
    from in21k.pipeline.shard import ShardSettings, write_shard

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (300 + i, 260), (40 * i % 255, 90, 200)).save(buf, format="JPEG")
        return buf.getvalue()

    members = [(f"{DOG}_{i}.JPEG", jpeg(i)) for i in range(4)]
    blob = tar_bytes(members)
    path = tmp_path / f"{DOG}.tar"
    index = index_container(Container(DOG, "tar", str(path.with_name("whole.tar"))))  # missing: error, no rows
    assert index["member"] == [] and index["error"]
    path.write_bytes(blob)
    index = index_container(Container(DOG, "tar", str(path)))
    last_end = index["offset"][-1] + index["size"][-1]
    path.write_bytes(blob[: last_end - 100])  # the last member loses its tail
    rows = [
        {"wnid": DOG, "member": m, "source": s, "offset": o, "size": z, "class": 7}
        for m, s, o, z in zip(index["member"], index["source"], index["offset"], index["size"], strict=True)
    ][::-1]  # plan order differs from file order: the shard is written in plan order
    spec = ShardSpec("train", 3, pa.Table.from_pylist(rows))
    stats = write_shard(spec, ShardSettings(out=str(tmp_path / "out"), read_batch=2))
    assert (stats["num_samples"], stats["rejected"], stats["reasons"]) == (3, 1, {"short_read": 1})
    out = tmp_path / "out"
    assert json.loads((out / "stats" / "train-000003.json").read_text())["num_samples"] == 3
    manifest = pq.read_table(out / "manifest" / "train-000003.parquet").to_pylist()
    assert [r["status"] for r in manifest] == ["rejected", "written", "written", "written"]
    keys = [s["__key__"] for s in wds.WebDataset(str(out / "train" / "in21k-train-000003.tar"), shardshuffle=False)]
    assert keys == [sample_key(DOG, r["member"]) for r in rows[1:]]
