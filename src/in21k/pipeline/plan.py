"""The plan: which classes stay, which members go to validation, and which shard each sample lands in.

Everything here is a pure function of the index rows and the config, independent of listing order and
locale: rows are first put in canonical order (wnid, member, source, offset).

- Class pruning, in this order of reasons: ``not_wordnet_noun`` (not a WordNet 3.0 noun synset),
  ``excluded_subtree`` (the class or one of its WordNet hypernyms is in ``--exclude-subtree``),
  ``too_few_images`` (fewer than ``--min-images`` readable-looking members: size > 0 and an image file
  extension; the original kept a class only with *more than* 500 images after decoding).
- Validation: per kept class, the ``--val-per-class`` readable-looking members with the smallest
  seeded hash of their key.
- Train shards are class-mixed: the train samples (canonical order) are permuted by a seeded
  generator and cut into contiguous runs, so every shard holds a random sample of all classes.
- A member whose key repeats an earlier one (same class and file stem) is ``rejected: duplicate``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from in21k.dataset import sample_key, shard_name
from in21k.pipeline.options import PrepareConfig

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def readable_looking(member: str, size: int) -> bool:
    return size > 0 and member.lower().endswith(IMAGE_EXTENSIONS)


def seeded_hash(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "big")


@dataclass
class ClassDecision:
    wnid: str
    members: int
    readable: int
    kept: bool
    reason: str = ""
    index: int = -1  # class index among the kept classes (sorted wnids)


@dataclass
class ShardSpec:
    """One output shard: what the shard task reads and writes (rows in write order)."""

    split: str
    shard: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return shard_name(self.split, self.shard)


@dataclass
class Plan:
    classes: list[ClassDecision]
    shards: list[ShardSpec]
    unsharded: list[dict[str, Any]]  # manifest rows of members that are never read (dropped class, duplicate)

    @property
    def kept_wnids(self) -> list[str]:
        return [c.wnid for c in self.classes if c.kept]

    def num_samples(self, split: str) -> int:
        return sum(len(s.rows) for s in self.shards if s.split == split)


def num_train_shards(n: int, cfg: PrepareConfig) -> int:
    """Train shard count: given, or ceil(n / shard_size) rounded up to ``shard_multiple`` where sensible."""
    if n == 0:
        return 0
    if cfg.num_train_shards is not None:
        return min(cfg.num_train_shards, n)
    count = math.ceil(n / cfg.shard_size)
    rounded = math.ceil(count / cfg.shard_multiple) * cfg.shard_multiple
    # Rounding up only where shards keep at least half the target size; small datasets keep few shards.
    return rounded if n / rounded >= cfg.shard_size / 2 else count


def _excluded(wnid: str, excluded: set[str]) -> bool:
    from in21k.tree.wordnet import noun_synset, wnid_of

    if not excluded:
        return False
    if wnid in excluded:
        return True
    synset = noun_synset(wnid)
    ancestors = synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())
    return any(wnid_of(a) in excluded for a in ancestors)


def decide_classes(index: dict[str, list], cfg: PrepareConfig) -> list[ClassDecision]:
    from in21k.tree.wordnet import noun_synset

    members: Counter = Counter()
    readable: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    for wnid, member, size in zip(index["wnid"], index["member"], index["size"], strict=True):
        members[wnid] += 1
        key = (wnid, sample_key(wnid, member))
        if key in seen:
            continue
        seen.add(key)
        if readable_looking(member, size):
            readable[wnid] += 1
    excluded = set(cfg.exclude_subtree)
    decisions = []
    for wnid in sorted(members):
        if noun_synset(wnid) is None:
            reason = "not_wordnet_noun"
        elif _excluded(wnid, excluded):
            reason = "excluded_subtree"
        elif readable[wnid] < cfg.min_images:
            reason = "too_few_images"
        else:
            reason = ""
        decisions.append(ClassDecision(wnid, members[wnid], readable[wnid], kept=not reason, reason=reason))
    for i, c in enumerate(c for c in decisions if c.kept):
        c.index = i
    return decisions


def make_plan(index: dict[str, list], cfg: PrepareConfig) -> Plan:
    """The whole plan from index columns (``INDEX_COLUMNS``); deterministic for any row order."""
    order = sorted(
        range(len(index["wnid"])),
        key=lambda i: (index["wnid"][i], index["member"][i], index["source"][i], index["offset"][i]),
    )
    classes = decide_classes(index, cfg)
    by_wnid = {c.wnid: c for c in classes}
    unsharded: list[dict[str, Any]] = []
    candidates: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for i in order:
        wnid = index["wnid"][i]
        row = {
            "wnid": wnid,
            "member": index["member"][i],
            "source": index["source"][i],
            "offset": int(index["offset"][i]),
            "size": int(index["size"][i]),
            "key": sample_key(wnid, index["member"][i]),
        }
        decision = by_wnid[wnid]
        if not decision.kept:
            unsharded.append({**row, "status": "dropped_class", "reason": decision.reason})
        elif row["key"] in seen:
            unsharded.append({**row, "status": "rejected", "reason": "duplicate"})
        else:
            seen.add(row["key"])
            row["class"] = decision.index
            candidates.setdefault(wnid, []).append(row)
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for wnid in sorted(candidates):
        rows = candidates[wnid]
        good = [r for r in rows if readable_looking(r["member"], r["size"])]
        chosen = sorted(good, key=lambda r: (seeded_hash(cfg.seed, r["key"]), r["key"]))[: cfg.val_per_class]
        val_keys = {r["key"] for r in chosen}
        val.extend(sorted(chosen, key=lambda r: r["key"]))
        train.extend(r for r in rows if r["key"] not in val_keys)
    shards = _cut(train, "train", num_train_shards(len(train), cfg), seed=cfg.seed)
    n_val_shards = math.ceil(len(val) / cfg.shard_size) if val else 0
    shards += _cut(val, "validation", n_val_shards, seed=cfg.seed + 1)
    return Plan(classes, shards, unsharded)


def _cut(rows: list[dict[str, Any]], split: str, count: int, *, seed: int) -> list[ShardSpec]:
    """Permute ``rows`` with ``seed`` and cut them into ``count`` nearly equal contiguous shards."""
    if not rows:
        return []
    perm = np.random.default_rng(seed).permutation(len(rows))
    out = []
    for k, part in enumerate(np.array_split(perm, count)):
        out.append(ShardSpec(split, k, [rows[int(i)] for i in part]))
    return out
