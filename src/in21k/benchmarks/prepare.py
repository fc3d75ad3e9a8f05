"""``in21k bench decode`` and ``in21k bench prepare``: our image path and our job against baselines.
(Heavy imports live inside the functions: the CLI imports this module to build ``--help``.)

The corpus (``in21k.benchmarks.data.make_corpus``) has the release's size mix. ``bench decode`` times
three contenders on it: ``ours`` (prepare's ``process_image``), ``original_cv2`` (the original's exact
path, needs OpenCV) and ``limit_turbo`` (libjpeg-turbo's decode alone, the floor any decode-resize-encode
path stands on), and scores ours and the original's outputs for fidelity.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.data import is_tail, make_corpus
from in21k.benchmarks.options import DecodeBenchConfig, PrepareBenchConfig

_SIZE = 224  # the original's output side (and ours by default)
_QUALITY = 95

_WHAT = {
    "ours": "prepare's process_image: libjpeg-turbo (simplejpeg) decode at the power-of-two DCT scale, Pillow "
    "BILINEAR (antialiased) squash 224, Pillow JPEG q95",
    "original_cv2": "Alibaba-MIIL resize.py: cv2 full decode (imdecode of the bytes), cv2.resize (224, 224) "
    "INTER_LINEAR, imencode q95; images under 224 px on both sides copied unchanged; cv2.setNumThreads(1)",
    "limit_turbo": "libjpeg-turbo (simplejpeg) decode alone to RGB at the same power-of-two DCT scale; no resize, "
    "no encode",
}


def _decode_contenders() -> tuple[dict[str, Callable[[bytes], object]], dict[str, str]]:
    """The paths to time, by name, and why any contender is absent (never replaced by a stand-in)."""
    import numpy as np

    from in21k.pipeline.imaging import dct_scale, process_image

    paths: dict[str, Callable[[bytes], object]] = {"ours": process_image}
    absent: dict[str, str] = {}
    try:
        import cv2
    except ImportError as exc:
        absent["original_cv2"] = f"cv2 not importable ({exc}): pip install 'in21k[bench]'"
    else:
        flags = [cv2.IMWRITE_JPEG_QUALITY, _QUALITY]

        def original_cv2(data: bytes) -> bytes:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if max(img.shape[:2]) < _SIZE:
                return data  # resize.py copied the file
            return cv2.imencode(".jpg", cv2.resize(img, (_SIZE, _SIZE)), flags)[1].tobytes()

        paths["original_cv2"] = original_cv2
    try:
        import simplejpeg
    except ImportError as exc:
        absent["limit_turbo"] = f"simplejpeg not importable ({exc})"
    else:

        def limit_turbo(data: bytes) -> object:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            scale = dct_scale(w, h, _SIZE, _SIZE)
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // scale), min_width=-(-w // scale))

        paths["limit_turbo"] = limit_turbo
    return paths, absent


def _zone_plate(side: int) -> bytes:
    """A ``side`` px grey zone plate as a quality-95 RGB JPEG: frequency r / side cycles/px at radius r."""
    import numpy as np
    from PIL import Image

    c = np.arange(side) + 0.5 - side / 2
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    grey = np.round(127.5 + 127.5 * np.cos(np.pi * r2 / side)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buf, format="JPEG", quality=_QUALITY)
    return buf.getvalue()


def _reference(data: bytes):
    """Full decode in float, Pillow LANCZOS (antialiased: its kernel widens with the factor) to 224 x 224."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    bands = [band.convert("F").resize((_SIZE, _SIZE), Image.Resampling.LANCZOS) for band in img.split()]
    return np.stack([np.asarray(b, dtype=np.float64) for b in bands], axis=-1)


def _pixels(jpeg: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)


def _fidelity(corpus: list[bytes], tail: list[bool], paths: dict[str, Callable[[bytes], object]]) -> dict[str, Any]:
    """Mean absolute difference to an antialiased reference, and aliasing on zone plates.

    Reference: the full-resolution decode, each band in float, resized to 224 x 224 with Pillow's LANCZOS
    (a windowed sinc whose support widens with the downscale factor, so it removes what the 224 px grid
    cannot hold). Each path's output JPEG is decoded back and compared, in 8-bit levels.

    Aliasing: a zone plate (``cos(pi r^2 / side)``, grey, JPEG q95) has at radius r a frequency of r / 224
    cycles per *output* pixel once squashed to 224 px. Where that exceeds 0.6 (1.2x the output's Nyquist
    0.5) and stays under 0.9x the source's own Nyquist, no 224 px image can show the pattern: a correct
    downscale is flat mid-grey there, and whatever is left is the pattern folded back to lower frequencies
    (moiré), i.e. aliasing. ``alias_rms`` is the RMS deviation from 127.5 over that ring; a full-contrast
    pattern would give 90. The two sizes are the corpus' majority (450 px: factor ~2) and its tail (1,500 px).
    """
    import numpy as np

    names = [n for n in ("ours", "original_cv2") if n in paths]
    sums = {n: {"main": 0.0, "tail": 0.0} for n in names}
    counts = {"main": 0, "tail": 0}
    for data, is_big in zip(corpus, tail, strict=True):
        outs = {}
        for n in names:
            out = paths[n](data)
            outs[n] = _pixels(out.jpeg if n == "ours" else out)
        if any(o.shape != (_SIZE, _SIZE, 3) for o in outs.values()):
            continue  # a file the original copied unchanged: no 224 px output to compare
        ref = _reference(data)
        bucket = "tail" if is_big else "main"
        counts[bucket] += 1
        for n in names:
            sums[n][bucket] += float(np.abs(outs[n] - ref).mean())
    total = counts["main"] + counts["tail"]

    def mean(n: str, bucket: str | None) -> float | None:
        if bucket is None:
            return round((sums[n]["main"] + sums[n]["tail"]) / total, 3) if total else None
        return round(sums[n][bucket] / counts[bucket], 3) if counts[bucket] else None

    alias: dict[str, dict[str, float]] = {}
    for side in (450, 1500):
        plate = _zone_plate(side)
        c = (np.arange(_SIZE) + 0.5) * side / _SIZE - side / 2  # output pixel centres in source pixels
        r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
        ring = (r / _SIZE >= 0.6) & (r <= 0.45 * side)
        outs = {"reference": _reference(plate)}
        for n in names:
            out = paths[n](plate)
            outs[n] = _pixels(out.jpeg if n == "ours" else out)
        alias[f"zone_plate_{side}px"] = {
            n: round(float(np.sqrt(((o.mean(axis=-1)[ring] - 127.5) ** 2).mean())), 2) for n, o in outs.items()
        }
    result: dict[str, Any] = {
        "reference": "full decode, float per band, Pillow LANCZOS to 224x224 (antialiased)",
        "images": total,
        "mean_abs_diff": {n: mean(n, None) for n in names},
        "mean_abs_diff_main_300_500px": {n: mean(n, "main") for n in names},
        "mean_abs_diff_tail_800_4000px": {n: mean(n, "tail") for n in names},
        "alias_rms": alias,
        "alias_note": "RMS deviation from mid-grey (8-bit levels) where a zone plate's frequency is 1.2x-"
        "(0.9 x source Nyquist) above the 224 px Nyquist: 0 is no aliasing, 90 the full pattern",
    }
    if "original_cv2" in names:
        result["ours_at_least_as_good_as_original"] = mean("ours", None) <= mean("original_cv2", None) and all(
            a["ours"] <= a["original_cv2"] for a in alias.values()
        )
    return result


def _fingerprint_cost(corpus: list[bytes], rounds: int) -> dict[str, Any]:
    """The CPU the fingerprints add to the image step, measured as a shard task spends it: the corpus as one stream
    through process_image with the fingerprints (thumbnail and exact hash per image, the DCT hash and colour grid
    per read batch of 32: ``in21k.pipeline.shard``) and as one stream without, passes alternated (ABBA)."""
    from in21k.pipeline.fingerprint import exact_hash, fingerprints
    from in21k.pipeline.imaging import process_image

    def with_fingerprints() -> None:
        thumbs: list[Any] = []
        for data in corpus:
            result = process_image(data, fingerprint=True)
            if result.ok:
                exact_hash(result.jpeg)
                thumbs.append(result.thumbnail)
                if len(thumbs) == 32:
                    fingerprints(thumbs)
                    thumbs.clear()
        fingerprints(thumbs)

    def without() -> None:
        for data in corpus:
            process_image(data)

    cpu = {"with": 0.0, "without": 0.0}
    for r in range(rounds):
        order = (("with", with_fingerprints), ("without", without))
        for name, run in order if r % 2 else order[::-1]:
            c0 = time.process_time()
            run()
            cpu[name] += time.process_time() - c0
    per_image = {k: v / (rounds * len(corpus)) * 1e6 for k, v in cpu.items()}
    return {
        "ratio": round(cpu["with"] / cpu["without"] - 1, 4),
        "us_per_image": round(per_image["with"] - per_image["without"], 1),
        "image_step_us_per_image": round(per_image["without"], 1),
        "how": "process CPU time; the corpus as a stream with and without fingerprints, passes alternated",
    }


def run_decode_bench(cfg: DecodeBenchConfig) -> dict[str, Any]:
    """Every contender over the same images, interleaved image by image, CPU time of this one process."""
    paths, absent = _decode_contenders()
    corpus = make_corpus(cfg.images, tail_share=cfg.tail_share, seed=cfg.seed)
    tail = [is_tail(d) for d in corpus]
    names = list(paths)
    cpu = {n: {"main": 0.0, "tail": 0.0} for n in names}
    wall = dict.fromkeys(names, 0.0)
    cv2_threads = None
    if "original_cv2" in paths:
        import cv2

        # One worker per core, as a job runs; OpenCV's own pool would only add spin time to the CPU total.
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
    try:
        for r in range(cfg.rounds):
            for i, data in enumerate(corpus):
                bucket = "tail" if tail[i] else "main"
                k = (i + r) % len(names)  # rotate who goes first so cache warmth favours no one
                for name in names[k:] + names[:k]:
                    fn = paths[name]
                    c0, w0 = time.process_time(), time.perf_counter()
                    fn(data)
                    cpu[name][bucket] += time.process_time() - c0
                    wall[name] += time.perf_counter() - w0
        fidelity = _fidelity(corpus, tail, paths) if cfg.fidelity else None
        fingerprint_cost = _fingerprint_cost(corpus, max(2, cfg.rounds))
    finally:
        if cv2_threads is not None:
            cv2.setNumThreads(cv2_threads)
    n_tail = sum(tail) * cfg.rounds
    n_main = len(corpus) * cfg.rounds - n_tail
    total = len(corpus) * cfg.rounds

    def rate(n: int, seconds: float) -> float | None:
        return round(n / seconds, 1) if seconds > 0 and n else None

    contenders = {
        name: {
            "images_per_s_per_core": rate(total, cpu[name]["main"] + cpu[name]["tail"]),
            "main_300_500px": rate(n_main, cpu[name]["main"]),
            "tail_800_4000px": rate(n_tail, cpu[name]["tail"]),
            "wall_images_per_s": rate(total, wall[name]),
            "what": _WHAT[name],
        }
        for name in names
    }

    def ratio(other: str, key: str = "images_per_s_per_core") -> float | None:
        if other not in contenders or not contenders["ours"][key] or not contenders[other][key]:
            return None
        return round(contenders["ours"][key] / contenders[other][key], 3)

    original = cpu.get("original_cv2")
    result: dict[str, Any] = {
        "bench": "decode",
        "ratio": ratio("original_cv2"),
        "fingerprint_cost": fingerprint_cost["ratio"],
        "fingerprint": fingerprint_cost,
        "ratio_vs_original": ratio("original_cv2"),
        "ratio_vs_limit": ratio("limit_turbo"),
        "ratio_vs_original_main_300_500px": ratio("original_cv2", "main_300_500px"),
        "ratio_vs_original_tail_800_4000px": ratio("original_cv2", "tail_800_4000px"),
        "ratio_vs_limit_main_300_500px": ratio("limit_turbo", "main_300_500px"),
        "ratio_vs_limit_tail_800_4000px": ratio("limit_turbo", "tail_800_4000px"),
        **{f"{name}_images_per_s_per_core": contenders[name]["images_per_s_per_core"] for name in names},
        "contenders": contenders,
        "time_share_of_tail_in_original": round(original["tail"] / sum(original.values()), 3) if original else None,
        "fidelity": fidelity,
        "images": len(corpus),
        "tail_images": sum(tail),
        "mean_kb_per_image": round(sum(map(len, corpus)) / len(corpus) / 1024, 1),
        "rounds": cfg.rounds,
        "timer": "process CPU time, one process, all contenders interleaved image by image",
        **machine(),
    }
    if absent:
        result["absent"] = absent
    return result


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
    from in21k.pipeline.job import local_ray, prepare
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
            dedup=False,  # the corpus reuses its images on purpose: this measures the image step, not the finder
            progress=False,
        )
        pcfg.validate()
        with local_ray(num_cpus=n_cpus):  # a new instance, as prepare starts it, not a running cluster
            # Warm the worker pool (process start, imports of PIL/pyarrow/fsspec) so one-off start-up is not
            # billed to a job that, for real, runs for hours.
            ray.get([ray.remote(num_cpus=1)(_warm_worker).remote() for _ in range(n_cpus)])
            t0 = time.perf_counter()
            summary = prepare(pcfg)
            seconds = time.perf_counter() - t0
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
