"""The clean-data stage of ``prepare``: once every shard is written, find the copies inside the release and the
matches with evaluation sets, decide what goes, and rewrite the shards without it. No Ray here: the job
(``in21k.pipeline.job``) runs the join's tables and the shard rewrites as Ray tasks through the functions below.

Order of work, and why. The raw release is read and decoded once, by the shard tasks, which write every image
that decodes together with its fingerprints (``in21k.pipeline.fingerprint``) in the manifest. Only when all
fingerprints exist can copies be found, so removing them costs a second write of the affected output shards: a
byte copy of the kept tar members, no decode and no re-encode.

1. ``load_release``: the fingerprints of every decoded member from the manifest (a few columns, ~29 bytes a
   member: fall11 needs ~0.4 GB on the driver; its whole clean stage peaks at 1.7 GB, docs/scaling.md).
2. ``decide``: exact copies (equal ``pixel_hash`` and ``phash``) collapse to one representative; the
   representatives and the evaluation images go through the join (``in21k.pipeline.dedup``), which verifies the
   candidate pairs within ``--dedup-distance`` on their colour grids (``--dedup-color-distance``; the job reads
   the grids into Ray's object store with ``colors_of``); matched pairs form groups; the policies decide,
   vectorized. The decisions (``DECISIONS_FILE``) and their summary (``SUMMARY_FILE``, written last: it marks
   them complete) are kept under ``_work/``: a rerun reuses them.
3. ``rewrite_shard``: for each shard with decided members, the tar without the removed samples (their places
   are closed up: the shard is shorter, every other sample keeps its bytes and order), its manifest part with
   the new statuses, and last its stats file, which records the decisions' digest (``clean``) and so marks the
   shard done. Shard count and names stay; ``_info.json`` lists each shard with its true length.

Policies (``PrepareConfig``):

- ``--duplicates-in-class keep-one`` (default) keeps one copy of a picture per class; ``keep-all`` keeps all.
- ``--duplicates-across-classes drop-all`` (default) removes every copy of a picture filed under two or more
  classes: one image with two contradicting single labels teaches the softmax nothing right, and which class is
  right is not known. ``keep-one`` keeps the copy in the most specific class (deepest in the tree), ``keep-all``
  leaves the classes alone (then ``--duplicates-in-class`` applies within each).
- Evaluation matches (``--against``) are always removed, from train and validation.

The copy kept is the first by: validation before train (the validation split keeps its size), more source
pixels, smaller key. A removed member's ``match`` is the key of the member kept (or, where the whole group goes,
of the group's first member; that member's own ``match`` is the second); evaluation matches name
``NAME:member``. Every member of a group, kept or not, gets ``dup_group``: the key of the group's first member.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from in21k import tarformat
from in21k.dataset import DatasetWriter, ShardTarWriter, manifest_name, shard_name, split_member, stats_name
from in21k.pipeline.dedup import components, exact_copies, scan_tables, split_pairs, tables
from in21k.pipeline.fingerprint import COLOR_BYTES, colors_array
from in21k.pipeline.options import DEDUP_COLOR_DISTANCE, DEDUP_DISTANCE
from in21k.storage import Store

log = logging.getLogger(__name__)

CLEAN_DIR = "_work/clean"
DECISIONS_FILE = f"{CLEAN_DIR}/decisions.parquet"
SUMMARY_FILE = f"{CLEAN_DIR}/summary.json"  # written after the decisions: marks them complete
CLEAN_SCHEMA = "in21k.clean/1"
PAIRS_PICTURE = "report_pairs.png"  # next to report.md: matched pairs at and near the thresholds, side by side
REASON_IN_CLASS = "duplicate_in_class"
REASON_ACROSS = "duplicate_across_classes"
REASON_EVAL = "eval_match"
CLEAN_REASONS = (REASON_IN_CLASS, REASON_ACROSS, REASON_EVAL)
PARTS_PER_READ = 256  # manifest parts read back at a time
SAMPLES_PER_KIND = 6  # pairs of each kind in the picture
DECISION_COLUMNS = (
    ("part", "int32"),
    ("position", "int32"),
    ("status", "string"),
    ("reason", "string"),
    ("match", "string"),
    ("match_distance", "int16"),
    ("dup_group", "string"),
)


@dataclass
class Policy:
    dedup: bool = True
    max_distance: int = DEDUP_DISTANCE
    max_color_distance: float = DEDUP_COLOR_DISTANCE
    in_class: str = "keep-one"
    across_classes: str = "drop-all"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Release:
    """The decoded members of the release, as columns: where each is (manifest part, row in it) and its
    fingerprints, class and split."""

    part: np.ndarray  # int32: index into the list of manifest parts
    position: np.ndarray  # int32: row in that part
    phash: np.ndarray  # uint64
    pixel_hash: np.ndarray  # uint64
    cls: np.ndarray  # int32: class index (-1: not a kept class)
    val: np.ndarray  # bool: in the validation split
    pixels: np.ndarray  # int32: source width x height (capped at 2^31 - 1)

    def __len__(self) -> int:
        return len(self.phash)


@dataclass
class EvalImages:
    """The readable images of all evaluation sets, as columns."""

    set_index: np.ndarray  # int16: which set
    member: list[str]
    phash: np.ndarray
    colors: np.ndarray  # (n, COLOR_BYTES) uint8
    names: list[str]  # the sets' names, by set_index


def manifest_parts(shards: list[tuple[str, int]]) -> list[str]:
    return [manifest_name(split, shard) for split, shard in shards]


def _read_parts(store: Store, names: list[str], columns: list[str]) -> Iterator[tuple[int, Any]]:
    """``(first part index, table)`` of each manifest part, a few hundred at a time."""
    import pyarrow.parquet as pq

    for a in range(0, len(names), PARTS_PER_READ):
        for k, blob in enumerate(store.read_many(names[a : a + PARTS_PER_READ])):
            yield a + k, pq.read_table(io.BytesIO(blob), columns=columns)


_RELEASE_TYPES = {
    "part": np.int32,
    "position": np.int32,
    "phash": np.uint64,
    "pixel_hash": np.uint64,
    "cls": np.int32,
    "val": bool,
    "pixels": np.int32,
}


def load_release(store: Store, parts: list[str], class_of: dict[str, int], rows: int = 0) -> Release:
    """Fingerprints and placement of every decoded member (``phash`` set) of the manifest ``parts``.

    ``rows``: at least the members the parts hold (the plan's count): the columns are allocated once, at that
    size, and filled as the parts are read (a few hundred at a time), so no table is held until a concatenation;
    without it they grow by doubling. Class codes come from Arrow (no Python object per member). fall11's ~12.4 M
    decoded members take ~0.4 GB.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    known = pa.array(sorted(class_of), pa.string())
    codes = np.array([class_of[w] for w in known.to_pylist()] + [-1], np.int32)  # index_in's null -> -1
    cols = {k: np.empty(max(rows, 1 << 16), t) for k, t in _RELEASE_TYPES.items()}
    n = 0
    removed = pa.array(CLEAN_REASONS, pa.string())
    columns = ["wnid", "split", "phash", "pixel_hash", "src_width", "src_height", "reason"]
    for p, table in _read_parts(store, parts, columns):
        # Members an earlier duplicate check already cut out of their shard are not in the release any more.
        gone = pc.is_in(table.column("reason"), value_set=removed).fill_null(False)
        valid = pc.and_(table.column("phash").is_valid(), pc.invert(gone)).to_numpy(zero_copy_only=False)
        k = int(valid.sum())
        if not k:
            continue
        t = table.filter(valid)
        if n + k > len(cols["part"]):
            size = max(2 * len(cols["part"]), n + k)
            for name in cols:
                grown = np.empty(size, cols[name].dtype)
                grown[:n] = cols[name][:n]
                cols[name] = grown
        cols["part"][n : n + k] = p
        cols["position"][n : n + k] = np.flatnonzero(valid)
        cols["phash"][n : n + k] = t.column("phash").to_numpy()
        cols["pixel_hash"][n : n + k] = t.column("pixel_hash").fill_null(0).to_numpy()
        wnid = pc.index_in(t.column("wnid"), value_set=known).fill_null(len(known))
        cols["cls"][n : n + k] = codes[wnid.to_numpy()]
        cols["val"][n : n + k] = pc.equal(t.column("split"), "validation").fill_null(False).to_numpy()
        width = t.column("src_width").fill_null(0).to_numpy().astype(np.int64)
        cols["pixels"][n : n + k] = np.minimum(width * t.column("src_height").fill_null(0).to_numpy(), 2**31 - 1)
        n += k
    pa.default_memory_pool().release_unused()  # mimalloc keeps what the parts' tables used otherwise
    # Views, not copies: what is left unused is the members that did not decode (or the doubling's slack).
    return Release(**{name: col[:n] for name, col in cols.items()})


def load_details(
    store: Store, parts: list[str], release: Release, rows: np.ndarray, columns: tuple[str, ...] = ("colors",)
) -> dict[str, Any]:
    """``columns`` (of ``colors``, ``key``, ``source``, ``offset``, ``src_bytes``) of the release ``rows`` (indices
    into ``release``), read from the manifest parts that hold them, a few hundred parts at a time.
    ``colors`` is an (n, COLOR_BYTES) array, ``offset`` and ``src_bytes`` int64 arrays, ``key`` and ``source`` Arrow
    string arrays."""
    return read_rows(store, parts, release.part[rows], release.position[rows], columns)


def read_rows(
    store: Store, parts: list[str], part: np.ndarray, position: np.ndarray, columns: tuple[str, ...]
) -> dict[str, Any]:
    """``load_details`` of the rows at ``position`` of manifest parts ``part`` (indices into ``parts``)."""
    import pyarrow as pa

    n = len(part)
    out: dict[str, Any] = {}
    pieces: dict[str, list[Any]] = {}
    for name in columns:
        if name == "colors":
            out[name] = np.zeros((n, COLOR_BYTES), np.uint8)
        elif name in ("offset", "src_bytes"):
            out[name] = np.zeros(n, np.int64)
        else:
            pieces[name] = []
    placed: list[np.ndarray] = []
    if n:
        wanted_parts = np.unique(part)
        order = np.lexsort((position, part))
        bounds = np.searchsorted(part[order], np.append(wanted_parts, wanted_parts[-1] + 1))
        names = [parts[int(p)] for p in wanted_parts]
        for k, table in _read_parts(store, names, list(columns)):
            at = order[bounds[k] : bounds[k + 1]]
            sub = table.take(position[at])
            placed.append(at)
            for name in columns:
                if name == "colors":
                    out[name][at] = colors_array(sub.column(name))
                elif name in ("offset", "src_bytes"):
                    out[name][at] = sub.column(name).to_numpy()
                else:
                    pieces[name].append(sub.column(name).combine_chunks())
    # String columns stay Arrow arrays (no Python object per member), put back in the order asked for.
    inverse = np.empty(n, np.int64)
    if n:
        inverse[np.concatenate(placed)] = np.arange(n)
    for name, chunks in pieces.items():
        values = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
        out[name] = values.take(pa.array(inverse))
    pa.default_memory_pool().release_unused()  # mimalloc keeps what the parts' tables used otherwise
    return out


def load_evals(store: Store, names: list[str]) -> EvalImages:
    """The cached fingerprints (``in21k.pipeline.against``) of the evaluation sets ``names``, readable images only."""
    import pyarrow.parquet as pq

    from in21k.pipeline.against import cache_names

    sets, members, hashes, colors = [], [], [], []
    for k, name in enumerate(names):
        table = pq.read_table(io.BytesIO(store.read_bytes(cache_names(name)[0])))
        table = table.filter(table.column("phash").is_valid())
        sets.append(np.full(table.num_rows, k, np.int16))
        members += table.column("member").to_pylist()
        hashes.append(table.column("phash").to_numpy().astype(np.uint64))
        colors.append(colors_array(table.column("colors")))
    return EvalImages(
        np.concatenate(sets) if sets else np.empty(0, np.int16),
        members,
        np.concatenate(hashes) if hashes else np.empty(0, np.uint64),
        np.concatenate(colors) if colors else np.empty((0, COLOR_BYTES), np.uint8),
        names,
    )


# ----------------------------------------------------------------------------------------- deciding
def colors_of(
    out: str,
    storage_options: dict[str, Any] | None,
    parts: list[str],
    part: np.ndarray,
    position: np.ndarray,
    more: np.ndarray,
) -> np.ndarray:
    """The colour grids of the rows at ``position`` of manifest parts ``part``, then the rows ``more``: what the
    join's tasks verify pairs with (a Ray task of the job: the array goes to the object store, not the driver)."""
    return np.concatenate([read_rows(Store(out, storage_options), parts, part, position, ("colors",))["colors"], more])


def _return_freed_arrays() -> None:
    """Make glibc give freed numpy arrays back to the system (a fixed 1 MiB mmap threshold).

    glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so arrays of up to that size
    then come from its heap and stay in the process when freed: at fall11's size ~0.2 GB of the driver's peak
    (measured with ``scripts/dedup_scale.py``). Nothing happens where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def join_in_process(
    release: Release, reps: np.ndarray, evals: EvalImages, policy: Policy, details: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """The join (``dedup.scan_tables``, every table, colour check included) over the release members ``reps`` and
    the evaluation images, in this process (``in21k.pipeline.job`` runs it as Ray tasks)."""
    hashes = np.concatenate([release.phash[reps], evals.phash])
    colors = np.concatenate([details(reps, ("colors",))["colors"], evals.colors])
    return scan_tables(hashes, range(len(tables())), policy.max_distance, colors, policy.max_color_distance)


def decide(
    release: Release,
    details: Callable[..., dict[str, Any]],
    evals: EvalImages,
    policy: Policy,
    depth: np.ndarray,
    join: Callable[[Release, np.ndarray, EvalImages, Policy], dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The decisions (an Arrow table, ``DECISION_COLUMNS``, sorted by part and position) and their summary.

    ``details(rows, columns)`` reads ``load_details`` of release rows; ``depth[c]`` is class ``c``'s depth in the
    tree; ``join(release, reps, evals, policy)`` returns the verified pairs of ``dedup.scan_tables`` over the
    release members ``reps`` followed by the evaluation images (default: ``join_in_process``). The colour check
    runs inside the join: at fall11's size the pairs within the hash distance (look-alikes, mostly) are tens of
    millions and are never gathered; keys are read for the members of groups and evaluation matches only.
    """
    import pyarrow.compute as pc

    _return_freed_arrays()
    t0 = time.perf_counter()
    n = len(release)
    if policy.dedup:  # exact copies of another member (equal colours confirm them below)
        copies, rep_of_copies = exact_copies(release.pixel_hash, release.phash)
    else:
        copies = rep_of_copies = np.empty(0, np.int64)
    own = np.ones(n, bool)
    own[copies] = False
    reps = np.flatnonzero(own).astype(np.int32 if n < 2**31 else np.int64)
    del own
    # The exact hash has done its work; its 8 bytes a member are what the driver can give back (fall11: 0.1 GB).
    release.pixel_hash = release.pixel_hash[:0]
    if len(reps) + len(evals.phash) > 1:
        joined = (join or (lambda *a: join_in_process(*a, details=details)))(release, reps, evals, policy)
    else:
        joined = scan_tables(np.zeros(0, np.uint64), [], colors=np.zeros((0, COLOR_BYTES), np.uint8))
    timings = {"join": time.perf_counter() - t0}
    a, b = split_pairs(joined["pairs"])
    d, cd = joined["distances"].astype(np.int16), joined["color_distances"]
    n_left = len(reps)
    both = (a < n_left) & (b < n_left)
    to_eval = (a < n_left) & (b >= n_left)  # a < b, so the evaluation image is always b
    near_i, near_j, near_d, near_cd = reps[a[both]], reps[b[both]], d[both], cd[both]
    if not policy.dedup:
        near_i, near_j, near_d, near_cd = near_i[:0], near_j[:0], near_d[:0], near_cd[:0]
    ev_row, ev_k, ev_d, ev_cd = reps[a[to_eval]], b[to_eval] - n_left, d[to_eval], cd[to_eval]
    ra, rb = split_pairs(joined["rejected"][0])
    rr = (ra < n_left) & (rb < n_left)
    rejected = (reps[ra[rr]], reps[rb[rr]], joined["rejected"][1][rr], joined["rejected"][2][rr])
    join_counts = {k: int(joined[k]) for k in ("candidates", "within", "truncated")}
    verified = len(joined["pairs"])
    del joined, a, b, d, cd, both, to_eval  # the driver's peak is in what follows: keep only what it needs
    t = time.perf_counter()
    both_ends = np.unique(np.concatenate([copies, rep_of_copies]))
    copy_colors = details(both_ends, ("colors",))["colors"]
    at_end = np.searchsorted(both_ends, copies), np.searchsorted(both_ends, rep_of_copies)
    copy_ok = (copy_colors[at_end[0]] == copy_colors[at_end[1]]).all(axis=1) if len(copies) else np.zeros(0, bool)
    timings["exact_copies"] = time.perf_counter() - t
    involved = np.unique(np.concatenate([near_i, near_j, ev_row, copies, rep_of_copies]))

    def idx(rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(involved, rows)

    # Evaluation matches: the matched representative and its exact copies; for each, its closest evaluation image.
    eval_match: dict[int, tuple[int, int]] = {}  # row -> (evaluation image, distance)
    order = np.lexsort((ev_k, ev_cd, ev_d))
    for r, k, dist in zip(ev_row[order].tolist(), ev_k[order].tolist(), ev_d[order].tolist(), strict=True):
        eval_match.setdefault(r, (k, dist))
    for c, r in zip(copies[copy_ok].tolist(), rep_of_copies[copy_ok].tolist(), strict=True):
        if r in eval_match:
            eval_match[c] = eval_match[r]

    # Groups: connected components of verified pairs, over the involved members.
    ei = np.concatenate([idx(near_i), idx(copies[copy_ok])])
    ej = np.concatenate([idx(near_j), idx(rep_of_copies[copy_ok])])
    label = components(len(involved), ei, ej) if policy.dedup else np.arange(len(involved))
    grouped = np.flatnonzero(np.bincount(label, minlength=len(involved))[label] >= 2)
    matched = np.zeros(len(involved), bool)
    matched[idx(np.array(sorted(eval_match), np.int64))] = True
    keyed = np.union1d(grouped, np.flatnonzero(matched))  # indices into involved whose keys are needed
    t = time.perf_counter()
    keys = details(involved[keyed], ("key",))["key"]  # an Arrow string array, aligned with keyed
    timings["keys"] = time.perf_counter() - t
    table, counts, heads = _apply_policies(release, involved, label, grouped, matched, keyed, keys, depth, policy)
    table = _with_eval_matches(table, release, involved, idx, eval_match, evals, label, grouped, heads)
    counted = pc.value_counts(table.column("reason").drop_null()).to_pylist()
    reasons: Counter = Counter({c["values"]: c["counts"] for c in counted})

    summary = {
        "schema": CLEAN_SCHEMA,
        "policy": policy.as_dict(),
        "fingerprinted": n,
        "exact_copies": int(copy_ok.sum()),
        "join": {
            "hashes": int(n_left + len(evals.phash)),
            "candidates": join_counts["candidates"],
            "within_distance": join_counts["within"],
            "truncated": join_counts["truncated"],
        },
        "near_pairs": {  # every pair within the hash distance: of the release, and with evaluation images
            "within_distance": join_counts["within"],
            "verified": verified,
            "rejected_by_colour": join_counts["within"] - verified,
        },
        **counts,
        "removed": {r: reasons[r] for r in CLEAN_REASONS},
        "eval_sets": _eval_summary(evals, ev_k, eval_match),
        "samples": _samples(details, (near_i, near_j, near_d, near_cd), rejected, (ev_row, ev_k, ev_d, ev_cd), evals),
        "timings": {k: round(v, 2) for k, v in {**timings, "decide": time.perf_counter() - t0}.items()},
    }
    return table, summary


def _keeping_order(
    release: Release, rows: np.ndarray, label: np.ndarray, key_rank: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """The order that decides which copy is kept: by group, then the deepest class, validation before train, more
    source pixels, the smaller key."""
    cls = release.cls[rows]
    deep = np.where(cls >= 0, depth[np.maximum(cls, 0)], 0)
    return np.lexsort((key_rank, -release.pixels[rows].astype(np.int64), ~release.val[rows], -deep, label))


def _apply_policies(
    release: Release,
    involved: np.ndarray,
    label: np.ndarray,
    grouped: np.ndarray,
    matched: np.ndarray,
    keyed: np.ndarray,
    keys: Any,
    depth: np.ndarray,
    policy: Policy,
) -> tuple[Any, dict[str, int], tuple[np.ndarray, Any]]:
    """The decisions of the members of groups that no evaluation image matched, as an Arrow table; vectorized
    (fall11 has ~10^6 groups), in the rules of the module docstring. Also the counts, and each group's label with
    the key that names it (``dup_group``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rank = np.empty(len(keyed), np.int64)
    rank[pc.sort_indices(keys).to_numpy()] = np.arange(len(keyed))
    kpos = np.searchsorted(keyed, grouped)  # where each grouped member's key is
    order = _keeping_order(release, involved[grouped], label[grouped], rank[kpos], depth)
    members, kpos = grouped[order], kpos[order]  # S: group members in keeping order
    lab = label[members]
    cls = release.cls[involved[members]].astype(np.int64)
    free = ~matched[members]
    size = len(members)
    new_group = np.r_[True, lab[1:] != lab[:-1]] if size else np.zeros(0, bool)
    start = np.flatnonzero(new_group)
    gid = np.cumsum(new_group) - 1
    pair = np.unique(gid * (int(cls.max(initial=0)) + 2) + cls + 1)  # distinct (group, class)
    across = np.bincount(pair // (int(cls.max(initial=0)) + 2), minlength=len(start)) > 1
    first_free = np.full(len(start), -1, np.int64)
    second_free = np.full(len(start), -1, np.int64)
    at_free = np.flatnonzero(free)
    groups_free, first_at = np.unique(gid[at_free], return_index=True)
    first_free[groups_free] = at_free[first_at]
    after = first_at + 1
    ok = after < len(at_free)
    ok[ok] = gid[at_free[after[ok]]] == groups_free[ok]
    second_free[groups_free[ok]] = at_free[after[ok]]
    reason = np.full(size, -1, np.int8)  # index into CLEAN_REASONS, -1: kept
    match = np.full(size, -1, np.int64)  # position in members of the copy a removed member names
    positions = np.arange(size)
    remaining = free.copy()
    if policy.across_classes == "drop-all":
        drop = free & across[gid]
        reason[drop] = CLEAN_REASONS.index(REASON_ACROSS)
        match[drop] = first_free[gid[drop]]
        first = drop & (positions == first_free[gid])  # the first names the second free one, else the second one
        second = second_free[gid[first]]
        match[first] = np.where(second >= 0, second, start[gid[first]] + 1)
        remaining &= ~drop
    elif policy.across_classes == "keep-one":
        chosen = across & (first_free >= 0)
        kept_class = np.where(chosen, cls[np.maximum(first_free, 0)], -2)
        other = remaining & chosen[gid] & (cls != kept_class[gid])
        reason[other] = CLEAN_REASONS.index(REASON_ACROSS)
        match[other] = first_free[gid[other]]
        remaining &= ~other
    if policy.in_class == "keep-one":
        at = np.flatnonzero(remaining)
        _, first_at, inverse = np.unique(
            gid[at] * (int(cls.max(initial=0)) + 2) + cls[at] + 1, return_index=True, return_inverse=True
        )
        kept = at[first_at][inverse]
        extra = at[at != kept]
        reason[extra] = CLEAN_REASONS.index(REASON_IN_CLASS)
        match[extra] = kept[at != kept]
    head_kpos = np.searchsorted(keyed, members[start]) if size else np.zeros(0, np.int64)
    heads = (lab[start], head_kpos)
    all_members = members
    out = ~matched[members]  # evaluation matches are decided in _with_eval_matches
    members, reason, match, gid = members[out], reason[out], match[out], gid[out]
    del kpos, lab, cls, free, new_group, positions, remaining, out
    rows = involved[members]
    placed = np.lexsort((release.position[rows], release.part[rows]))  # the table in manifest order
    rows, reason, match, gid = rows[placed], reason[placed], match[placed], gid[placed]
    removed = reason >= 0
    match_at = all_members[np.maximum(match, 0)]  # indices into involved (where kept: any, masked below)
    distance = np.bitwise_count(release.phash[rows] ^ release.phash[involved[match_at]]).astype(np.int16)
    names = pa.array(list(CLEAN_REASONS), pa.string())
    table = pa.table(
        {
            "part": pa.array(release.part[rows], pa.int32()),
            "position": pa.array(release.position[rows], pa.int32()),
            "status": pa.DictionaryArray.from_arrays(
                pa.array(removed.astype(np.int8)), pa.array(["written", "rejected"])
            ).cast(pa.string()),
            "reason": pa.DictionaryArray.from_arrays(pa.array(reason, mask=~removed), names).cast(pa.string()),
            "match": keys.take(pa.array(np.searchsorted(keyed, match_at), mask=~removed)),
            "match_distance": pa.array(distance, pa.int16(), mask=~removed),
            "dup_group": keys.take(pa.array(head_kpos[gid])),
        }
    )
    counts = {"groups": len(start), "groups_across_classes": int(across.sum()), "members_in_groups": size}
    # groups by label (ascending), and the keys that name them
    return table, counts, (heads[0], keys.take(pa.array(heads[1])))


def _with_eval_matches(
    table: Any,
    release: Release,
    involved: np.ndarray,
    idx: Callable,
    eval_match: dict,
    evals: EvalImages,
    label: np.ndarray,
    grouped: np.ndarray,
    heads: tuple[np.ndarray, Any],
) -> Any:
    """``table`` with the evaluation matches added (each names its closest evaluation image; a member of a group
    keeps its group's ``dup_group``), sorted by manifest part and position."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if eval_match:
        rows = np.array(sorted(eval_match), np.int64)
        at = idx(rows)
        in_group = np.isin(at, grouped)
        group_of = np.searchsorted(heads[0], label[at])
        dup_group = (
            heads[1].take(pa.array(np.where(in_group, group_of, 0), mask=~in_group))
            if len(heads[0])
            else (pa.nulls(len(rows), pa.string()))
        )
        images = [eval_match[r][0] for r in rows.tolist()]
        extra = pa.table(
            {
                "part": pa.array(release.part[rows], pa.int32()),
                "position": pa.array(release.position[rows], pa.int32()),
                "status": pa.array(["rejected"] * len(rows), pa.string()),
                "reason": pa.array([REASON_EVAL] * len(rows), pa.string()),
                "match": pa.array(
                    [f"{evals.names[evals.set_index[k]]}:{evals.member[k]}" for k in images], pa.string()
                ),
                "match_distance": pa.array([eval_match[r][1] for r in rows.tolist()], pa.int16()),
                "dup_group": dup_group,
            }
        )
        table = pa.concat_tables([table, extra])
        order = pc.sort_indices(table, sort_keys=[("part", "ascending"), ("position", "ascending")])
        table = table.take(order)
    return table


def _eval_summary(evals: EvalImages, matched_images: np.ndarray, eval_match: dict[int, tuple[int, int]]) -> list:
    out = []
    hit_sets = Counter(int(evals.set_index[k]) for k, _ in eval_match.values())
    for s, name in enumerate(evals.names):
        images = {int(k) for k in matched_images.tolist() if evals.set_index[k] == s}
        out.append(
            {
                "name": name,
                "readable": int((evals.set_index == s).sum()),
                "matched_images": len(images),
                "matched_release_members": hit_sets[s],
            }
        )
    return out


def _samples(
    details: Callable[..., dict[str, Any]], accepted: tuple, rejected: tuple, matched: tuple, evals: EvalImages
) -> dict[str, list]:
    """Pairs for the report's picture: accepted ones with the largest distances, the rejected ones closest in colour,
    and evaluation matches with the largest distances (their keys and where their bytes are, read for them only).
    Each of ``accepted``, ``rejected``, ``matched`` is (rows, rows or evaluation images, distances, colour
    distances)."""
    picks: list[tuple[str, int, Any, int, float]] = []  # (kind, left row, right row or evaluation image, d, cd)
    for kind, (left, right, d, cd) in (("accepted", accepted), ("rejected", rejected), ("eval", matched)):
        order = np.lexsort((d, cd)) if kind == "rejected" else np.lexsort((-cd, -d))
        for k in order[:SAMPLES_PER_KIND].tolist():
            other = ("eval", int(right[k])) if kind == "eval" else int(right[k])
            picks.append((kind, int(left[k]), other, int(d[k]), float(cd[k])))
    rows = np.unique([r for p in picks for r in (p[1], p[2]) if isinstance(r, int)]).astype(np.int64)
    info = details(rows, ("key", "source", "offset", "src_bytes"))

    def side(row: int) -> dict[str, Any]:
        k = int(np.searchsorted(rows, row))
        return {
            "key": info["key"][k].as_py(),
            "source": info["source"][k].as_py(),
            "offset": int(info["offset"][k]),
            "size": int(info["src_bytes"][k]),
        }

    out: dict[str, list] = {"accepted": [], "rejected": [], "eval": []}
    for kind, left, right, d, cd in picks:
        if isinstance(right, tuple):
            e = right[1]
            right_side = {"eval": evals.names[evals.set_index[e]], "member": evals.member[e]}
        else:
            right_side = side(right)
        out[kind].append({"left": side(left), "right": right_side, "distance": d, "color_distance": round(cd, 2)})
    return out


def write_decisions(store: Store, table: Any, summary: dict[str, Any]) -> str:
    """Write the decisions and, last, their summary (with the decisions' digest); returns the digest."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    store.write_bytes(DECISIONS_FILE, data)
    store.write_json(SUMMARY_FILE, {**summary, "digest": digest, "decisions": table.num_rows})
    return digest


def read_decisions(store: Store, policy: Policy, eval_listings: dict[str, str]) -> tuple[Any, dict[str, Any]] | None:
    """The decisions of an earlier run with the same policy and evaluation sets (``eval_listings``: each set's
    listing digest), if they are complete."""
    import pyarrow.parquet as pq

    if not store.exists(SUMMARY_FILE):
        return None
    summary = json.loads(store.read_bytes(SUMMARY_FILE))
    if (summary.get("schema"), summary.get("policy"), summary.get("eval_listings")) != (
        CLEAN_SCHEMA,
        policy.as_dict(),
        eval_listings,
    ):
        return None
    table = pq.read_table(io.BytesIO(store.read_bytes(DECISIONS_FILE)))
    return table, summary


def shard_rows(table: Any, part: int, parts: np.ndarray | None = None) -> dict[str, list]:
    """The decisions of one manifest part, as columns (what its rewrite task gets). ``parts``: the table's ``part``
    column as numpy, to look many up (the table is sorted by it)."""
    if parts is None:
        parts = table.column("part").to_numpy()
    lo, hi = np.searchsorted(parts, [part, part + 1])
    return table.slice(int(lo), int(hi - lo)).to_pydict()


# ----------------------------------------------------------------------------------------- rewriting
def tar_samples(fileobj: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample of a WebDataset tar, in order (consecutive members with the same
    key, webdataset's rule, ``in21k.dataset.split_member``), read with the project's tar reader
    (``in21k.tarformat.tar_members``: ustar, pax and GNU long names) for the rewrite and the audit."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    for name, data in tarformat.tar_members(fileobj):
        split = split_member(name)
        if split is None:
            continue
        k, ext = split
        if k != key and key is not None:
            yield key, parts
            parts = {}
        key = k
        parts[ext] = data
    if key is not None:
        yield key, parts


def rewrite_shard(
    split: str, shard: int, rows: dict[str, list], digest: str, out: str, storage_options: dict[str, Any] | None
) -> dict[str, Any]:
    """Apply the decisions ``rows`` (``shard_rows``) to one shard: tar without the removed samples, manifest part
    with the new statuses, stats last (``clean``: ``digest``). Doing it again gives the same bytes."""
    import pyarrow.parquet as pq

    from in21k.pipeline.shard import manifest_parquet

    store = Store(out, storage_options)
    stats = json.loads(store.read_bytes(stats_name(split, shard)))
    if stats.get("clean") == digest:
        return stats
    manifest = pq.read_table(io.BytesIO(store.read_bytes(manifest_name(split, shard)))).to_pylist()
    removed: set[str] = set()
    for k, position in enumerate(rows["position"]):
        record = manifest[position]
        for name in ("status", "reason", "match", "match_distance", "dup_group"):
            record[name] = rows[name][k]
        if record["status"] == "rejected":
            record["width"] = record["height"] = None
            removed.add(record["key"])
    if removed:
        filename = shard_name(split, shard)
        tmp = store.temp_file(filename)
        try:
            with ShardTarWriter(tmp) as writer:
                for key, parts in tar_samples(io.BytesIO(store.read_bytes(filename))):
                    if key not in removed:
                        writer.add_sample(key, parts)
            store.put_file(tmp, filename)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        stats.update(num_samples=writer.count, offsets=writer.offsets, bytes_written=writer.bytes)
    store.write_bytes(manifest_name(split, shard), manifest_parquet(manifest))
    reasons = Counter(r["reason"] for r in manifest if r["status"] == "rejected")
    stats.update(rejected=sum(reasons.values()), reasons=dict(sorted(reasons.items())), clean=digest)
    DatasetWriter(store).write_stats(split, shard, stats)  # last: marks the shard done
    return stats


# ----------------------------------------------------------------------------------------- the report's picture
def pairs_picture(
    samples: dict[str, list],
    read_release: Callable[[list[dict]], list[bytes]],
    read_eval: Callable[[list[dict]], list[bytes]],
) -> bytes | None:
    """A PNG of the sample pairs side by side (release image | matched image, distances, verdict), or None."""
    from PIL import Image, ImageDraw

    rows: list[tuple[str, dict]] = [
        (kind, s) for kind in ("accepted", "rejected", "eval") for s in samples.get(kind, [])
    ]
    if not rows:
        return None
    lefts = read_release([s["left"] for _, s in rows])
    rights_release = read_release([s["right"] for _, s in rows if "eval" not in s["right"]])
    rights_eval = read_eval([s["right"] for _, s in rows if "eval" in s["right"]])
    it_r, it_e = iter(rights_release), iter(rights_eval)
    side, text_w, pad = 128, 330, 6
    sheet = Image.new("RGB", (2 * side + text_w + 4 * pad, len(rows) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for k, ((kind, s), left) in enumerate(zip(rows, lefts, strict=True)):
        right = next(it_e) if "eval" in s["right"] else next(it_r)
        y = pad + k * (side + pad)
        for j, data in enumerate((left, right)):
            x = pad + j * (side + pad)
            try:
                img = Image.open(io.BytesIO(data)).convert("RGB")
                img.thumbnail((side, side))
                sheet.paste(img, (x + (side - img.width) // 2, y + (side - img.height) // 2))
            except Exception:  # noqa: BLE001 - an image that no longer reads: leave its place grey
                draw.rectangle((x, y, x + side, y + side), fill=(200, 200, 200))
        verdict = {
            "accepted": "same picture (removed)",
            "rejected": "different (kept: colours differ)",
            "eval": "matches the evaluation set (removed)",
        }[kind]
        right_name = f"{s['right']['eval']}:{s['right']['member']}" if "eval" in s["right"] else s["right"]["key"]
        lines = [
            verdict,
            f"hash distance {s['distance']}",
            f"colour distance {s['color_distance']}",
            s["left"]["key"][:44],
            right_name[:44],
        ]
        draw.multiline_text((2 * side + 3 * pad, y + 4), "\n".join(lines), fill="black", spacing=4)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
