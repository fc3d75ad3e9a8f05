"""``in21k bench dedup``: precision and recall of prepare's duplicate finder on a release with planted copies.

Writes a synthetic release with ``--plant`` copies of every kind (``in21k.synth.planted``) and an evaluation
set, runs ``prepare`` on it with ``--against`` on a local Ray (the real job, every stage), and scores the
manifest against the planted pairs: recall per kind and scope, precision, the share of the release's own images
flagged (false flags), and evaluation matches that are not planted.

Two contenders on the same fingerprints, for the decisions the finder rests on:

- ``hash_only``: every pair within the hash distance is a copy (a plain 64-bit pHash, no colour check), found by
  brute force over all pairs: how many of the release's own images it would flag;
- ``exhaustive``: brute force with the colour check: the recall the multi-index join could reach at these
  thresholds (the join's own loss is the difference).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.options import DedupBenchConfig


def _brute(phash: Any, colors: Any, max_distance: int, max_color: float) -> tuple[Any, Any, Any]:
    """All pairs within ``max_distance`` (i, j) and whether their colours pass, by brute force, in slices."""
    import numpy as np

    from in21k.pipeline.fingerprint import color_distance

    n = len(phash)
    found_i, found_j = [], []
    for a in range(n):
        d = np.bitwise_count(phash[a] ^ phash[a + 1 :])
        j = np.flatnonzero(d <= max_distance) + a + 1
        found_i.append(np.full(len(j), a))
        found_j.append(j)
    i = np.concatenate(found_i) if found_i else np.empty(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.empty(0, np.int64)
    ok = color_distance(colors[i], colors[j]) <= max_color if len(i) else np.zeros(0, bool)
    return i, j, ok


def _flagged_share(manifest: dict[str, list], planted: dict[str, Any], i: Any, j: Any, keep: Any) -> dict[str, Any]:
    """Members of the release's own images (not planted copies or originals) in a kept pair."""
    copies = {(p["copy"]["wnid"], p["copy"]["member"]) for p in planted["pairs"]}
    originals = {(p["original"]["wnid"], p["original"]["member"]) for p in planted["pairs"] if "wnid" in p["original"]}
    own = [
        (w, m) not in copies and (w, m) not in originals
        for w, m in zip(manifest["wnid"], manifest["member"], strict=True)
    ]
    flagged = set(i[keep].tolist()) | set(j[keep].tolist())
    wrong = sum(1 for r in flagged if own[r])
    total = sum(own)
    return {
        "flagged_own_images": wrong,
        "own_images": total,
        "false_flag_rate": round(wrong / total, 5) if total else None,
    }


def run_dedup_bench(cfg: DedupBenchConfig) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    from in21k.dataset import PreparedDataset
    from in21k.pipeline import PrepareConfig, prepare
    from in21k.pipeline.dedup import scan_tables, tables
    from in21k.pipeline.fingerprint import color_distance, colors_array
    from in21k.synth import SynthConfig, write_synthetic_release
    from in21k.synth.planted import EVAL_DIR, score

    work = tempfile.mkdtemp(prefix="in21k-bench-dedup-", dir=cfg.workdir)
    try:
        raw, out = os.path.join(work, "raw"), os.path.join(work, "out")
        t = time.perf_counter()
        report = write_synthetic_release(
            SynthConfig(
                out=raw,
                classes=cfg.classes,
                images=cfg.images,
                seed=cfg.seed,
                plant=cfg.plant,
                eval_images=cfg.eval_images,
                non_noun_classes=0,
                large_share=0.0,
            )
        )
        synth_seconds = time.perf_counter() - t
        lo = int(cfg.images.split(":")[0])
        pcfg = PrepareConfig(
            raw=raw,
            out=out,
            min_images=max(2, lo // 2),
            val_per_class=1,
            shard_size=256,
            shard_multiple=1,
            against=[f"synth-eval={os.path.join(raw, EVAL_DIR)}"],
            dedup_distance=cfg.max_distance,
            dedup_color_distance=cfg.max_color_distance,
            num_cpus=cfg.num_cpus,
            progress=False,
        )
        t = time.perf_counter()
        summary = prepare(pcfg)
        prepare_seconds = time.perf_counter() - t
        columns = ["wnid", "member", "phash", "colors", "match", "dup_group"]
        table = pq.read_table(os.path.join(out, "manifest"), columns=columns)
        prep_report = PreparedDataset.open(out).report()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    planted = report["planted"]
    manifest = table.to_pydict()
    scored = score(manifest, planted)
    decoded = table.filter(table.column("phash").is_valid())
    dm = decoded.to_pydict()
    phash = decoded.column("phash").to_numpy().astype(np.uint64)
    colors = colors_array(decoded.column("colors"))
    t = time.perf_counter()
    i, j, ok = _brute(phash, colors, cfg.max_distance, cfg.max_color_distance)
    brute_seconds = time.perf_counter() - t
    t = time.perf_counter()
    joined = scan_tables(phash, range(len(tables())), cfg.max_distance)
    join_seconds = time.perf_counter() - t
    brute = set((i.astype(np.uint64) << np.uint64(32) | j.astype(np.uint64)).tolist())
    # Colour distances of the pairs within the hash distance: planted pairs against all others (the threshold's room).
    where = {(w, m): k for k, (w, m) in enumerate(zip(dm["wnid"], dm["member"], strict=True))}
    planted_pairs = {
        frozenset(
            (
                where.get((p["original"]["wnid"], p["original"]["member"])),
                where.get((p["copy"]["wnid"], p["copy"]["member"])),
            )
        )
        for p in planted["pairs"]
        if "wnid" in p["original"]
    }
    cd = color_distance(colors[i], colors[j]) if len(i) else np.zeros(0, np.float32)
    is_planted = np.array(
        [frozenset((a, b)) in planted_pairs for a, b in zip(i.tolist(), j.tolist(), strict=True)], bool
    )
    colour_room = {
        "planted_pairs_max": round(float(cd[is_planted].max()), 2) if is_planted.any() else None,
        "other_pairs_min": round(float(cd[~is_planted].min()), 2) if (~is_planted).any() else None,
        "other_pairs_below_threshold": int((cd[~is_planted] <= cfg.max_color_distance).sum()),
    }
    clean = prep_report["clean"]
    exhaustive = {
        "pairs_within_distance": int(len(i)),
        "pairs_verified": int(ok.sum()),
        "found_by_the_join": len(brute & set(joined["pairs"].tolist())),
    }
    return {
        "bench": "dedup",
        "recall": scored["recall"],
        "precision": scored["precision"],
        "false_flag_rate": scored["false_flag_rate"],
        "eval_false_matches": scored["eval_false_matches"],
        # hash_only: the same fingerprints, a pair within the distance counts, no colour check
        "hash_only": _flagged_share(dm, planted, i, j, np.ones(len(i), bool)),
        "with_colour_check": _flagged_share(dm, planted, i, j, ok),
        "exhaustive": exhaustive,
        # colour distances of the pairs within the hash distance: the planted ones' largest, the others' smallest
        "colour_distances": colour_room,
        "join": {
            **clean["join"],
            "verified_pairs": clean["near_pairs"]["verified"],
            "recall_vs_exhaustive": round(exhaustive["found_by_the_join"] / max(1, len(i)), 4),
            "seconds_in_process": round(join_seconds, 3),
        },
        "pairs": scored["pairs"],
        "flagged_members": scored["flagged_members"],
        "wrongly_flagged_examples": scored["wrongly_flagged_examples"],
        "thresholds": {"max_distance": cfg.max_distance, "max_color_distance": cfg.max_color_distance},
        "release": {
            "members": report["totals"]["members"],
            "decoded": int(len(phash)),
            "planted_pairs": len(planted["pairs"]),
            "written": summary["written"],
        },
        "seconds": {
            "synth": round(synth_seconds, 1),
            "prepare": round(prepare_seconds, 1),
            "clean_stage": prep_report["timings"].get("clean"),
            "brute_force": round(brute_seconds, 2),
        },
        **machine(),
    }


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"duplicate finder on a planted release ({r['release']['decoded']:,} decoded images, "
        f"{r['release']['planted_pairs']} planted pairs; distance <= {r['thresholds']['max_distance']}, colours "
        f"<= {r['thresholds']['max_color_distance']:g})",
        "",
        "recall per kind:",
    ]
    lines += [f"  {k:<10} {v}" for k, v in r["recall"].items()]
    lines += ["", "recall per kind and scope:"]
    lines += [f"  {k:<26} {v['found']}/{v['findable']} = {v['recall']}" for k, v in r["pairs"].items()]
    h, c = r["hash_only"], r["with_colour_check"]
    lines += [
        "",
        f"precision (flagged members that are planted copies or their originals): {r['precision']}",
        f"false flags of the release's own images: {r['false_flag_rate']} (hash alone would flag "
        f"{h['flagged_own_images']} of {h['own_images']} = {h['false_flag_rate']}; with the colour check "
        f"{c['flagged_own_images']})",
        f"evaluation matches that are not planted: {r['eval_false_matches']}",
        f"colour distances within the hash distance: planted pairs <= {r['colour_distances']['planted_pairs_max']}, "
        f"other pairs >= {r['colour_distances']['other_pairs_min']}",
        f"join: finds {r['join']['recall_vs_exhaustive']} of the {r['exhaustive']['pairs_within_distance']:,} pairs "
        f"within the distance that an exhaustive search finds ({r['join']['candidates']:,} candidates in prepare)",
        "",
        json.dumps(r),
    ]
    return "\n".join(lines)
