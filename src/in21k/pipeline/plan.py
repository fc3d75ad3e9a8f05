"""The plan: which classes stay, which members go to validation, and which shard each sample lands in.

Everything here is a pure function of the index rows and the config, independent of listing order and
locale: the index (``sources.Index``) holds its rows in canonical order (wnid, member, source, offset).

- Class pruning, in this order of reasons: ``not_wordnet_noun`` (not a WordNet 3.0 noun synset),
  ``excluded_subtree`` (the class or one of its WordNet hypernyms is in ``--exclude-subtree``),
  ``too_few_images`` (fewer than ``--min-images`` readable-looking members: size > 0 and an image file
  extension, each key counted once; the original kept a class only with *more than* 500 images after
  decoding).
- Validation: per kept class, the ``--val-per-class`` readable-looking members with the smallest
  seeded hash of their key (ties, which need a 64-bit collision, broken by the key).
- Train shards are class-mixed: the train samples (canonical order) are permuted by a seeded
  generator and cut into contiguous runs, so every shard holds a random sample of all classes.
- A member whose key repeats an earlier one (same class and file stem) is ``rejected: duplicate``;
  "earlier" is canonical order, so the first of them in that order is kept.
- A class list (``--classes``) replaces the pruning: exactly its classes are kept, whatever their size, with
  class index = position in the list (the others are dropped, ``not_in_class_list``); a listed class with fewer
  than ``--min-images`` readable-looking members is kept and flagged (``few_images``).
- An input with its own split (the processed release's folders, a parquet set's split files) gives every row a
  *given split* (``GIVEN_*``). When it gives a validation split, that split is kept: its validation rows are the
  validation samples, its train rows (and, in a kept class, held-out rows such as
  ``imagenet21k_small_classes``) the train samples, and its classes are the ones it gives train or validation
  rows for (a class with held-out rows only is dropped, ``small_class``); ``--min-images`` and
  ``--val-per-class`` then decide nothing. Rows of another split (a test split) are never read
  (``rejected: other_split``). ``--resplit`` (in the job) ignores the given split.

The plan is columnar: per-member numpy arrays over the index (the hash, sort and selection steps are
vectorized or run once per class), so planning fall11's 14.2 M members needs a few hundred MB beyond
the index rather than a Python object per member. A shard's rows become a small Arrow table only when
its task is submitted (``Plan.shard_spec``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from in21k.dataset import sample_key, shard_name
from in21k.errors import DataError
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.sources import INDEX_SLICE, Index

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Member names whose file stem is already a valid key (no path, only [A-Za-z0-9_-] before the first dot):
# their key is computed in Arrow; any other name goes through ``sample_key`` itself (RE2 syntax).
_PLAIN_MEMBER = r"^[A-Za-z0-9_-]+(\.[^/]*)?$"
_PLAIN_WNID = re.compile(r"n\d{8}")
SHARD_COLUMNS = ("wnid", "member", "source", "offset", "size", "class")
# Rows whose keys and hashes are computed at a time: their Python objects and Arrow temporaries (~100 bytes a
# row) are what the allocators keep afterwards, so a small run keeps the driver's peak low.
PLAN_SLICE = 1 << 17
STATUS_DROPPED, STATUS_DUPLICATE = "dropped_class", "rejected"
# Given splits of an input that comes split (per index source; see the module docstring).
GIVEN_NONE, GIVEN_TRAIN, GIVEN_VALIDATION, GIVEN_HELD_OUT, GIVEN_OTHER = -1, 0, 1, 2, 3
# The wnid of index rows whose class the input does not give (a parquet row without a label): dropped, "unlabelled".
UNLABELLED = "unlabelled"


def readable_looking(member: str, size: int) -> bool:
    return size > 0 and member.lower().endswith(IMAGE_EXTENSIONS)


def seeded_hash(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "big")


# ----------------------------------------------------------------------------------------- per-member columns
def member_keys(wnids: Any, members: Any) -> Any:
    """``sample_key(wnid, member)`` of every row (Arrow string arrays in, one out), vectorized.

    Rows with a plain member name and a plain wnid take the Arrow path; every other row is computed by
    ``sample_key`` itself, so the result is the same for any name.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.and_(pc.match_substring_regex(members, _PLAIN_MEMBER), pc.match_substring_regex(wnids, r"^n[0-9]{8}$"))
    stem = pc.list_element(pc.split_pattern(members, ".", max_splits=1), 0)
    prefix = pc.binary_join_element_wise(wnids, "", "_")  # "nXXXXXXXX_"
    starts = pc.equal(pc.utf8_slice_codeunits(stem, 0, 10), prefix)
    keys = pc.if_else(starts, stem, pc.binary_join_element_wise(prefix, stem, ""))
    other = pc.invert(plain)
    if pc.any(other).as_py():
        rows = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        slow = [
            sample_key(w, m) for w, m in zip(wnids.take(rows).to_pylist(), members.take(rows).to_pylist(), strict=True)
        ]
        keys = pc.replace_with_mask(keys, other, pa.array(slow, pa.string()))
    return keys


def readable_mask(members: Any, sizes: np.ndarray) -> np.ndarray:
    """``readable_looking`` of every row, vectorized (non-ASCII names go through ``readable_looking``)."""
    import pyarrow.compute as pc

    lower = pc.ascii_lower(members)
    ext = np.zeros(len(members), bool)
    for e in IMAGE_EXTENSIONS:
        ext |= pc.ends_with(lower, e).to_numpy(zero_copy_only=False)
    out = ext & (sizes > 0)
    odd = np.flatnonzero(~pc.string_is_ascii(members).to_numpy(zero_copy_only=False))
    for i, name in zip(odd, members.take(odd).to_pylist(), strict=True):
        out[i] = readable_looking(name, int(sizes[i]))
    return out


def key_hashes(seed: int, keys: Any) -> np.ndarray:
    """``seeded_hash(seed, key)`` of every key, as uint64 (blake2b with the seed prefix hashed once)."""
    import pyarrow as pa

    base = hashlib.blake2b(f"{seed}/".encode(), digest_size=8)
    digests = []
    append = digests.append
    for key in keys.cast(pa.binary()).to_pylist():
        h = base.copy()
        h.update(key)
        append(h.digest())
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)


# ----------------------------------------------------------------------------------------- the plan
@dataclass
class ClassDecision:
    wnid: str
    members: int
    readable: int
    kept: bool
    reason: str = ""
    index: int = -1  # class index among the kept classes (sorted wnids, or the class list's order)
    flag: str = ""  # a kept class worth a look: "few_images" (listed by --classes, under --min-images)


@dataclass
class ShardSpec:
    """One output shard: what the shard task reads and writes.

    ``rows`` is an Arrow table with ``SHARD_COLUMNS`` (``wnid`` and ``source`` may be dictionary-encoded),
    in write order; the task derives each sample's key with ``sample_key``.
    """

    split: str
    shard: int
    rows: Any

    @property
    def filename(self) -> str:
        return shard_name(self.split, self.shard)


@dataclass(frozen=True)
class PlannedShard:
    """A shard of the plan: rows ``start:stop`` of its split's write order."""

    split: str
    shard: int
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    @property
    def filename(self) -> str:
        return shard_name(self.split, self.shard)


@dataclass
class Plan:
    index: Index | None
    classes: list[ClassDecision]
    class_index: np.ndarray  # per wnid code: its class index, or -1 for a dropped class
    orders: dict[str, np.ndarray]  # split -> index rows in write order (shards cut it into runs)
    shards: list[PlannedShard]
    unsharded: np.ndarray  # index rows never read (dropped class, duplicate key, other split), canonical order
    counts: dict[str, int] = field(default_factory=dict)  # totals for the summary
    given: np.ndarray | None = None  # per index row: its given split (GIVEN_*), for inputs that come split
    dup: np.ndarray | None = None  # per index row: a repeated key (kept beside ``given`` only)
    kept_split: bool = False  # the input's own train/validation split was kept

    @property
    def kept_wnids(self) -> list[str]:
        """The kept classes in class-index order (the tree's order)."""
        return [c.wnid for c in sorted((c for c in self.classes if c.kept), key=lambda c: c.index)]

    def num_samples(self, split: str) -> int:
        return len(self.orders.get(split, ()))

    def shard_spec(self, shard: PlannedShard) -> ShardSpec:
        """The shard's rows as a small Arrow table (what its task gets)."""
        import pyarrow as pa

        index = self._index()
        rows = self.orders[shard.split][shard.start : shard.stop]

        def local(codes: np.ndarray, values: Any) -> Any:  # a dictionary of the shard's own values only
            distinct, inverse = np.unique(codes, return_inverse=True)
            return pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)), values.take(pa.array(distinct)))

        codes = index.wnid[rows]
        table = pa.table(
            {
                "wnid": local(codes, index.wnids),
                "member": index.member.take(pa.array(rows)),
                "source": local(index.source[rows], index.sources),
                "offset": pa.array(index.offset[rows].astype(np.int64)),
                "size": pa.array(index.size[rows].astype(np.int64)),
                "class": pa.array(self.class_index[codes].astype(np.int32)),
            }
        )
        return ShardSpec(shard.split, shard.shard, table)

    def rows(self, shard: PlannedShard) -> list[dict[str, Any]]:
        """The shard's rows as dicts, with their keys (for tests and inspection; tasks use ``shard_spec``)."""
        out = self.shard_spec(shard).rows.to_pylist()
        for r in out:
            r["key"] = sample_key(r["wnid"], r["member"])
        return out

    def unsharded_columns(self, rows: np.ndarray) -> dict[str, Any]:
        """Manifest columns of never-read ``rows`` (a slice of ``unsharded``): who, why, how big."""
        import pyarrow as pa

        index = self._index()
        codes = index.wnid[rows]
        dropped = self.class_index[codes] < 0
        reasons = np.array([c.reason for c in self.classes], dtype=object)[codes]
        wnids = index.wnid_strings(rows)
        members = index.member.take(pa.array(rows))
        row_reason = np.where(dropped, reasons, "duplicate")
        if self.given is not None and self.dup is not None:  # never read, kept class, no duplicate: another split
            other = ~dropped & ~self.dup[rows] & (self.given[rows] == GIVEN_OTHER)
            row_reason = np.where(other, "other_split", row_reason)
        return {
            "wnid": wnids,
            "member": members,
            "source": index.source_strings(rows),
            "offset": pa.array(index.offset[rows].astype(np.int64)),
            "key": member_keys(wnids, members),
            "status": pa.array(np.where(dropped, STATUS_DROPPED, STATUS_DUPLICATE).tolist(), pa.string()),
            "reason": pa.array(row_reason.tolist(), pa.string()),
            "src_bytes": pa.array(index.size[rows].astype(np.int64)),
        }

    def release_index(self) -> None:
        """Drop the per-member arrays once every shard is written (the report needs only counts and shards)."""
        self.index = None
        self.orders = {}
        self.unsharded = np.empty(0, np.int64)
        self.given = self.dup = None

    def _index(self) -> Index:
        if self.index is None:
            raise RuntimeError("the plan's index was released")
        return self.index


def num_shards(n: int, cfg: PrepareConfig) -> int:
    """Shard count of a split of ``n`` samples: ceil(n / shard_size), rounded up to a multiple of ``shard_multiple``
    (the loader workers of the whole cluster) where shards then keep at least half of ``shard_size``; small
    splits keep few shards."""
    if n == 0:
        return 0
    count = math.ceil(n / cfg.shard_size)
    rounded = math.ceil(count / cfg.shard_multiple) * cfg.shard_multiple
    return rounded if n / rounded >= cfg.shard_size / 2 else count


def num_train_shards(n: int, cfg: PrepareConfig) -> int:
    """Train shard count: ``--num-train-shards`` if given (at most one shard per sample), else ``num_shards``."""
    if cfg.num_train_shards is not None:
        return min(cfg.num_train_shards, n)
    return num_shards(n, cfg)


def _excluded(wnid: str, excluded: set[str]) -> bool:
    from in21k.tree.wordnet import noun_synset, wnid_of

    if not excluded:
        return False
    if wnid in excluded:
        return True
    synset = noun_synset(wnid)
    ancestors = synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())
    return any(wnid_of(a) in excluded for a in ancestors)


def decide_classes(
    wnids: list[str],
    members: np.ndarray,
    readable: np.ndarray,
    cfg: PrepareConfig,
    *,
    class_list: list[str] | tuple[str, ...] | None = None,
    given_classes: set[str] | None = None,
) -> list[ClassDecision]:
    """Keep or drop each class (``wnids`` sorted) from its member and readable-looking counts; ``class_list``
    (``--classes``) keeps exactly its classes, in its order; ``given_classes``, the classes of a kept given
    split, replaces the size rule (module docstring)."""
    from in21k.tree.wordnet import noun_synset

    excluded = set(cfg.exclude_subtree)
    listed = {w: i for i, w in enumerate(class_list)} if class_list is not None else None
    decisions = []
    for wnid, n, r in zip(wnids, members.tolist(), readable.tolist(), strict=True):
        if wnid == UNLABELLED:
            reason = "unlabelled"
        elif listed is not None:
            reason = "" if wnid in listed else "not_in_class_list"
        elif noun_synset(wnid) is None:
            reason = "not_wordnet_noun"
        elif _excluded(wnid, excluded):
            reason = "excluded_subtree"
        elif given_classes is not None:
            reason = "" if wnid in given_classes else "small_class"
        elif r < cfg.min_images:
            reason = "too_few_images"
        else:
            reason = ""
        decision = ClassDecision(wnid, n, r, kept=not reason, reason=reason)
        if listed is not None and decision.kept:
            decision.index = listed[wnid]
            decision.flag = "few_images" if r < cfg.min_images else ""
        decisions.append(decision)
    if listed is None:
        for i, c in enumerate(c for c in decisions if c.kept):
            c.index = i
    return decisions


def check_class_list(class_list: list[str] | tuple[str, ...], available: list[str] | set[str], name: str) -> None:
    """A ``DataError`` naming the listed classes that the release does not have (the first few, and a count)."""
    have = set(available)
    missing = [w for w in class_list if w not in have]
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5:,} more" if len(missing) > 5 else "")
    raise DataError(
        f"the class list {name} has {len(missing):,} of its {len(class_list):,} classes not in this release: "
        f"{shown}. Give the release these classes come from, or a class list of this release's classes"
    )


def _order_and_check(index: Index, bounds: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its place in its class's (hash, key, row) order, whether it looks readable, whether its key
    repeats an earlier one. Works through runs of whole classes of about ``PLAN_SLICE`` rows, so the keys
    and hashes of only one run exist at a time."""
    n = index.num_rows
    order = np.empty(n, order_dtype(n))
    readable = np.empty(n, bool)
    dup = np.zeros(n, bool)
    step = PLAN_SLICE
    c = 0
    while c < len(bounds) - 1:
        a = bounds[c]
        end = c + 1
        while end < len(bounds) - 1 and bounds[end + 1] - a <= step:
            end += 1
        b = bounds[end]
        members = index.member.slice(a, b - a)
        readable[a:b] = readable_mask(members, index.size[a:b])
        hashes = key_hashes(seed, member_keys(index.wnid_strings(slice(a, b)), members))
        for k in range(c, end):
            lo, hi = bounds[k], bounds[k + 1]
            order[lo:hi] = _order_class(index, lo, hashes[lo - a : hi - a], dup)
        c = end
    return order, readable, dup


def _order_class(index: Index, a: int, h: np.ndarray, dup: np.ndarray) -> np.ndarray:
    """Rows ``a:a + len(h)`` (one class, hashes ``h``) ordered by (hash, key, row); marks all but the first
    of equal keys in ``dup``."""
    o = np.argsort(h, kind="stable")  # equal hashes stay in row order
    hs = h[o]
    ties = np.flatnonzero(hs[1:] == hs[:-1])
    if ties.size == 0:
        return o + a
    # Equal hashes: the same key (a duplicate) or, once in ~10^19, a collision. Settle them by the key.
    wnid = index.wnids[int(index.wnid[a])].as_py()
    i = 0
    while i < ties.size:
        j = i
        while j + 1 < ties.size and ties[j + 1] == ties[j] + 1:
            j += 1
        lo, hi = int(ties[i]), int(ties[j]) + 2
        group = o[lo:hi].copy()
        keys = [sample_key(wnid, index.member[int(r) + a].as_py()) for r in group]
        ranked = sorted(range(len(group)), key=lambda k: keys[k])  # stable: equal keys stay in row order
        o[lo:hi] = group[ranked]
        for prev, cur in zip(ranked, ranked[1:], strict=False):
            if keys[cur] == keys[prev]:
                dup[int(group[cur]) + a] = True
        i = j + 1
    return o + a


def _cut(split: str, n: int, count: int) -> list[PlannedShard]:
    """``count`` nearly equal contiguous runs of ``n`` rows (``numpy.array_split``'s sizes)."""
    if n == 0:
        return []
    q, r = divmod(n, count)
    sizes = [q + 1] * r + [q] * (count - r)
    ends = np.cumsum(sizes).tolist()
    return [PlannedShard(split, k, end - size, end) for k, (size, end) in enumerate(zip(sizes, ends, strict=True))]


def make_plan(
    index: Index | dict[str, list],
    cfg: PrepareConfig,
    *,
    class_list: list[str] | tuple[str, ...] | None = None,
    given: np.ndarray | None = None,
) -> Plan:
    """The whole plan from the index (or its columns as lists, ``INDEX_COLUMNS``); deterministic for any
    listing order (the index is canonical).

    ``class_list``: the classes and their order (``--classes``); each must be in the index. ``given``: per index
    *source* code, the given split of an input that comes split (``GIVEN_*``; module docstring).
    """
    if isinstance(index, dict):
        index = Index.from_columns(index)
    n = index.num_rows
    wnids = index.wnids.to_pylist()
    if class_list is not None:
        check_class_list(class_list, wnids, "given")
    row_given = np.asarray(given, np.int8)[index.source] if given is not None else None
    kept_split = row_given is not None and bool((row_given == GIVEN_VALIDATION).any())
    other = row_given == GIVEN_OTHER if row_given is not None else np.False_  # no row of another split
    bounds = np.searchsorted(index.wnid, np.arange(len(wnids) + 1)).tolist()  # rows of wnid c: bounds[c]:bounds[c+1]
    order, readable, dup = _order_and_check(index, bounds, cfg.seed)  # order: per class, by (hash, key, row)
    eligible = readable & ~dup & ~other  # a validation candidate; also what --min-images counts (each key once)
    members = np.diff(np.asarray(bounds, np.int64))
    if n and members.min() > 0:
        readable_per_class = np.add.reduceat(eligible.view(np.uint8), bounds[:-1], dtype=np.int64)
    else:
        readable_per_class = np.bincount(index.wnid[eligible], minlength=len(wnids))
    given_classes = None
    if kept_split:
        split_rows = (row_given == GIVEN_TRAIN) | (row_given == GIVEN_VALIDATION)
        given_classes = {wnids[c] for c in np.unique(index.wnid[split_rows]).tolist()}
        del split_rows
    classes = decide_classes(
        wnids, members, readable_per_class, cfg, class_list=class_list, given_classes=given_classes
    )
    class_index = np.array([c.index for c in classes], dtype=np.int64)
    kept_codes = [c for c, d in enumerate(classes) if d.kept]
    kept_row = (class_index >= 0)[index.wnid]

    if kept_split:  # the input's own validation rows
        is_val = kept_row & ~dup & (row_given == GIVEN_VALIDATION)
        val_rows = _rows_where(is_val, order_dtype(n))
        del order, eligible
    else:  # the first --val-per-class eligible rows of each kept class in (hash, key) order
        is_val = np.zeros(n, bool)
        picks = []
        for c in kept_codes:
            rows = order[bounds[c] : bounds[c + 1]]
            chosen = rows[eligible[rows]][: cfg.val_per_class]
            is_val[chosen] = True
            picks.append(chosen)
        del order, eligible
        val_rows = np.concatenate(picks) if picks else np.empty(0, np.int64)
    val_order = _by_class_then_key(index, val_rows)

    # Shuffling the samples in place is rows[default_rng(seed).permutation(len(rows))] (the same draws,
    # tested), without the int64 permutation beside them.
    train_order = _rows_where(kept_row & ~dup & ~is_val & ~other, order_dtype(n))
    del is_val
    np.random.default_rng(cfg.seed).shuffle(train_order)
    val_order = val_order.astype(order_dtype(n))
    np.random.default_rng(cfg.seed + 1).shuffle(val_order)
    shards = _cut("train", len(train_order), num_train_shards(len(train_order), cfg))
    shards += _cut("validation", len(val_order), num_shards(len(val_order), cfg))
    unsharded = _rows_where(~kept_row | dup | other, order_dtype(n))
    planned = kept_row & ~dup & ~other
    counts = {
        "raw_members": n,
        "raw_bytes": int(index.size.sum(dtype=np.int64)),
        "to_read": int(planned.sum()),
        "to_read_bytes": int(index.size.sum(dtype=np.int64, where=planned)),
        "to_read_not_readable_looking": int((planned & ~readable).sum()),
        "dropped_class": int((~kept_row).sum()),
        "duplicate": int((kept_row & dup).sum()),
        "other_split": int((kept_row & ~dup & other).sum()),
    }
    if row_given is not None:  # what the input's own split holds, whether kept or not (the release's identity)
        for name, code in (
            ("train", GIVEN_TRAIN),
            ("validation", GIVEN_VALIDATION),
            ("held_out", GIVEN_HELD_OUT),
            ("other", GIVEN_OTHER),
        ):
            counts[f"given_{name}"] = int((row_given == code).sum())
        split_rows = (row_given == GIVEN_TRAIN) | (row_given == GIVEN_VALIDATION)
        counts["split_classes"] = len(np.unique(index.wnid[split_rows]))
    return Plan(
        index,
        classes,
        class_index,
        {"train": train_order, "validation": val_order},
        shards,
        unsharded,
        counts,
        given=row_given,
        dup=dup if row_given is not None else None,
        kept_split=kept_split,
    )


def order_dtype(n: int) -> type:
    return np.int64 if n >= 2**31 else np.int32


def _rows_where(mask: np.ndarray, dtype: type) -> np.ndarray:
    """``np.flatnonzero(mask)`` as ``dtype``, built in slices (no int64 copy of a 10^7-row result)."""
    out = np.empty(int(np.count_nonzero(mask)), dtype)
    at = 0
    for a in range(0, len(mask), INDEX_SLICE):
        rows = np.flatnonzero(mask[a : a + INDEX_SLICE]) + a
        out[at : at + len(rows)] = rows
        at += len(rows)
    return out


def _by_class_then_key(index: Index, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by (wnid, key): the validation samples in canonical class order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(rows):
        return rows
    keys = member_keys(index.wnid_strings(rows), index.member.take(pa.array(rows)))
    table = pa.table({"c": index.wnid[rows], "k": keys})
    order = pc.sort_indices(table, sort_keys=[("c", "ascending"), ("k", "ascending")]).to_numpy()
    return rows[order]
