"""``in21k bench decode`` and ``in21k bench prepare``: our image path and our job against baselines.
(Heavy imports live inside the functions: the CLI imports this module to build ``--help``.)

The corpus (``in21k.benchmarks.data.make_corpus``) has the release's size mix.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.data import is_tail, make_corpus
from in21k.benchmarks.options import DecodeBenchConfig, PrepareBenchConfig


def run_decode_bench(cfg: DecodeBenchConfig) -> dict[str, Any]:
    """Both paths over the same images, interleaved image by image, CPU time of this one process."""
    from in21k.pipeline.imaging import baseline_process, process_image

    corpus = make_corpus(cfg.images, tail_share=cfg.tail_share, seed=cfg.seed)
    tail = [is_tail(d) for d in corpus]
    ours = {"main": 0.0, "tail": 0.0}
    base = {"main": 0.0, "tail": 0.0}
    wall = {"ours": 0.0, "baseline": 0.0}
    for r in range(cfg.rounds):
        for i, data in enumerate(corpus):
            bucket = "tail" if tail[i] else "main"
            # Alternate which path goes first so cache warmth favours neither.
            order = ((ours, "ours", lambda d: process_image(d)), (base, "baseline", lambda d: baseline_process(d)))
            if (i + r) % 2:
                order = order[::-1]
            for acc, name, fn in order:
                c0, w0 = time.process_time(), time.perf_counter()
                fn(data)
                acc[bucket] += time.process_time() - c0
                wall[name] += time.perf_counter() - w0
    n_tail = sum(tail) * cfg.rounds
    n_main = (len(corpus) - sum(tail)) * cfg.rounds
    total = len(corpus) * cfg.rounds
    ours_rate = total / sum(ours.values())
    base_rate = total / sum(base.values())

    def rate(n: int, s: float) -> float | None:
        return round(n / s, 1) if s > 0 and n else None

    return {
        "bench": "decode",
        "ratio": round(ours_rate / base_rate, 3),
        "ours_images_per_s_per_core": round(ours_rate, 1),
        "baseline_images_per_s_per_core": round(base_rate, 1),
        "ours_wall_images_per_s": round(total / wall["ours"], 1),
        "baseline_wall_images_per_s": round(total / wall["baseline"], 1),
        "ratio_main_300_500px": round(rate(n_main, ours["main"]) / rate(n_main, base["main"]), 3) if n_main else None,
        "ratio_tail_800_4000px": round(rate(n_tail, ours["tail"]) / rate(n_tail, base["tail"]), 3) if n_tail else None,
        "time_share_of_tail_in_baseline": round(base["tail"] / sum(base.values()), 3),
        "images": len(corpus),
        "tail_images": sum(tail),
        "mean_kb_per_image": round(sum(map(len, corpus)) / len(corpus) / 1024, 1),
        "rounds": cfg.rounds,
        "baseline": "PIL full decode + convert RGB + resize 224x224 BILINEAR + JPEG q95 (cv2 not installed)",
        "ours": "prepare's process_image: JPEG draft (DCT scaling) + BILINEAR squash 224 + JPEG q95",
        "timer": "process CPU time, one process, both paths interleaved image by image",
        **machine(),
    }


def _warm_worker() -> int:
    """First-use costs of a worker (imports, PIL plugin registry, parquet writer set-up), paid once."""
    import time as _time

    from PIL import Image

    from in21k.pipeline.imaging import process_image
    from in21k.pipeline.shard import manifest_parquet

    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, format="JPEG")
    process_image(buf.getvalue())
    manifest_parquet([])
    _time.sleep(0.5)  # hold the CPU so every warm-up lands on a different worker
    return os.getpid()


def run_prepare_bench(cfg: PrepareBenchConfig) -> dict[str, Any]:
    """Job images/s on N local Ray CPUs against N x the single-core rate of the same members."""
    import ray

    from in21k.pipeline import PrepareConfig
    from in21k.pipeline.imaging import process_image
    from in21k.pipeline.job import prepare
    from in21k.synth.generator import tar_bytes
    from in21k.tree import SemanticTree
    from in21k.tree.wordnet import load_wordnet

    n_cpus = cfg.num_cpus or os.cpu_count() or 1
    pool = make_corpus(cfg.distinct, tail_share=cfg.tail_share, seed=cfg.seed)
    work = tempfile.mkdtemp(prefix="in21k-bench-", dir=cfg.workdir)
    try:
        raw = os.path.join(work, "raw")
        os.makedirs(raw)
        wnids = SemanticTree.builtin("fall11").wnids[: cfg.classes]
        per_class = -(-cfg.images // cfg.classes)
        k = 0
        for wnid in wnids:
            members = []
            for j in range(per_class):
                members.append((f"{wnid}_{j}.JPEG", pool[k % len(pool)]))
                k += 1
            with open(os.path.join(raw, f"{wnid}.tar"), "wb") as f:
                f.write(tar_bytes(members))
        total = per_class * len(wnids)
        # Single-core rate over the same member sequence (one pass over the pool covers the mix).
        seq = [pool[i % len(pool)] for i in range(min(total, 2 * len(pool)))]
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        for data in seq:
            process_image(data)
        single = len(seq) / (time.perf_counter() - t0)
        single_cpu = len(seq) / (time.process_time() - c0)

        # Once-per-driver costs (~2 s WordNet, ~1 s torch for the .pth) that a real job amortizes over millions.
        load_wordnet()
        import torch  # noqa: F401

        val = 5
        pcfg = PrepareConfig(
            raw=raw,
            out=os.path.join(work, "out"),
            min_images=val + 1,
            val_per_class=val,
            num_train_shards=cfg.shards_per_cpu * n_cpus,
            progress=False,
        )
        pcfg.validate()
        ray.init(num_cpus=n_cpus, include_dashboard=False)
        try:
            # Warm the worker pool (process start, imports of PIL/pyarrow/fsspec) so one-off start-up is not
            # billed to a job that, for real, runs for hours.
            ray.get([ray.remote(num_cpus=1)(_warm_worker).remote() for _ in range(n_cpus)])
            t0 = time.perf_counter()
            summary = prepare(pcfg)
            seconds = time.perf_counter() - t0
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images = summary["written"] + summary["rejected"]
    job_rate = images / seconds
    shard_rate = images / summary["timings"]["shards"]
    task_cpu = summary["timings"]["shard_task_cpu_seconds_total"]
    return {
        "bench": "prepare",
        "ratio": round(job_rate / (n_cpus * single), 3),
        "ratio_shard_phase": round(shard_rate / (n_cpus * single), 3),
        # Wall-clock ratios need an otherwise idle machine; this one does not: images per CPU-second spent
        # in the shard tasks (reading, decoding, tar, manifest) against the single-core loop's.
        "cpu_efficiency_of_shard_tasks": round(images / task_cpu / single_cpu, 3) if task_cpu else None,
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "job_images_per_s": round(job_rate, 1),
        "job_images_per_s_per_core": round(job_rate / n_cpus, 1),
        "single_core_images_per_s": round(single, 1),
        "single_core_cpu_images_per_s": round(single_cpu, 1),
        "num_cpus": n_cpus,
        "images": images,
        "job_seconds": round(seconds, 2),
        "timings": summary["timings"],
        "note": "job time = prepare() end to end (index, plan, shards, report) on an already started local Ray "
        "with warm workers; WordNet and torch preloaded; wall-clock ratios are only meaningful on an idle machine",
        **machine(),
    }
