"""The dataset-level files written after the shards: ``_info.json``, ``classes.tsv``, ``tree.json``,
``imagenet21k_miil_tree.pth``, the never-read part of ``manifest/``, ``report.json`` and ``report.md``.

Every number comes from what was written (the shards' stats and manifest parts), not from the plan, so
the report describes the output even after crashes and reruns.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from typing import Any

from in21k.dataset import SCHEMA, SPLITS, UNSHARDED_MANIFEST, DatasetWriter, manifest_name, stats_name
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.plan import Plan
from in21k.pipeline.shard import manifest_parquet
from in21k.storage import Store


def write_unsharded_manifest(store: Store, plan: Plan) -> None:
    """Manifest rows of members never read: dropped classes and duplicate keys."""
    rows = [{**r, "split": None, "shard": None, "src_bytes": r["size"]} for r in plan.unsharded]
    store.write_bytes(UNSHARDED_MANIFEST, manifest_parquet(rows))


def read_manifest(store: Store, plan: Plan, columns: list[str] | None = None) -> Any:
    """The whole manifest as one pyarrow table (unsharded part first, then shards in plan order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [UNSHARDED_MANIFEST] + [manifest_name(s.split, s.shard) for s in plan.shards]
    return pa.concat_tables([pq.read_table(io.BytesIO(b), columns=columns) for b in store.read_many(names)])


def _counts(table: Any, keys: list[str]) -> dict[tuple, int]:
    """Row counts per distinct ``keys`` tuple, computed in Arrow (the manifest has ~14 M rows for fall11)."""
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pydict()
    return {tuple(grouped[k][i] for k in keys): n for i, n in enumerate(grouped["count_all"])}


def finalize(
    store: Store,
    plan: Plan,
    cfg: PrepareConfig,
    tree: Any,
    *,
    layout: str,
    note: str,
    timings: dict[str, float],
    index_errors: list[dict[str, str]],
) -> dict[str, Any]:
    """Write the dataset-level files and return the summary (also ``report.json``)."""
    blobs = store.read_many([stats_name(s.split, s.shard) for s in plan.shards])
    stats = {(s.split, s.shard): json.loads(b) for s, b in zip(plan.shards, blobs, strict=True)}
    manifest = read_manifest(store, plan, columns=["wnid", "split", "status", "reason"])
    status: Counter = Counter()
    reasons: Counter = Counter()
    for (st, reason), n in _counts(manifest, ["status", "reason"]).items():
        status[st] += n
        if st == "rejected":
            reasons[reason] += n
    per_class: dict[str, Counter] = defaultdict(Counter)
    for (wnid, split, st), n in _counts(manifest, ["wnid", "split", "status"]).items():
        if st == "written":
            per_class[wnid][split] += n

    writer = DatasetWriter(store)
    info = writer.write_info(
        num_classes=tree.num_classes,
        splits={
            split: [(s.filename, int(stats[(split, s.shard)]["num_samples"])) for s in plan.shards if s.split == split]
            for split in SPLITS
        },
        config=cfg.output_fingerprint(),
    )
    splits = info["splits"]
    writer.write_classes(tree, per_class)
    writer.write_tree(tree)

    dropped = [
        {"wnid": c.wnid, "reason": c.reason, "members": c.members, "readable_looking": c.readable}
        for c in plan.classes
        if not c.kept
    ]
    seconds = [s["seconds"] for s in stats.values()]
    cpu_seconds = [s.get("cpu_seconds", 0.0) for s in stats.values()]
    report = {
        "schema": SCHEMA,
        "raw": cfg.raw,
        "layout": layout,
        "note": note,
        "out": cfg.out,
        "totals": {
            "raw_members": manifest.num_rows,
            "written": status["written"],
            "rejected": status["rejected"],
            "dropped_class": status["dropped_class"],
            "classes_seen": len(plan.classes),
            "classes_kept": tree.num_classes,
            "classes_dropped": len(dropped),
            "tree_levels": tree.num_levels,
            **{f"{split}_samples": splits.get(split, {}).get("num_samples", 0) for split in SPLITS},
            **{f"{split}_shards": len(splits.get(split, {}).get("filenames", [])) for split in SPLITS},
        },
        "rejection_reasons": dict(sorted(reasons.items())),
        "dropped_classes_by_reason": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        "dropped_classes": dropped,
        "index_errors": index_errors,
        "classes": [
            {
                "index": c.index,
                "wnid": c.wnid,
                "train": per_class[c.wnid]["train"],
                "validation": per_class[c.wnid]["validation"],
            }
            for c in tree.classes
        ],
        "timings": {
            **{k: round(v, 2) for k, v in timings.items()},
            "shard_task_seconds_total": round(sum(seconds), 2),
            "shard_task_cpu_seconds_total": round(sum(cpu_seconds), 2),
        },
    }
    store.write_json("report.json", report)
    store.write_bytes("report.md", _markdown(report).encode())
    return report


def _markdown(r: dict[str, Any]) -> str:
    t = r["totals"]
    out = [
        "# ImageNet-21K-P preparation report",
        "",
        f"- raw: `{r['raw']}` (layout {r['layout']}){' - ' + r['note'] if r['note'] else ''}",
        f"- output: `{r['out']}`",
        f"- raw members: {t['raw_members']:,} = written {t['written']:,} + rejected {t['rejected']:,} "
        f"+ in dropped classes {t['dropped_class']:,}",
        f"- classes: {t['classes_seen']:,} seen, {t['classes_kept']:,} kept, {t['classes_dropped']:,} dropped; "
        f"tree levels: {t['tree_levels']}",
        f"- train: {t['train_samples']:,} samples in {t['train_shards']:,} shards; validation: "
        f"{t['validation_samples']:,} samples in {t['validation_shards']:,} shards",
        f"- time: {r['timings'].get('total', 0):.1f} s",
        "",
        "## Rejected members by reason",
        "",
        "| reason | members |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in r["rejection_reasons"].items()],
        "",
        "## Dropped classes",
        "",
        "| wnid | reason | members | readable-looking |",
        "|---|---|---:|---:|",
        *[
            f"| {d['wnid']} | {d['reason']} | {d['members']:,} | {d['readable_looking']:,} |"
            for d in r["dropped_classes"]
        ],
        "",
    ]
    if r["index_errors"]:
        out += ["## Damaged class tars", "", *[f"- `{e['container']}`: {e['error']}" for e in r["index_errors"]], ""]
    out += ["## Classes", "", "| index | wnid | train | validation |", "|---:|---|---:|---:|"]
    out += [f"| {c['index']} | {c['wnid']} | {c['train']:,} | {c['validation']:,} |" for c in r["classes"]]
    return "\n".join(out) + "\n"
