"""The columnar index and plan against the straightforward per-member reference they replaced.

The reference below is the rule as documented (docs/pipeline.md, "What the job decides"), one Python
dict per member; the columnar plan must give the same classes, the same validation picks, the same
samples in the same shards in the same order, and the same never-read rows, for any listing order and for
odd member names (no wnid prefix, several dots, non-ASCII, paths, duplicates, empty and non-image members).
"""

from __future__ import annotations

import io
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from in21k.dataset import sample_key
from in21k.pipeline import plan as plan_module
from in21k.pipeline.plan import make_plan, num_train_shards, readable_looking, seeded_hash
from in21k.pipeline.sources import Container, Index, index_container
from in21k.tarformat import scan_plain, scan_tolerant
from tests.pipeline.conftest import prep_config

FISH, DOG, PLANT, PERSON = "n02512053", "n02084071", "n00017222", "n00007846"


def reference_plan(index: dict[str, list], cfg, hash_fn=seeded_hash) -> dict:
    """The plan member by member: classes, per-shard keys, never-read (key, status, reason) rows."""
    from in21k.tree.wordnet import noun_synset

    n = len(index["wnid"])
    order = sorted(range(n), key=lambda i: tuple(index[k][i] for k in ("wnid", "member", "source", "offset")))
    members: Counter = Counter()
    readable: Counter = Counter()
    seen: set = set()
    for i in order:
        w, m = index["wnid"][i], index["member"][i]
        members[w] += 1
        if (w, sample_key(w, m)) not in seen:
            seen.add((w, sample_key(w, m)))
            readable[w] += readable_looking(m, index["size"][i])
    classes, kept = {}, {}
    for w in sorted(members):
        if noun_synset(w) is None:
            reason = "not_wordnet_noun"
        elif w in cfg.exclude_subtree:
            reason = "excluded_subtree"
        elif readable[w] < cfg.min_images:
            reason = "too_few_images"
        else:
            reason = ""
        classes[w] = (members[w], readable[w], reason)
        if not reason:
            kept[w] = len(kept)
    unsharded, candidates, keys = [], {}, set()
    for i in order:
        w, m = index["wnid"][i], index["member"][i]
        key = sample_key(w, m)
        if w not in kept:
            unsharded.append((key, "dropped_class", classes[w][2]))
        elif key in keys:
            unsharded.append((key, "rejected", "duplicate"))
        else:
            keys.add(key)
            candidates.setdefault(w, []).append((key, readable_looking(m, index["size"][i])))
    train, val = [], []
    for w in sorted(candidates):
        good = [k for k, ok in candidates[w] if ok]
        chosen = sorted(good, key=lambda k: (hash_fn(cfg.seed, k), k))[: cfg.val_per_class]
        val += sorted(chosen)
        train += [k for k, _ in candidates[w] if k not in set(chosen)]

    def cut(rows: list, count: int, seed: int) -> list[list]:
        if not rows:
            return []
        perm = np.random.default_rng(seed).permutation(len(rows))
        return [[rows[int(i)] for i in part] for part in np.array_split(perm, count)]

    def count(n: int) -> int:  # "Shard count": ceil(n / size), up to a multiple where shards stay >= half size
        rounded = math.ceil(math.ceil(n / cfg.shard_size) / cfg.shard_multiple) * cfg.shard_multiple
        return rounded if n / rounded >= cfg.shard_size / 2 else math.ceil(n / cfg.shard_size)

    shards = cut(train, num_train_shards(len(train), cfg) if cfg.num_train_shards else count(len(train)), cfg.seed)
    shards += cut(val, count(len(val)), cfg.seed + 1)
    return {"classes": classes, "shards": shards, "unsharded": unsharded}


def odd_index(seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    cols: dict[str, list] = {k: [] for k in ("wnid", "member", "source", "offset", "size")}

    def add(wnid: str, member: str, size: int, source: str = "") -> None:
        cols["wnid"].append(wnid)
        cols["member"].append(member)
        cols["source"].append(source or f"/raw/{wnid}.tar")
        cols["offset"].append(512 * len(cols["offset"]))
        cols["size"].append(size)

    for wnid, count in ((FISH, 60), (DOG, 45), (PLANT, 30), (PERSON, 70), ("n00000001", 40)):
        for _ in range(count):
            add(wnid, f"{wnid}_{rng.randrange(10**5)}.JPEG", rng.randrange(1, 5000))
        add(wnid, f"{rng.randrange(100)}.jpg", 10)  # no wnid prefix
        add(wnid, "a.b.c.PNG", 20)  # several dots
        add(wnid, "dir/x.JPEG", 20)  # a path
        add(wnid, f"ünï_{rng.randrange(9)}.JPEG", 30)  # non-ASCII
        add(wnid, "sp ace.JPE", 30)
        add(wnid, "x.T\u0130F", 30)  # lowercases to "x.ti̇f": not an image name
        add(wnid, "", 5)  # no name at all
        add(wnid, f"{wnid}_7.JPEG", 40)
        add(wnid, f"{wnid}_7.jpeg", 40, source=f"/raw/{wnid}-val.tar")  # duplicate key
        add(wnid, f"{wnid}_7.JPEG", 40, source=f"/raw/{wnid}-copy.tar")  # duplicate name, other source
        add(wnid, f"{wnid}_zero.JPEG", 0)  # empty
        add(wnid, "readme.txt", 100)  # not an image name
    order = list(range(len(cols["wnid"])))
    rng.shuffle(order)
    return {k: [v[i] for i in order] for k, v in cols.items()}


def columnar(plan) -> dict:
    classes = {c.wnid: (c.members, c.readable, c.reason) for c in plan.classes}
    shards = [[r["key"] for r in plan.rows(s)] for s in plan.shards]
    cols = plan.unsharded_columns(plan.unsharded)
    unsharded = list(zip(*(cols[k].to_pylist() for k in ("key", "status", "reason")), strict=True))
    return {"classes": classes, "shards": shards, "unsharded": unsharded}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columnar_plan_equals_the_per_member_reference(seed: int) -> None:
    index = odd_index(seed)
    cfg = prep_config("/raw", "/out", min_images=35, val_per_class=6, shard_size=9, seed=seed)
    got = columnar(make_plan(index, cfg))
    assert got == reference_plan(index, cfg)
    assert any(len(s) for s in got["shards"]) and len(got["shards"]) > 5


@pytest.mark.parametrize("multiple", [3, 4])
def test_both_splits_follow_the_shard_multiple(multiple: int) -> None:
    index = odd_index(5)
    cfg = prep_config("/raw", "/out", min_images=35, val_per_class=6, shard_size=5, shard_multiple=multiple)
    plan = make_plan(index, cfg)
    counts = Counter(s.split for s in plan.shards)
    assert counts["validation"] > math.ceil(plan.num_samples("validation") / 5)  # rounded up: more shards
    assert counts["train"] % multiple == 0 and counts["validation"] % multiple == 0, counts
    assert min(s.num_rows for s in plan.shards) >= 2  # about half of --shard-size at least
    assert columnar(plan) == reference_plan(index, cfg)


def test_hash_ties_are_settled_by_the_key(monkeypatch) -> None:
    """With only 4 distinct hash values almost every pick is a tie; the columnar plan still matches."""
    index = odd_index(5)
    cfg = prep_config("/raw", "/out", min_images=35, val_per_class=6, shard_size=9)
    real = plan_module.key_hashes
    monkeypatch.setattr(plan_module, "key_hashes", lambda seed, keys: real(seed, keys) & np.uint64(3))
    got = columnar(make_plan(index, cfg))
    assert got == reference_plan(index, cfg, hash_fn=lambda s, k: seeded_hash(s, k) & 3)


def test_index_is_canonical_whatever_the_part_order() -> None:
    index = odd_index(3)
    a = Index.from_columns(index)
    rows = list(zip(*(index[k] for k in ("wnid", "member", "source", "offset")), strict=True))
    expected = sorted(rows)
    got = list(
        zip(
            a.wnids.take(a.wnid).to_pylist(),
            a.member.to_pylist(),
            a.sources.take(a.source).to_pylist(),
            a.offset.tolist(),
            strict=True,
        )
    )
    assert got == expected
    assert a.wnids.to_pylist() == sorted(set(index["wnid"])) and a.sources.to_pylist() == sorted(set(index["source"]))


def _tar(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_header_scan_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    members = [(f"n01440764_{i}.JPEG", b"x" * (i * 97 % 1500)) for i in range(40)]
    long_name = "d" * 80 + "/n01440764_" + "9" * 60 + ".JPEG"  # ustar: a name prefix; GNU: long name; pax header
    members += [("sub/", b""), ("sub/n01440764_a.JPEG", b"abc"), (long_name, b"long")]
    blob = _tar(members, fmt)
    cases = {
        "whole": blob,
        "cut inside data": blob[: len(blob) // 2 + 100],
        "cut inside a header": blob[: 1024 + 700],
        "garbage header": blob[:1024] + b"\x07" * 700,
        "bad checksum": blob[:517] + b"Z" + blob[518:],  # the second header (the first member is empty)
        "empty": b"",
        "zeros": b"\0" * 2048,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(data)
        with open(path, "rb") as f:
            fast = scan_plain(f, len(data))
            f.seek(0)
            slow = scan_tolerant(f)
        if fast is not None:
            assert (fast, "") == slow, name
        rows = index_container(Container("n01440764", "tar", str(path)))
        assert (rows["offset"], rows["size"], rows["error"]) == (
            [m[1] for m in slow[0]],
            [m[2] for m in slow[0]],
            slow[1],
        )
    if fmt == tarfile.USTAR_FORMAT:  # plain archives take the fast path (long names need GNU or pax headers)
        plain = _tar(members[:40], fmt)
        assert scan_plain(io.BytesIO(plain), len(plain)) == scan_tolerant(io.BytesIO(plain))[0]


def test_slices_of_a_few_rows_give_the_same_plan(monkeypatch) -> None:
    from in21k.pipeline import sources

    index = odd_index(7)
    cfg = prep_config("/raw", "/out", min_images=35, val_per_class=6, shard_size=9)
    expected = reference_plan(index, cfg)
    monkeypatch.setattr(plan_module, "PLAN_SLICE", 4)  # runs of whole classes, ~4 rows a run
    monkeypatch.setattr(plan_module, "INDEX_SLICE", 7)  # row lists built in pieces
    monkeypatch.setattr(sources, "INDEX_SLICE", 5)  # order checks and code remaps in pieces
    assert columnar(make_plan(index, cfg)) == expected
