"""``in21k audit``: which images of an existing dataset are pictures of evaluation sets. Nothing is rewritten.

The dataset is one that ``in21k prepare`` wrote (its manifest holds every written image's fingerprints: nothing
is decoded) or any WebDataset: shards listed by its ``_info.json`` or every ``.tar`` below ``--data``, whose
``.jpg``/``.jpeg``/``.png``/``.webp`` members are decoded and fingerprinted in worker processes. Evaluation
sets (``--against NAME=URL``, ``in21k.pipeline.against``) are fingerprinted the same way; an image of either
that does not decode is counted, not fatal. Pictures are compared as ``prepare`` compares them (the join of
``in21k.pipeline.dedup``, then the colour check), and the images are processed first as that dataset's
``prepare`` did (its ``_info.json`` config; ``--resize``/``--size`` for other datasets).

The result: per evaluation set, its images, how many do not decode, how many are matched and how many dataset
images match; and every matched pair (dataset key and shard, ``NAME:member``, distances).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import posixpath
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from in21k import storage
from in21k.dataset import INFO_FILE, SCHEMA, manifest_name
from in21k.errors import DataError
from in21k.pipeline import against
from in21k.pipeline.clean import tar_samples
from in21k.pipeline.dedup import scan_tables, split_pairs, tables
from in21k.pipeline.fingerprint import COLOR_BYTES, colors_array
from in21k.pipeline.options import AuditConfig
from in21k.progress import progress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the sample members audited in a foreign WebDataset


def _shard_fingerprints(url: str, settings: against.ImageSettings, storage_options: Any) -> dict[str, Any]:
    """Keys and fingerprints of the image samples of one WebDataset shard (a worker process's task)."""
    items: list[tuple[str, bytes]] = []
    with storage.open_stream(url, storage_options=storage_options) as f:
        for key, parts in tar_samples(f):
            ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
            if ext is not None:
                items.append((key, parts[ext]))
    cols = against.fingerprint_images(items, settings)
    return {"shard": url, **cols}


def _our_manifest(data: str, info: dict[str, Any], storage_options: Any) -> dict[str, Any] | None:
    """Fingerprints of the written images of a dataset ``prepare`` wrote, from its manifest (None: no fingerprints
    there, an older dataset: decode it instead)."""
    import pyarrow.parquet as pq

    store = storage.Store(data, storage_options)
    names = []
    for split, entry in info["splits"].items():
        for filename in entry["filenames"]:
            stem = posixpath.basename(str(filename)).rsplit(".", 1)[0]  # in21k-<split>-NNNNNN
            names.append((str(filename), manifest_name(split, int(stem.rsplit("-", 1)[-1]))))
    out: dict[str, list] = {"key": [], "shard": [], "phash": [], "colors": []}
    for a in range(0, len(names), 256):
        batch = names[a : a + 256]
        blobs = store.read_many([m for _, m in batch])
        for (shard, _), blob in zip(batch, blobs, strict=True):
            table = pq.read_table(io.BytesIO(blob))
            if "phash" not in table.column_names:
                return None
            table = table.filter(table.column("status").to_numpy(zero_copy_only=False) == "written")
            table = table.filter(table.column("phash").is_valid())
            out["key"] += table.column("key").to_pylist()
            out["shard"] += [shard] * table.num_rows
            out["phash"].append(table.column("phash").to_numpy().astype(np.uint64))
            out["colors"].append(colors_array(table.column("colors")))
    return {
        "key": out["key"],
        "shard": out["shard"],
        "phash": np.concatenate(out["phash"]) if out["phash"] else np.empty(0, np.uint64),
        "colors": np.concatenate(out["colors"]) if out["colors"] else np.empty((0, COLOR_BYTES), np.uint8),
        "unreadable": 0,
        "source": "manifest",
    }


def _shard_urls(data: str, info: dict[str, Any] | None, storage_options: Any) -> list[str]:
    if info is not None:
        return [storage.join(data, str(f)) for entry in info.get("splits", {}).values() for f in entry["filenames"]]
    fs, path = storage.filesystem(data, storage_options)
    return sorted(storage.full_url(fs, p) for p in fs.find(path) if p.endswith(".tar"))


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    """Audit ``cfg.data`` against ``cfg.against``; returns the result that ``format_result`` prints."""
    cfg.validate()
    specs = against.parse_specs(cfg.against)
    eval_sets = [against.EvalSet.open(name, url, cfg.storage_options) for name, url in specs]
    info = None
    if storage.exists(storage.join(cfg.data, INFO_FILE), storage_options=cfg.storage_options):
        info = storage.read_json(storage.join(cfg.data, INFO_FILE), storage_options=cfg.storage_options)
    settings = against.ImageSettings(resize=cfg.resize, size=cfg.size)
    ours = isinstance(info, dict) and info.get("schema") == SCHEMA
    if ours:
        made = info.get("config") or {}
        settings = against.ImageSettings(
            resize=made.get("resize", cfg.resize), size=made.get("size", cfg.size), quality=made.get("quality", 95)
        )
    workers = cfg.workers or os.cpu_count() or 1
    dataset = _our_manifest(cfg.data, info, cfg.storage_options) if ours else None
    # Worker processes are spawned, not forked: this process may hold object-store clients with threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        if dataset is None:
            urls = _shard_urls(cfg.data, info if isinstance(info, dict) else None, cfg.storage_options)
            if not urls:
                raise DataError(f"--data {cfg.data}: no shards (no _info.json filenames and no .tar files below it)")
            dataset = {"key": [], "shard": [], "phash": [], "colors": [], "unreadable": 0, "source": "decoded"}
            futures = [pool.submit(_shard_fingerprints, u, settings, cfg.storage_options) for u in urls]
            with progress(total=len(urls), unit="shard", desc="fingerprinting the dataset", enabled=cfg.progress) as b:
                for fut in futures:
                    cols = fut.result()
                    ok = [k for k, e in enumerate(cols["error"]) if e is None]
                    dataset["unreadable"] += len(cols["error"]) - len(ok)
                    dataset["key"] += [cols["member"][k] for k in ok]
                    dataset["shard"] += [cols["shard"]] * len(ok)
                    dataset["phash"].append(np.array([cols["phash"][k] for k in ok], np.uint64))
                    dataset["colors"].append(colors_array([cols["colors"][k] for k in ok]))
                    b.update()
            dataset["phash"] = np.concatenate(dataset["phash"])
            dataset["colors"] = np.concatenate(dataset["colors"])
        evals = []
        for es in eval_sets:
            futures = [pool.submit(_eval_chunk, chunk, es.kind, settings, cfg.storage_options) for chunk in es.chunks()]
            cols: dict[str, list] = {name: [] for name, _ in against.EVAL_COLUMNS}
            with progress(
                total=len(es.members), unit="img", desc=f"fingerprinting {es.name}", enabled=cfg.progress
            ) as b:
                for fut, chunk in zip(futures, es.chunks(), strict=True):
                    for name, values in fut.result().items():
                        cols[name] += values
                    b.update(len(chunk))
            evals.append(cols)
    return _match(cfg, dataset, eval_sets, evals)


def _eval_chunk(chunk: list, kind: str, settings: against.ImageSettings, storage_options: Any) -> dict[str, list]:
    return against.fingerprint_images(against.read_chunk(chunk, kind, storage_options), settings)


def _match(cfg: AuditConfig, dataset: dict[str, Any], eval_sets: list[Any], evals: list[dict[str, list]]) -> dict:
    n = len(dataset["phash"])
    e_set, e_member, e_hash, e_colors = [], [], [], []
    summary = []
    for s, (es, cols) in enumerate(zip(eval_sets, evals, strict=True)):
        ok = [k for k, h in enumerate(cols["phash"]) if h is not None]
        e_set += [s] * len(ok)
        e_member += [cols["member"][k] for k in ok]
        e_hash += [cols["phash"][k] for k in ok]
        e_colors += [cols["colors"][k] for k in ok]
        unreadable = [(m, e) for m, h, e in zip(cols["member"], cols["phash"], cols["error"], strict=True) if h is None]
        summary.append(
            {
                "name": es.name,
                "url": es.url,
                "images": len(cols["member"]),
                "unreadable": len(unreadable),
                "unreadable_examples": [f"{m}: {e}" for m, e in unreadable[:5]],
            }
        )
    hashes = np.concatenate([dataset["phash"], np.array(e_hash, np.uint64)])
    colors = np.concatenate(
        [dataset["colors"], colors_array(e_colors) if e_colors else np.empty((0, COLOR_BYTES), np.uint8)]
    )
    result = scan_tables(hashes, range(len(tables())), cfg.dedup_distance, colors, cfg.dedup_color_distance)
    a, b = split_pairs(result["pairs"])
    cross = (a < n) & (b >= n)
    a, b, d, cd = a[cross], b[cross], result["distances"][cross], result["color_distances"][cross]
    pairs = []
    matched: dict[int, tuple[set, set]] = {s: (set(), set()) for s in range(len(eval_sets))}
    for i, j, dist, c in zip(a.tolist(), b.tolist(), d.tolist(), cd.tolist(), strict=True):
        k = j - n
        s = e_set[k]
        matched[s][0].add(k)
        matched[s][1].add(i)
        pairs.append(
            {
                "key": dataset["key"][i],
                "shard": dataset["shard"][i],
                "eval": eval_sets[s].name,
                "member": e_member[k],
                "distance": int(dist),
                "color_distance": round(float(c), 2),
            }
        )
    for s, entry in enumerate(summary):
        entry.update(matched_images=len(matched[s][0]), matched_dataset_images=len(matched[s][1]))
    pairs.sort(key=lambda p: (p["eval"], p["member"], p["key"]))
    return {
        "data": cfg.data,
        "dataset_images": n,
        "dataset_unreadable": dataset["unreadable"],
        "fingerprints_from": dataset["source"],
        "eval_sets": summary,
        "pairs": pairs,
        "thresholds": {"max_distance": cfg.dedup_distance, "max_color_distance": cfg.dedup_color_distance},
        "candidates": int(result["candidates"]),
    }


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"audit of {r['data']}: {r['dataset_images']:,} images (fingerprints from the "
        f"{'manifest' if r['fingerprints_from'] == 'manifest' else 'decoded shards'}"
        + (f"; {r['dataset_unreadable']:,} do not decode" if r["dataset_unreadable"] else "")
        + ")"
    ]
    for e in r["eval_sets"]:
        lines.append(
            f"  {e['name']} ({e['url']}): {e['images']:,} images, {e['unreadable']:,} unreadable, "
            f"{e['matched_images']:,} matched by {e['matched_dataset_images']:,} dataset images"
        )
        lines += [f"    unreadable: {x}" for x in e["unreadable_examples"]]
    if r["pairs"]:
        lines += ["", "matched pairs (dataset key, shard, evaluation image, hash / colour distance):"]
        lines += [
            f"  {p['key']}  {p['shard']}  {p['eval']}:{p['member']}  {p['distance']} / {p['color_distance']}"
            for p in r["pairs"]
        ]
    else:
        lines.append("no dataset image matches an evaluation image")
    return "\n".join(lines)
