"""Measure ``in21k prepare`` on fall11-shaped releases: driver memory, index and plan time, a full run.

For each ``--members`` N: write a fall11-shaped release (``in21k synth --shape fall11``) under ``--work``,
run ``in21k prepare --plan-only`` on it twice in a fresh driver process (cold: Ray tasks index the class
tars; warm: the cached index is reused and no Ray starts), and with ``--full`` a whole run that writes the
shards. Each driver reports its own peak resident memory, ``VmHWM`` from ``/proc/self/status`` (peak RSS,
shared pages it touched included; ``ru_maxrss`` agrees), its timings and the job's summary. One JSON
line per run goes to stdout and to ``--results``; the release is deleted afterwards unless ``--keep``.

    python scripts/fall11_scale.py --members 1000000 4000000 14197122 --work /tmp/in21k-scale
    python scripts/fall11_scale.py --members 1000000 --full --work /tmp/in21k-scale

``prepare`` sets what its local Ray needs itself (loopback only, no usage reporting, token authentication with a
fresh token: ``in21k.pipeline.job.LOCAL_RAY_ENV``). A tool, not a test: 14.2 M members take ~15 GB of disk
and, on two cores, ~20 minutes to write and index.
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


def child(spec: dict) -> None:
    """One ``prepare`` in this process (the driver being measured); prints one JSON line."""
    from in21k.pipeline import PrepareConfig, prepare

    # dedup off: the members are copies of 256 tiny JPEGs (scripts/dedup_scale.py measures the duplicate check)
    cfg = PrepareConfig(raw=spec["raw"], out=spec["out"], plan_only=spec["plan_only"], dedup=False, progress=False)
    t0 = time.perf_counter()
    summary = prepare(cfg)
    wall = time.perf_counter() - t0
    mem = process_memory_mb()
    result = {
        "wall_s": round(wall, 1),
        "driver_peak_rss_mb": mem["VmHWM"],
        "driver_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "driver_at_end_mb": mem,
        "summary": summary,
    }
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"prepare failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(members: int, work: Path, *, full: bool, keep: bool, seed: int) -> list[dict]:
    from in21k.synth.scale import write_fall11_scale

    raw = work / f"raw-{members}"
    report_file = raw / "synth_report.json"
    if report_file.exists() and json.loads(report_file.read_text())["config"]["members"] == members:
        report = json.loads(report_file.read_text())
    else:
        shutil.rmtree(raw, ignore_errors=True)
        report = write_fall11_scale(raw, members=members, seed=seed)
    common = {
        "members": members,
        "classes": report["totals"]["classes"],
        "raw_gb": round(report["totals"]["bytes"] / 1e9, 2),
        "generate_s": report.get("generate_seconds"),
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
    }
    out = []
    plan_out = work / f"plan-{members}"
    shutil.rmtree(plan_out, ignore_errors=True)
    for run in ("plan-only cold", "plan-only warm"):
        load = os.getloadavg()[0]
        r = _run_child({"raw": str(raw), "out": str(plan_out), "plan_only": True})
        s = r.pop("summary")
        out.append(
            {
                "run": run,
                **common,
                "load_avg_start": round(load, 1),
                **r,
                "timings": s["timings"],
                "classes_kept": s["classes_kept"],
                "train_samples": s["train_samples"],
                "validation_samples": s["validation_samples"],
                "train_shards": s["train_shards"],
                "index_bytes": _du(plan_out / "_work"),
            }
        )
        expected = report["expected_prepare"]
        if (s["classes_kept"], s["train_samples"], s["validation_samples"]) != (
            expected["classes_kept"],
            expected["train_samples"],
            expected["validation_samples"],
        ):
            raise RuntimeError(f"the plan does not match the synth report: {s} vs {expected}")
    shutil.rmtree(plan_out, ignore_errors=True)
    if full:
        full_out = work / f"full-{members}"
        shutil.rmtree(full_out, ignore_errors=True)
        load = os.getloadavg()[0]
        r = _run_child({"raw": str(raw), "out": str(full_out), "plan_only": False})
        s = r.pop("summary")
        t = s["timings"]
        out.append(
            {
                "run": "full",
                **common,
                "load_avg_start": round(load, 1),
                **r,
                "timings": t,
                "written": s["written"],
                "rejected": s["rejected"],
                "dropped_class": s["dropped_class"],
                "train_shards": s["train_shards"],
                "validation_shards": s["validation_shards"],
                "images_per_s_shards": round((s["written"] + s["rejected"]) / t["shards"], 1),
                "images_per_s_end_to_end": round((s["written"] + s["rejected"]) / t["total"], 1),
                "manifest_bytes": _du(full_out / "manifest"),
                "unsharded_manifest_bytes": (full_out / "manifest" / "unsharded.parquet").stat().st_size,
                "shard_bytes": _du(full_out / "train") + _du(full_out / "validation"),
            }
        )
        shutil.rmtree(full_out, ignore_errors=True)
    if not keep:
        shutil.rmtree(raw, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--work", default="/tmp/in21k-scale", help="where releases and outputs go (deleted after)")
    parser.add_argument("--full", action="store_true", help="also run a whole prepare that writes the shards")
    parser.add_argument("--keep", action="store_true", help="keep the generated releases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=None, help="append the JSON lines to this file too")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for n in args.members:
        for row in measure(n, work, full=args.full, keep=args.keep, seed=args.seed):
            line = json.dumps(row)
            print(line, flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
