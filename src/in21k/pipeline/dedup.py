"""Which images are copies of each other: the join over millions of fingerprints, its verification, the groups.

The join is multi-index hashing with a guaranteed radius. The 64 bits of ``phash`` are cut into ``BLOCKS`` (11)
contiguous blocks of 5-6 bits; a *table* is a choice of ``KEY_BLOCKS`` (4) of them, whose bits form a ~23-bit
key, and there is one table for each of the C(11, 4) = 330 choices. Two hashes within Hamming distance 7 differ
in at most 7 blocks, so at least 4 blocks are equal and some table puts them under the same key: every pair
within distance 7 is found. Pairs further apart are found when their differing bits fall into at most 7 blocks:
of the planted release's pairs within distance 12 (the threshold), 99 % of the 1-3 % crops, 93 % of the 3-5 %
crops and 77 % of the framed copies, where a plain index of 4 bands of 16 bits (radius 3) finds 89 %, 60 % and
45 % (docs/clean-data.md has the table of schemes, costs and recalls). A pair is reported by one table only, the
first (in ``tables`` order) whose key blocks are all equal in it, so subsets of the tables find disjoint pairs.

``scan_tables`` works through the tables grouped by their first key block: the hashes are partitioned by that
block, and each part, small enough for the CPU's cache, is sorted by ``(rest of the key, row)`` packed into
64-bit integers; runs of equal keys give the candidate pairs, each checked with one XOR and a bit count. At
fall11's size that is ~10^7 candidates per table for uniform hashes (more for real ones, whose classes hold
look-alikes). Tables are independent: the job runs them as Ray tasks (``in21k.pipeline.job``), the benchmark
and ``in21k audit`` in-process.

A run of equal keys longer than ``WINDOW`` (a cluster of thousands of near-identical images) is compared
within ``WINDOW`` neighbours only; such runs are counted (``truncated``). Exact copies never form such runs:
they are collapsed to one representative before the join (``exact_copies``).

Verification: a candidate pair is a match when its hash distance is at most ``max_distance`` and its colour
grids are within ``max_color_distance`` (``in21k.pipeline.fingerprint.color_distance``). 64 bits are not
enough at 10^14 pairs: on the planted release the hash alone flags 6 % of the release's own images (pictures of
a class with a similar layout); the colour check, a second, independent look at the picture, removes all of those
while keeping every planted copy (figures: ``in21k bench dedup``). It runs inside ``scan_tables``: the pairs
within the hash distance are many times the copies, and are never gathered.

Groups are the connected components of the matched pairs (``components``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from in21k.pipeline.fingerprint import HASH_BITS, color_distance
from in21k.pipeline.options import DEDUP_COLOR_DISTANCE, DEDUP_DISTANCE

BLOCKS = 11
KEY_BLOCKS = 4
WINDOW = 1024  # a run of equal keys is compared to at most this many neighbours of each member
MAX_DISTANCE = DEDUP_DISTANCE  # default --dedup-distance: Hamming distance of phash (even: every phash has 32 ones)
MAX_COLOR_DISTANCE = DEDUP_COLOR_DISTANCE  # default --dedup-color-distance, in 8-bit levels
REJECTED_KEPT = 6  # candidate pairs rejected by their colours kept (the closest) for the report's picture


def block_layout(blocks: int = BLOCKS) -> list[tuple[int, int]]:
    """``(shift, width)`` of each block of the 64 bits, most significant first (widths differ by at most one)."""
    edges = [round(HASH_BITS * k / blocks) for k in range(blocks + 1)]
    return [(HASH_BITS - edges[k + 1], edges[k + 1] - edges[k]) for k in range(blocks)]


def tables(blocks: int = BLOCKS, key_blocks: int = KEY_BLOCKS) -> list[tuple[int, ...]]:
    """The blocks of each table's key, in a fixed order."""
    return list(itertools.combinations(range(blocks), key_blocks))


def guaranteed_radius(blocks: int = BLOCKS, key_blocks: int = KEY_BLOCKS) -> int:
    """Pairs within this Hamming distance are always found."""
    return blocks - key_blocks


def _first_tables(blocks: int, key_blocks: int) -> np.ndarray:
    """For each set of equal blocks (a bit mask), the first table (in ``tables`` order) that holds only equal blocks,
    or -1: the one table that reports a pair, so no pair is found twice and nothing is deduplicated afterwards."""
    masks = np.array([sum(1 << b for b in combo) for combo in tables(blocks, key_blocks)], np.int64)
    every = np.arange(1 << blocks, dtype=np.int64)[:, None]
    covered = (masks[None, :] & every) == masks[None, :]
    return np.where(covered.any(axis=1), covered.argmax(axis=1), -1).astype(np.int32)


def scan_tables(
    hashes: np.ndarray,
    table_ids: Sequence[int],
    max_distance: int = MAX_DISTANCE,
    colors: np.ndarray | None = None,
    max_color_distance: float = MAX_COLOR_DISTANCE,
    *,
    blocks: int = BLOCKS,
    key_blocks: int = KEY_BLOCKS,
    window: int = WINDOW,
    rejected_kept: int = REJECTED_KEPT,
) -> dict[str, Any]:
    """The pairs of ``hashes`` (uint64) within ``max_distance`` that the tables ``table_ids`` find, each reported by
    one table only (the first, in ``tables`` order, that holds it), so that disjoint subsets of the tables find
    disjoint sets of pairs. With ``colors`` ((n, COLOR_BYTES) uint8, one row per hash), the pairs are verified:
    only those within ``max_color_distance`` are kept (they are few; the candidates within the hash distance are
    many), and of the others the ``rejected_kept`` closest in colour.

    Returns ``pairs`` (uint64 ``i << 32 | j``, ``i < j``, sorted), ``distances`` (int8), ``color_distances``
    (float32, or None without ``colors``), ``rejected`` (the same three for the closest rejected pairs), the counts
    ``candidates`` (pairs compared), ``within`` (pairs within the hash distance), ``truncated`` (members of runs
    longer than ``window``, compared with their nearest neighbours only).

    The tables are worked through grouped by their first key block: the hashes are partitioned once by that
    block's value (2^5-2^6 parts), and each part, small enough to stay in the CPU's cache, is sorted by the rest
    of each table's key. At fall11's size that is ~10x faster than sorting all hashes per table, where gathering
    the candidates' hashes from main memory dominates.
    """
    n = len(hashes)
    if n >= 1 << 32:
        raise ValueError("more than 2^32 hashes: split the join")
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    layout = block_layout(blocks)
    combos = tables(blocks, key_blocks)
    first_table = _first_tables(blocks, key_blocks)
    block_masks = [(np.uint64(shift), np.uint64((1 << width) - 1)) for shift, width in layout]
    by_first: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for t in table_ids:
        by_first.setdefault(combos[t][0], []).append((t, combos[t][1:]))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    rejected: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = {"candidates": 0, "within": 0, "truncated": 0}
    low32 = np.uint64(0xFFFFFFFF)

    def report(t: int, ga: np.ndarray, gb: np.ndarray, x: np.ndarray, d: np.ndarray) -> None:
        """Keep the hits that table ``t`` is the first to hold, verified on their colours."""
        equal = np.zeros(len(x), np.int64)
        for k, (shift, mask) in enumerate(block_masks):
            equal |= (((x >> shift) & mask) == 0).astype(np.int64) << k
        mine = first_table[equal] == t
        ga, gb, d = ga[mine], gb[mine], d[mine]
        counts["within"] += len(ga)
        pairs = np.minimum(ga, gb) << np.uint64(32) | np.maximum(ga, gb)
        if colors is None:
            found.append((pairs, d.astype(np.int8), None))
            return
        cd = (
            color_distance(colors[ga.astype(np.int64)], colors[gb.astype(np.int64)])
            if len(ga)
            else np.zeros(0, np.float32)
        )
        ok = cd <= max_color_distance
        found.append((pairs[ok], d[ok].astype(np.int8), cd[ok]))
        if (~ok).any():
            rejected.append((pairs[~ok], d[~ok].astype(np.int8), cd[~ok]))
            if sum(len(r[0]) for r in rejected) > 16 * rejected_kept:
                rejected[:] = [_closest(rejected, rejected_kept)]

    for first, rests in sorted(by_first.items()):
        shift, width = layout[first]
        part = ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint8)
        order = np.argsort(part, kind="stable")  # a radix sort for 8-bit values
        bounds = np.searchsorted(part[order], np.arange((1 << width) + 1))
        hs, rows = h[order], order.astype(np.uint64)
        del part, order
        for p in range(1 << width):
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            if hi - lo < 2:
                continue
            hp, rp = hs[lo:hi], rows[lo:hi]
            local = np.arange(hi - lo, dtype=np.uint64)
            # Each block's value in this part, once: a table's key is then a few shifts and ors of 32-bit values.
            values = {
                blk: ((hp >> block_masks[blk][0]) & block_masks[blk][1]).astype(np.uint32)
                for blk in {b for _, rest in rests for b in rest}
            }
            for t, rest in rests:
                key = values[rest[0]].copy()
                for blk in rest[1:]:
                    key <<= np.uint32(layout[blk][1])
                    key |= values[blk]
                packed = np.sort((key.astype(np.uint64) << np.uint64(32)) | local)
                at = np.flatnonzero(((packed[1:] ^ packed[:-1]) >> np.uint64(32)) == 0)  # i, i + 1 share a key
                offset = 1
                while at.size and offset <= window:
                    a = (packed[at] & low32).astype(np.int64)
                    b = (packed[at + offset] & low32).astype(np.int64)
                    x = hp[a] ^ hp[b]
                    d = np.bitwise_count(x)
                    counts["candidates"] += at.size
                    hit = d <= max_distance
                    if hit.any():
                        report(t, rp[a[hit]], rp[b[hit]], x[hit], d[hit])
                    nxt = at + offset + 1  # does the run go on one further?
                    ok = nxt < len(packed)
                    at, nxt = at[ok], nxt[ok]
                    at = at[((packed[nxt] ^ packed[at]) >> np.uint64(32)) == 0]
                    offset += 1
                counts["truncated"] += int(at.size)
    return {**_joined(found, colors is not None), "rejected": _closest(rejected, rejected_kept), **counts}


def _joined(found: list[tuple], verified: bool) -> dict[str, Any]:
    """Found pairs (tuples of pairs, distances, colour distances) as sorted arrays."""
    if not found:
        return {
            "pairs": np.empty(0, np.uint64),
            "distances": np.empty(0, np.int8),
            "color_distances": np.empty(0, np.float32) if verified else None,
        }
    pairs = np.concatenate([f[0] for f in found])
    order = np.argsort(pairs, kind="stable")
    return {
        "pairs": pairs[order],
        "distances": np.concatenate([f[1] for f in found])[order],
        "color_distances": np.concatenate([f[2] for f in found])[order] if verified else None,
    }


def _closest(rejected: list[tuple], keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``keep`` rejected pairs closest in colour (ties by the pair: the same whatever order they came in)."""
    if not rejected:
        return np.empty(0, np.uint64), np.empty(0, np.int8), np.empty(0, np.float32)
    pairs, dist, cd = (np.concatenate([r[k] for r in rejected]) for k in range(3))
    order = np.lexsort((pairs, cd))[:keep]
    return pairs[order], dist[order], cd[order]


def merge_scans(results: Sequence[dict[str, Any]], rejected_kept: int = REJECTED_KEPT) -> dict[str, Any]:
    """One result of several ``scan_tables`` results over disjoint subsets of the tables (so disjoint pairs)."""
    verified = any(r["color_distances"] is not None for r in results)
    found = [(r["pairs"], r["distances"], r["color_distances"]) for r in results if len(r["pairs"])]
    return {
        **_joined(found, verified),
        "rejected": _closest([r["rejected"] for r in results if len(r["rejected"][0])], rejected_kept),
        **{k: sum(r[k] for r in results) for k in ("candidates", "within", "truncated")},
    }


def split_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` int64 arrays of packed pairs."""
    return (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)


def exact_copies(pixel_hash: np.ndarray, phash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows that are exact copies of an earlier row (equal ``pixel_hash`` and ``phash``), and for each, the first
    row of its copies (in row order): ``(copies, originals)``, both sorted by copy.

    One sort of ``pixel_hash``: equal neighbours are the few candidates, settled by ``phash`` among themselves, so the
    driver's extra memory is two arrays of the size of the release (fall11: 0.2 GB) for a moment.
    """
    if len(pixel_hash) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(pixel_hash, kind="stable")
    sorted_hash = pixel_hash[order]
    same = np.flatnonzero(sorted_hash[1:] == sorted_hash[:-1])
    del sorted_hash
    rows = order[np.unique(np.concatenate([same, same + 1]))]
    del order
    if not len(rows):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    by = np.lexsort((rows, phash[rows], pixel_hash[rows]))
    rows = rows[by]
    first = np.r_[True, (pixel_hash[rows][1:] != pixel_hash[rows][:-1]) | (phash[rows][1:] != phash[rows][:-1])]
    starts = np.flatnonzero(first)
    original = rows[starts][np.cumsum(first) - 1]
    copy = rows != original
    out = np.argsort(rows[copy], kind="stable")
    return rows[copy][out], original[copy][out]


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes with edges ``(i, j)``: each node's label is the smallest node of its
    component. Vectorized: roots are hooked onto the smaller root of each edge, then paths are compressed by
    pointer jumping, until every edge joins equal labels."""
    label = np.arange(n, dtype=np.int64)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    while len(i):
        li, lj = label[i], label[j]
        differ = li != lj
        if not differ.any():
            break
        i, j, li, lj = i[differ], j[differ], li[differ], lj[differ]
        low = np.minimum(li, lj)
        np.minimum.at(label, li, low)
        np.minimum.at(label, lj, low)
        while True:
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
    return label
