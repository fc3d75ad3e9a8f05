"""The dataset-level files written after the shards: ``_info.json``, ``classes.tsv``, ``tree.json``,
``imagenet21k_miil_tree.pth``, the never-read part of ``manifest/``, ``report.json`` and ``report.md``.

Every number comes from what was written (the shards' stats and manifest parts), not from the plan, so
the report describes the output even after crashes and reruns. The manifest is read back a few hundred
parts at a time and counted in Arrow, so the driver never holds fall11's 14 M manifest rows at once.

``plan_summary``/``plan_text`` describe a plan before any shard is written (``--plan-only``).
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from typing import Any

from in21k.dataset import REPORT_FILE, SCHEMA, SPLITS, UNSHARDED_MANIFEST, DatasetWriter, manifest_name, stats_name
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.plan import Plan
from in21k.pipeline.shard import manifest_schema
from in21k.redact import redact
from in21k.storage import Store

UNSHARDED_ROWS_PER_GROUP = 1 << 18  # rows of the unsharded manifest built and written at a time
MANIFEST_PARTS_PER_READ = 256  # manifest parts read back and counted at a time


def write_unsharded_manifest(store: Store, plan: Plan) -> None:
    """Manifest rows of members never read (dropped classes, duplicate keys), canonical order, columnar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = manifest_schema()
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd") as writer:
        rows = plan.unsharded
        for a in range(0, len(rows), UNSHARDED_ROWS_PER_GROUP):
            cols = plan.unsharded_columns(rows[a : a + UNSHARDED_ROWS_PER_GROUP])
            n = len(cols["wnid"])
            writer.write_table(
                pa.table([cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema)
            )
    store.write_bytes(UNSHARDED_MANIFEST, buf.getvalue())


def iter_manifest(store: Store, plan: Plan, columns: list[str] | None = None) -> Any:
    """The manifest (unsharded part first, then shards in plan order) as pyarrow tables of a few hundred parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [UNSHARDED_MANIFEST] + [manifest_name(s.split, s.shard) for s in plan.shards]
    for a in range(0, len(names), MANIFEST_PARTS_PER_READ):
        blobs = store.read_many(names[a : a + MANIFEST_PARTS_PER_READ])
        yield pa.concat_tables([pq.read_table(io.BytesIO(b), columns=columns) for b in blobs])


def read_manifest(store: Store, plan: Plan, columns: list[str] | None = None) -> Any:
    """The whole manifest as one pyarrow table (small datasets and tests; ``iter_manifest`` at scale)."""
    import pyarrow as pa

    return pa.concat_tables(list(iter_manifest(store, plan, columns)))


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
    release: dict[str, Any] | None = None,
    class_list: Any = None,
    clean: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the dataset-level files and return the summary (also ``report.json``). ``release``: the input's
    identification (``in21k.pipeline.release.identify``); ``class_list``: the ``--classes`` list; ``clean``: the
    summary of the duplicate and evaluation-set check (``in21k.pipeline.clean``), when it ran."""
    blobs = store.read_many([stats_name(s.split, s.shard) for s in plan.shards])
    stats = {(s.split, s.shard): json.loads(b) for s, b in zip(plan.shards, blobs, strict=True)}
    status: Counter = Counter()
    reasons: Counter = Counter()
    per_class: dict[str, Counter] = defaultdict(Counter)
    raw_members = 0
    for manifest in iter_manifest(store, plan, columns=["wnid", "split", "status", "reason"]):
        raw_members += manifest.num_rows
        for (st, reason), n in _counts(manifest, ["status", "reason"]).items():
            status[st] += n
            if st == "rejected":
                reasons[reason] += n
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
    flagged = [
        {
            "index": c.index,
            "wnid": c.wnid,
            "flag": c.flag,
            "members": c.members,
            "readable_looking": c.readable,
            "train": per_class[c.wnid]["train"],
            "validation": per_class[c.wnid]["validation"],
        }
        for c in sorted(plan.classes, key=lambda c: c.index)
        if c.kept and c.flag
    ]
    seconds = [s["seconds"] for s in stats.values()]
    cpu_seconds = [s.get("cpu_seconds", 0.0) for s in stats.values()]
    # Through redact: the raw and output URLs, and error messages, may hold credentials (a URL's password).
    report = redact(
        {
            "schema": SCHEMA,
            "raw": cfg.raw,
            "layout": layout,
            "note": note,
            "out": cfg.out,
            "totals": {
                "raw_members": raw_members,
                "written": status["written"],
                "rejected": status["rejected"],
                "dropped_class": status["dropped_class"],
                "classes_seen": len(plan.classes),
                "classes_kept": tree.num_classes,
                "classes_dropped": len(dropped),
                "classes_flagged": len(flagged),
                "copied_at_size": sum(int(s.get("copied", 0)) for s in stats.values()),
                "tree_levels": tree.num_levels,
                **{f"{split}_samples": splits.get(split, {}).get("num_samples", 0) for split in SPLITS},
                **{f"{split}_shards": len(splits.get(split, {}).get("filenames", [])) for split in SPLITS},
            },
            "rejection_reasons": dict(sorted(reasons.items())),
            "dropped_classes_by_reason": dict(sorted(Counter(d["reason"] for d in dropped).items())),
            "dropped_classes": dropped,
            "flagged_classes": flagged,
            "class_list": None
            if class_list is None
            else {"name": class_list.name, "origin": class_list.origin, "classes": len(class_list.wnids)},
            "split": "kept as the input gives it" if plan.kept_split else "made by --val-per-class",
            "release": release,
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
            "clean": None if clean is None else {k: v for k, v in clean.items() if k != "samples"},
        }
    )
    store.write_json(REPORT_FILE, report)
    store.write_bytes("report.md", _markdown(report).encode())
    return report


def _markdown(r: dict[str, Any]) -> str:
    from in21k.pipeline.release import markdown as release_markdown

    t = r["totals"]
    listed = r.get("class_list")
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
        f"{t['validation_samples']:,} samples in {t['validation_shards']:,} shards; split {r['split']}",
        f"- written byte for byte (already at the output size, decoded cleanly): {t['copied_at_size']:,}",
        *(
            [f"- class list: {listed['name']} ({listed['classes']:,} classes, label index = line; {listed['origin']})"]
            if listed
            else []
        ),
        f"- time: {r['timings'].get('total', 0):.1f} s",
        "",
        *(release_markdown(r["release"], t) if r.get("release") else []),
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
    if r["flagged_classes"]:
        out += [
            "## Flagged classes",
            "",
            "Kept because the class list names them, with fewer readable-looking members than --min-images:",
            "",
            "| index | wnid | flag | members | readable-looking | train | validation |",
            "|---:|---|---|---:|---:|---:|---:|",
            *[
                f"| {f['index']} | {f['wnid']} | {f['flag']} | {f['members']:,} | {f['readable_looking']:,} | "
                f"{f['train']:,} | {f['validation']:,} |"
                for f in r["flagged_classes"]
            ],
            "",
        ]
    if r["index_errors"]:
        out += ["## Damaged class tars", "", *[f"- `{e['container']}`: {e['error']}" for e in r["index_errors"]], ""]
    if r.get("clean"):
        out += _clean_markdown(r["clean"])
    out += ["## Classes", "", "| index | wnid | train | validation |", "|---:|---|---:|---:|"]
    out += [f"| {c['index']} | {c['wnid']} | {c['train']:,} | {c['validation']:,} |" for c in r["classes"]]
    return "\n".join(out) + "\n"


def _clean_markdown(c: dict[str, Any]) -> list[str]:
    """The report's section on copies inside the release and matches with evaluation sets."""
    p = c["policy"]
    removed = c["removed"]
    out = [
        "## Duplicates and evaluation sets",
        "",
        f"Fingerprinted: {c['fingerprinted']:,} images. A pair is a copy when its 64-bit DCT hashes differ in at most "
        f"{p['max_distance']} bits and its colour grids by at most {p['max_color_distance']:g} levels"
        + ("" if p["dedup"] else " (copies inside the release were not looked for: --no-dedup)")
        + f"; policies: in a class {p['in_class']}, across classes {p['across_classes']}.",
        "",
        "| | count |",
        "|---|---:|",
        f"| exact copies (same pixels) | {c['exact_copies']:,} |",
        f"| near pairs within the hash distance | {c['near_pairs']['within_distance']:,} |",
        f"| of those, verified as copies | {c['near_pairs']['verified']:,} |",
        f"| of those, rejected by their colours | {c['near_pairs']['rejected_by_colour']:,} |",
        f"| groups of copies (spanning classes) | {c['groups']:,} ({c['groups_across_classes']:,}) |",
        f"| members in groups | {c['members_in_groups']:,} |",
        *[f"| removed: {reason} | {n:,} |" for reason, n in removed.items()],
        "",
    ]
    if c["eval_sets"]:
        out += [
            "| evaluation set | images | unreadable | images matched | release members removed |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {e['name']} (`{e.get('url', '')}`) | {e.get('images', e['readable']):,} | "
            f"{e.get('unreadable', 0):,} | {e['matched_images']:,} | {e['matched_release_members']:,} |"
            for e in c["eval_sets"]
        ]
        out.append("")
    j = c["join"]
    out.append(
        f"Join: {j['hashes']:,} hashes, {j['candidates']:,} candidate pairs compared, {j['within_distance']:,} "
        f"within the distance; time {c['timings'].get('decide', 0):.1f} s."
    )
    if j["truncated"]:
        out.append(f"{j['truncated']:,} members of very large buckets were compared to their nearest neighbours only.")
    out.append("")
    if c.get("picture"):
        out += [
            "Pairs at and near the thresholds, side by side (the release image on the left): judge the "
            "thresholds by eye.",
            "",
            f"![matched pairs]({c['picture']})",
            "",
        ]
    return out


def plan_summary(
    plan: Plan, cfg: PrepareConfig, tree: Any, *, layout: str, index_errors: list, release: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the job would keep, drop, read and write (``--plan-only``), from the plan alone."""
    c = plan.counts
    dropped = Counter(d.reason for d in plan.classes if not d.kept)
    summary: dict[str, Any] = {
        "plan_only": True,
        "raw": cfg.raw,
        "layout": layout,
        "out": cfg.out,
        "raw_members": c["raw_members"],
        "raw_bytes": c["raw_bytes"],
        "damaged_containers": len(index_errors),
        "classes_seen": len(plan.classes),
        "classes_kept": len(plan.kept_wnids),
        "classes_dropped": sum(dropped.values()),
        "dropped_classes_by_reason": dict(sorted(dropped.items())),
        "classes_flagged": sum(1 for d in plan.classes if d.kept and d.flag),
        "members": {
            "to_read": c["to_read"],
            "dropped_class": c["dropped_class"],
            "rejected_duplicate": c["duplicate"],
            # rows of a test split (inputs that come split): only where there are any
            **({"rejected_other_split": c["other_split"]} if c.get("other_split") else {}),
        },
        "to_read_not_readable_looking": c["to_read_not_readable_looking"],
        "bytes_to_read": c["to_read_bytes"],
        "tree_levels": tree.num_levels,
    }
    for split in SPLITS:
        sizes = [s.num_rows for s in plan.shards if s.split == split]
        summary[f"{split}_samples"] = plan.num_samples(split)
        summary[f"{split}_shards"] = len(sizes)
        summary[f"{split}_shard_sizes"] = [min(sizes), max(sizes)] if sizes else [0, 0]
    summary["options"] = {k: cfg.output_fingerprint()[k] for k in ("min_images", "val_per_class", "seed")}
    summary["split"] = "kept as the input gives it" if plan.kept_split else "made by --val-per-class"
    summary["release"] = release
    return redact(summary)


def plan_text(s: dict[str, Any]) -> str:
    """``plan_summary`` for people: what a run with these options would do."""
    reasons = ", ".join(f"{k} {v:,}" for k, v in s["dropped_classes_by_reason"].items()) or "none"
    m = s["members"]
    lines = [
        f"plan for {s['raw']} (layout {s['layout']}) -> {s['out']}; nothing was written but {s['out']}/_work/",
        f"raw members:      {s['raw_members']:,} ({s['raw_bytes'] / 1e9:,.2f} GB)"
        + (f", {s['damaged_containers']:,} damaged class tars" if s["damaged_containers"] else ""),
        f"classes:          {s['classes_seen']:,} seen, {s['classes_kept']:,} kept, {s['classes_dropped']:,} dropped "
        f"({reasons}); tree levels {s['tree_levels']}",
        f"members:          {m['to_read']:,} to read, {m['dropped_class']:,} in dropped classes, "
        f"{m['rejected_duplicate']:,} rejected as duplicates"
        + (f", {m['rejected_other_split']:,} of another split" if m.get("rejected_other_split") else ""),
        f"                  of those to read, {s['to_read_not_readable_looking']:,} are not readable-looking "
        "(empty or not an image name) and will be rejected",
        f"train:            {s['train_samples']:,} samples in {s['train_shards']:,} shards "
        f"({s['train_shard_sizes'][0]:,}-{s['train_shard_sizes'][1]:,} each)",
        f"validation:       {s['validation_samples']:,} samples in {s['validation_shards']:,} shards "
        f"({s['validation_shard_sizes'][0]:,}-{s['validation_shard_sizes'][1]:,} each)",
        f"bytes to read:    {s['bytes_to_read'] / 1e9:,.2f} GB",
    ]
    if s.get("classes_flagged"):
        lines.append(f"flagged:          {s['classes_flagged']:,} listed classes under --min-images (kept)")
    if s.get("release"):
        from in21k.pipeline.release import summary_line

        lines.append(f"release:          {summary_line(s['release'])}")
    for e in s.get("against", []):
        lines.append(f"evaluation set:   {e['name']} ({e['kind']} {e['url']}): {e['images']:,} images")
    t = s.get("timings", {})
    if t:
        lines.append(f"time:             index {t.get('index', 0):.1f} s, plan {t.get('plan', 0):.1f} s")
    return "\n".join(lines) + "\n"
