"""Measure prepare's duplicate check at fall11's size: the join and the decisions, driver memory and time.

Writes the manifest of a fall11-sized release whose fingerprints follow a model of real ones (classes of
look-alikes, exact and near copies, a cluster of near-identical images: ``in21k.benchmarks.fingerprints``; no pixels,
which would take days to decode here), then runs the duplicate check of ``in21k prepare`` on it in a fresh
driver process, as the job does after its shard tasks: the fingerprints are loaded from the manifest
(``clean.load_release``), the join runs as Ray tasks on a local Ray (``job.join_in_ray``), the colours of
candidate pairs and the keys of groups are read back from the manifest, the policies decide and the decisions
are written (``clean.decide``, ``clean.write_decisions``). The driver reports its peak resident memory (``VmHWM``),
its timings and the join's counts, as one JSON line (also appended to ``--results``).

    python scripts/dedup_scale.py --members 14197122 --work /tmp/in21k-dedup-scale
    python scripts/dedup_scale.py --members 1000000 --work /tmp/in21k-dedup-scale --num-cpus 2

A tool, not a test: 14.2 M members take ~1.5 GB of disk and, on two cores, ~15 minutes to write and ~10 to join.
The local Ray is started as ``prepare`` starts its own (``in21k.pipeline.job.local_ray``: loopback only, token
authentication with a fresh token).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from in21k.benchmarks.common import process_memory_mb


def generate(out: Path, members: int, seed: int) -> dict:
    from in21k.benchmarks.fingerprints import PART_ROWS, manifest_parts
    from in21k.dataset import manifest_name
    from in21k.progress import progress

    marker = out / "fingerprints.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if (meta["members"], meta["seed"]) == (members, seed):
            return meta
    shutil.rmtree(out, ignore_errors=True)
    (out / "manifest").mkdir(parents=True)
    t0 = time.perf_counter()
    parts = 0
    planted: dict = {}
    with progress(total=members, unit="img", unit_scale=True, desc="fingerprints") as bar:
        for part, blob, counts in manifest_parts(members, seed=seed):
            (out / manifest_name("train", part)).write_bytes(blob)
            parts, planted = part + 1, counts
            bar.update(PART_ROWS)
    meta = {
        "members": members,
        "seed": seed,
        "parts": parts,
        "planted": planted,
        "generate_s": round(time.perf_counter() - t0, 1),
        "manifest_bytes": sum(p.stat().st_size for p in (out / "manifest").iterdir()),
    }
    marker.write_text(json.dumps(meta))
    return meta


def child(spec: dict) -> None:
    """The duplicate check in this process (the driver being measured); prints one JSON line."""
    import numpy as np

    from in21k.dataset import manifest_name
    from in21k.pipeline import PrepareConfig, clean
    from in21k.pipeline.job import join_in_ray, local_ray
    from in21k.storage import Store

    out, parts = spec["out"], spec["parts"]
    store = Store(out)
    names = [manifest_name("train", k) for k in range(parts)]
    t0 = time.perf_counter()
    wnids = set()
    import pyarrow.parquet as pq

    for k in range(0, parts, 97):  # the class list, from a sample of parts (wnids are n9XXXXXXX: class number)
        wnids.update(pq.read_table(Path(out) / names[k], columns=["wnid"]).column("wnid").to_pylist())
    top = max(int(w[1:]) for w in wnids) - 90_000_000
    class_of = {f"n{90_000_000 + c:08d}": c for c in range(top + 1000)}
    release = clean.load_release(store, names, class_of, rows=spec["members"])
    load_s = time.perf_counter() - t0
    mem_after_load = process_memory_mb()["VmHWM"]
    cfg = PrepareConfig(out=out, progress=False)
    with local_ray(spec["num_cpus"]):
        t1 = time.perf_counter()
        table, summary = clean.decide(
            release,
            lambda rows, columns: clean.load_details(store, names, release, rows, columns),
            clean.EvalImages(np.empty(0, np.int16), [], np.empty(0, np.uint64), np.empty((0, 48), np.uint8), []),
            clean.Policy(),
            np.zeros(len(class_of), np.int64),
            lambda release, reps, evals, policy: join_in_ray(store, names, release, reps, evals, policy, cfg),
        )
        decide_s = time.perf_counter() - t1
        clean.write_decisions(store, table, summary)
    mem = process_memory_mb()
    print(
        "RESULT "
        + json.dumps(
            {
                "members": len(release),
                "parts": parts,
                "load_s": round(load_s, 1),
                "decide_s": round(decide_s, 1),
                "driver_peak_rss_mb": mem["VmHWM"],
                "driver_peak_after_load_mb": mem_after_load,
                "driver_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "driver_at_end_mb": mem,
                "join": summary["join"],
                "near_pairs": summary["near_pairs"],
                "exact_copies": summary["exact_copies"],
                "groups": summary["groups"],
                "members_in_groups": summary["members_in_groups"],
                "removed": summary["removed"],
                "timings": summary["timings"],
                "decisions": table.num_rows,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=14_197_122)
    parser.add_argument("--work", default="/tmp/in21k-dedup-scale", help="where the manifest goes")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated manifest")
    parser.add_argument("--results", default=None, help="append the JSON line to this file too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    out = Path(args.work) / f"fingerprints-{args.members}"
    meta = generate(out, args.members, args.seed)
    load = os.getloadavg()[0]
    spec = {"out": str(out), "parts": meta["parts"], "num_cpus": args.num_cpus, "members": args.members}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"the duplicate check failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    row = {
        **meta,
        **json.loads(lines[-1][len("RESULT ") :]),
        "num_cpus": args.num_cpus,
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_start": round(load, 1),
    }
    line = json.dumps(row)
    print(line, flush=True)
    if args.results:
        with open(args.results, "a") as f:
            f.write(line + "\n")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
