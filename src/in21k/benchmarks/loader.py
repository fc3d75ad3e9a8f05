"""``in21k bench loader``: our loader's images/s against ImageFolder and against the decode+transform limit.

Measured on the same images (the first shards of the split, up to ``max_samples``), the same
transform, batch size and worker count:

- ``ours``: ``create_loader`` streaming the shards (from local disk; with ``--s3`` also from a
  SeaweedFS server started on 127.0.0.1, or from ``--s3-url`` for a copy you uploaded yourself);
- ``imagefolder``: torchvision ``ImageFolder`` over the same images extracted to a temporary folder,
  with our exact uint8 transform (file bytes in, the same ``ImageTransform`` out, default collate);
- ``imagefolder_original``: ``ImageFolder`` with the original's path (Resize, CutoutPIL, RandAugment,
  ``ToTensor`` to float) for reference;
- ``limit``: the per-sample decode+transform work alone (``ImageTransform.into``, the call the loader
  makes, into one reused image buffer), in a tight loop over in-memory bytes, in ``num_workers``
  processes at once;
- ``limit_turbo``: libjpeg-turbo (simplejpeg) decoding the same JPEGs at their stored size into one
  reused buffer, nothing else, in ``num_workers`` processes at once: the physical ceiling of a CPU
  loader of these files (with ``--loader.transform eval`` on data stored at the output size, the
  loader's per-sample work is exactly this decode). It decodes as the loader must, with libjpeg's
  accurate integer IDCT and smooth chroma upsampling (the pixels Pillow gives); ``limit_turbo_fast``,
  for reference, with libjpeg-turbo's fast IDCT and upsampling (simplejpeg's defaults: ~7% faster on
  224 px JPEGs, other pixels); ``limit_turbo_batches``, also for reference, with the accurate decode of each
  image into the next slot of batch buffers in shared memory, rotated as one loader worker rotates its
  ``BatchRing`` (``prefetch_factor + 2`` batches): the cost of putting the pixels where the trainer
  reads them, which the reused, cache-hot buffer of ``limit_turbo`` never pays;
- peers, where installed and with ``--loader.transform eval`` (they decode and squash, nothing more):
  ``webdataset`` (``WebDataset(urls).shuffle(1000).decode("rgb8")``, batched in the workers with
  ``default_collate``), ``timm_wds`` (timm's ``wds/`` reader over the same ``_info.json`` and shards,
  PIL images to uint8 arrays, a ``DataLoader``), ``litdata`` (its own optimized copy of the same images,
  written by ``litdata.optimize`` before timing; ``StreamingDataset`` decodes with torchvision, whose
  CHW view we turn back to HWC). Each yields uint8 ``[B, H, W, 3]`` batches with the same batch size and
  persistent forked workers, as ours.

Also ``ours_no_decode`` (``decode="none"``: the JPEG bytes for GPU decoding), which shows what the
loader itself can stream when decoding moves to the GPU.

Every loader keeps its workers (persistent) and runs ``warmup_epochs`` unmeasured epochs (worker
start-up, page cache); then ``rounds`` rounds each measure ``epochs`` epochs of every contender in
turn, so that load from other processes hits them alike. Images/s is the median over rounds. CPU
milliseconds per image (main process plus workers, from ``/proc``; for the limit, its processes) are
reported too: on a machine shared with other jobs they vary far less than wall-clock rates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import multiprocessing
import os
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.options import LoaderBenchConfig
from in21k.config import saved_config
from in21k.errors import ConfigError

log = logging.getLogger(__name__)


def subset_view(data: str, split: str, max_samples: int, out: Path) -> tuple[Path, list[str], int]:
    """A dataset root in ``out`` whose ``_info.json`` lists the first shards of ``split`` (absolute URLs)."""
    from in21k.dataset import DatasetWriter, PreparedDataset

    ds = PreparedDataset.open(data)
    chosen, total = [], 0
    for s in ds.shards(split):
        if total >= max_samples:
            break
        chosen.append(s)
        total += s.length
    urls = [s.url if "://" in s.url else str(Path(s.url).resolve()) for s in chosen]
    lengths = [s.length for s in chosen]
    DatasetWriter(str(out)).write_info(
        num_classes=ds.num_classes,
        splits={split: list(zip(urls, lengths, strict=True))},
        config={"subset_of": data},
        name=ds.name,
    )
    return out, urls, total


def read_samples(urls: list[str]) -> list[tuple[str, bytes, int]]:
    """(key, image bytes, class index) of every sample of local shards."""
    out = []
    for url in urls:
        with tarfile.open(url) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
        for key, files in members.items():
            if "jpg" in files and "cls" in files:
                out.append((key, files["jpg"], int(files["cls"])))
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux ``/proc``); 0 for those that are gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)
    return total / ticks


def _worker_pids(dl: Any) -> list[int]:
    """The worker processes of a DataLoader with persistent workers (after its first epoch)."""
    it = getattr(dl, "_iterator", None)
    return [w.pid for w in getattr(it, "_workers", [])]


@dataclass
class Contender:
    """One way of loading the subset: ``epoch()`` starts the next epoch; ``dl`` is its DataLoader."""

    epoch: Callable[[], Iterator]
    dl: Any = None


def _count_epochs(contender: Contender, epochs: int) -> tuple[float, int, float]:
    """Wall seconds, images and CPU seconds (main process + workers) of ``epochs`` epochs."""
    pids = _worker_pids(contender.dl)
    cpu0, wall0 = time.process_time() + _cpu_seconds(pids), time.perf_counter()
    n = 0
    for _ in range(epochs):
        for images, _labels in contender.epoch():
            n += len(images)
    wall = time.perf_counter() - wall0
    return wall, n, time.process_time() + _cpu_seconds(pids) - cpu0


def make_ours(
    data: str, cfg: LoaderBenchConfig, workers: int, *, storage_options: dict | None = None, decode: str = "cpu"
) -> Contender:
    """A function that starts the next epoch of one persistent loader."""
    from in21k.loaders import create_loader

    options = dataclasses.replace(cfg.loader, num_workers=workers)
    if storage_options is not None:
        options = dataclasses.replace(options, storage_options=storage_options)
    loader = create_loader(
        data=data,
        split=cfg.split,
        batch_size=cfg.batch_size,
        options=options,
        image_size=cfg.image_size,
        train=True,
        decode=decode,
    )
    epochs = iter(range(1_000_000))

    def one_epoch() -> Iterator:
        loader.set_epoch(next(epochs))
        return iter(loader)

    return Contender(one_epoch, loader._dl)


class _BytesTransform:
    """ImageFolder sample -> our uint8 transform (the loader returns the file's bytes)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, data: bytes) -> Any:
        import torch

        # A fresh HWC array per sample (ImageFolder's way: one tensor per sample, stacked by default_collate).
        return torch.from_numpy(self.transform(data)).permute(2, 0, 1)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def original_transform(image_size: int) -> Any:
    """The original repository's train transform (Resize, CutoutPIL, RandAugment, ToTensor)."""
    import functools

    from torchvision import transforms

    from in21k.loaders.transforms import cutout

    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            functools.partial(cutout, factor=0.5),
            transforms.RandAugment(num_ops=2, magnitude=9),
            transforms.ToTensor(),
        ]
    )


def make_imagefolder(folder: Path, cfg: LoaderBenchConfig, workers: int, *, original: bool) -> Contender:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from in21k.loaders.transforms import build_transform

    if original:
        ds = ImageFolder(str(folder), transform=original_transform(cfg.image_size))
    else:
        tf = build_transform(cfg.loader.transform, image_size=cfg.image_size, train=True)
        ds = ImageFolder(str(folder), transform=_BytesTransform(tf), loader=_read_bytes)
    dl = DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0
    )
    return Contender(lambda: iter(dl), dl)


def _squash_hwc(arr: Any, size: int) -> Any:
    """A peer's decoded HWC image at the bench's output size (a Pillow squash only when it is not already)."""
    import numpy as np

    if arr.shape[:2] == (size, size):
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(arr)).resize((size, size), Image.BILINEAR))


class _PeerPixels:
    """A peer's decoded image (PIL image, HWC array, or CHW tensor with ``chw=True``) -> uint8 HWC array."""

    def __init__(self, size: int, *, chw: bool = False) -> None:
        self.size = size
        self.chw = chw

    def __call__(self, img: Any) -> Any:
        import numpy as np

        if self.chw:
            img = img.permute(1, 2, 0)  # torchvision decodes to HWC memory and returns a CHW view: this undoes it
        return _squash_hwc(img if hasattr(img, "shape") else np.asarray(img), self.size)


class _LitSample:
    """LitData sample dict -> (uint8 HWC image, label)."""

    def __init__(self, size: int) -> None:
        self.pixels = _PeerPixels(size, chw=True)

    def __call__(self, item: dict) -> tuple[Any, int]:
        return self.pixels(item["image"]), item["label"]


def _litdata_sample(item: tuple[str, int]) -> dict[str, Any]:
    """``litdata.optimize``'s function: an opened JPEG file (LitData stores its bytes) and its label."""
    from PIL import Image

    path, label = item
    return {"image": Image.open(path), "label": label}


def make_webdataset(urls: list[str], cfg: LoaderBenchConfig, workers: int) -> Contender:
    """webdataset's plain pipeline: shard and sample shuffle, ``decode("rgb8")``, batches built in the workers."""
    import webdataset as wds
    from torch.utils.data import DataLoader, default_collate

    ds = (
        wds.WebDataset(urls, shardshuffle=len(urls), workersplitter=wds.split_by_worker, empty_check=False)
        .shuffle(1000)
        .decode("rgb8")
        .to_tuple("jpg", "cls")
        .map_tuple(_PeerPixels(cfg.image_size), int)
        .batched(cfg.batch_size, collation_fn=default_collate, partial=False)
    )
    # wds.WebLoader is this DataLoader plus a fluent interface.
    dl = DataLoader(ds, batch_size=None, num_workers=workers, **_peer_workers(workers))
    return Contender(lambda: iter(dl), dl)


def make_timm_wds(view: Path, cfg: LoaderBenchConfig, workers: int) -> Contender:
    """timm's ``wds/`` reader over the same ``_info.json`` and shards (PIL decode), in a ``DataLoader``."""
    from timm.data import create_dataset
    from torch.utils.data import DataLoader

    ds = create_dataset(
        "wds/in21k-bench", root=str(view), split=cfg.split, is_training=True, batch_size=cfg.batch_size, seed=0
    )
    ds.set_loader_cfg(num_workers=workers)
    ds.transform = _PeerPixels(cfg.image_size)
    dl = DataLoader(ds, batch_size=cfg.batch_size, num_workers=workers, drop_last=True, **_peer_workers(workers))
    epochs = iter(range(1_000_000))

    def one_epoch() -> Iterator:
        ds.set_epoch(next(epochs))
        return iter(dl)

    return Contender(one_epoch, dl)


def make_litdata(samples: list[tuple[str, int]], out: Path, cfg: LoaderBenchConfig, workers: int) -> Contender:
    """LitData over its own optimized copy of the images (written here, before any timing)."""
    import litdata as ld

    # LitData reports progress on stdout, which carries the --json result, and sets the global start method.
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ld.optimize(
                fn=_litdata_sample,
                inputs=samples,
                output_dir=str(out / "optimized"),
                chunk_bytes="64MB",
                num_workers=max(1, workers),
                start_method="fork",
                verbose=False,
            )
    finally:
        multiprocessing.set_start_method(start_method, force=True)
    # Local chunks are read in place; a cache budget set here only keeps LitData from logging its default.
    ds = ld.StreamingDataset(
        str(out / "optimized"),
        shuffle=True,
        cache_dir=str(out / "cache"),
        max_cache_size="1GB",
        transform=_LitSample(cfg.image_size),
    )
    dl = ld.StreamingDataLoader(ds, batch_size=cfg.batch_size, num_workers=workers, **_peer_workers(workers))
    return Contender(lambda: iter(dl), dl)


def _peer_workers(workers: int) -> dict[str, Any]:
    """Persistent forked workers, as ours (LitData's optimize, for one, changes the default start method)."""
    if workers == 0:
        return {}
    return {"persistent_workers": True, "multiprocessing_context": multiprocessing.get_context("fork")}


PEERS = ("webdataset", "timm_wds", "litdata")
_PEER_MODULES = {"webdataset": "webdataset", "timm_wds": "webdataset", "litdata": "litdata"}


_LIMIT_SAMPLES: list[bytes] = []
_LIMIT_RING = (4, 64)  # (batch buffers per worker, batch size) for limit_turbo_batches; set by limit_round


def _limit_worker(args: tuple[int, int, str, int, Any]) -> tuple[float, float]:
    import random

    import numpy as np
    import torch

    from in21k.loaders.transforms import build_transform

    index, workers, name, size, barrier = args
    torch.set_num_threads(1)
    random.seed(index)
    tf = build_transform(name, image_size=size, train=True)
    mine = _LIMIT_SAMPLES[index::workers]
    # The loader's exact per-sample work (decode, transform, write the uint8 pixels out), into one reused
    # image buffer: no batch, no tar, no inter-process hand-over.
    out = np.empty(tf.output_shape, dtype=np.uint8)
    tf.into(mine[0], out)
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for data in mine:
        tf.into(data, out)
    return time.perf_counter() - start, time.process_time() - cpu


def _largest_image_buffer(jpegs: list[bytes]) -> Any:
    """A flat uint8 buffer that holds the largest of ``jpegs`` decoded to RGB."""
    import numpy as np
    import simplejpeg

    largest = max(h * w for h, w, _, _ in (simplejpeg.decode_jpeg_header(d) for d in set(jpegs)))
    return np.empty(largest * 3, dtype=np.uint8)


def _turbo_limit_worker(args: tuple[int, int, str, int, Any], *, fast: bool = False) -> tuple[float, float]:
    import simplejpeg

    index, workers, _name, _size, barrier = args
    mine = _LIMIT_SAMPLES[index::workers]
    out = _largest_image_buffer(mine)  # reused for every decode: libjpeg-turbo's work and nothing else
    flags = {"fastdct": fast, "fastupsample": fast}
    simplejpeg.decode_jpeg(mine[0], colorspace="RGB", buffer=out, **flags)
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for data in mine:
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, **flags)
    return time.perf_counter() - start, time.process_time() - cpu


def _turbo_fast_limit_worker(args: tuple[int, int, str, int, Any]) -> tuple[float, float]:
    return _turbo_limit_worker(args, fast=True)


def _turbo_batches_limit_worker(args: tuple[int, int, str, int, Any]) -> tuple[float, float]:
    import mmap

    import numpy as np
    import simplejpeg

    index, workers, _name, _size, barrier = args
    mine = _LIMIT_SAMPLES[index::workers]
    # The same decode, each image into the next image slot of as many batch buffers as one loader worker
    # rotates through (shared anonymous memory, pages touched before timing): the decoded pixels must end
    # up in memory the training process reads, which a reused buffer in the cache never pays for.
    slots, batch_size = _LIMIT_RING
    h, w, _, _ = simplejpeg.decode_jpeg_header(mine[0])
    mem = mmap.mmap(-1, slots * batch_size * h * w * 3)
    ring = np.frombuffer(mem, dtype=np.uint8).reshape(slots * batch_size, h, w, 3)
    ring[:] = 0
    spare = _largest_image_buffer(mine)
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for i, data in enumerate(mine):
        out = ring[i % len(ring)]
        try:
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, fastdct=False, fastupsample=False)
        except ValueError:  # another size than the first image: the buffer does not fit it
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=spare, fastdct=False, fastupsample=False)
    return time.perf_counter() - start, time.process_time() - cpu


def limit_round(
    samples: list[bytes],
    cfg: LoaderBenchConfig,
    workers: int,
    *,
    worker: Callable[[tuple], tuple[float, float]] = _limit_worker,
) -> tuple[float, int, float]:
    """Decode(+transform) only, in ``workers`` forked processes at once, each on its share of the samples."""
    global _LIMIT_SAMPLES, _LIMIT_RING
    _LIMIT_SAMPLES = samples * cfg.epochs
    _LIMIT_RING = (cfg.loader.prefetch_factor + 2, cfg.batch_size)  # the loader's BatchRing slots per worker
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        with ctx.Pool(workers) as pool:
            args = [(i, workers, cfg.loader.transform, cfg.image_size, barrier) for i in range(workers)]
            times = pool.map(worker, args)
    n = len(_LIMIT_SAMPLES)
    _LIMIT_SAMPLES = []
    # Every process starts at the barrier; the slowest one ends the parallel run.
    return max(t[0] for t in times), n, sum(t[1] for t in times)


def extract_to_folder(samples: list[tuple[str, bytes, int]], folder: Path) -> None:
    for key, data, label in samples:
        d = folder / f"{label:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{key}.jpg").write_bytes(data)


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[dict[str, Any]]:
    """SeaweedFS on 127.0.0.1 (``in21k.benchmarks.s3local``); yields storage options and a boto3 client factory."""
    from in21k.benchmarks.s3local import start_local_s3

    server = start_local_s3(workdir, key="in21k-bench", secret="in21k-bench-secret")
    try:
        server.make_bucket("in21k-bench")
        yield {"client": server.client, "bucket": "in21k-bench", "storage_options": server.storage_options}
    finally:
        server.stop()


def run_bench(cfg: LoaderBenchConfig) -> dict[str, Any]:
    import statistics

    from tqdm import tqdm

    from in21k.dataset import DatasetWriter, PreparedDataset

    workers = cfg.loader.num_workers or 1
    result: dict[str, Any] = {"machine": machine(), "config": saved_config(cfg)}
    with tempfile.TemporaryDirectory(prefix="in21k-bench-loader-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        view, urls, total = subset_view(cfg.data, cfg.split, cfg.max_samples, tmp_path / "view")
        result["samples_in_subset"] = total
        result["shards_in_subset"] = len(urls)
        if len(urls) < workers:
            raise ConfigError(
                f"the first {cfg.max_samples} samples span {len(urls)} shard(s), fewer than {workers} workers: "
                "raise --max-samples or lower --loader.num-workers"
            )
        makers: dict[str, Contender] = {
            "ours": make_ours(str(view), cfg, workers),
            "ours_no_decode": make_ours(str(view), cfg, workers, decode="none"),
        }
        samples: list[bytes] = []
        if cfg.baselines:
            if any("://" in u for u in urls):
                raise ConfigError("the baselines need a local --data (the images are extracted from local shards)")
            raw = read_samples(urls)
            extract_to_folder(raw, tmp_path / "folder")
            samples = [s[1] for s in raw]
            makers["imagefolder"] = make_imagefolder(tmp_path / "folder", cfg, workers, original=False)
            makers["imagefolder_original"] = make_imagefolder(tmp_path / "folder", cfg, workers, original=True)
            if cfg.peers and cfg.loader.transform != "eval":
                result["peers_left_out"] = "peers decode and squash only: they run with --loader.transform eval"
            elif cfg.peers:
                missing = [p for p in PEERS if importlib.util.find_spec(_PEER_MODULES[p]) is None]
                if missing:
                    result["peers_left_out"] = f"not installed: {', '.join(missing)}"
                # Their per-sample numpy arrays are read-only views of PIL images; torch warns once per worker.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                if "webdataset" not in missing:
                    makers["webdataset"] = make_webdataset(urls, cfg, workers)
                if "timm_wds" not in missing:
                    makers["timm_wds"] = make_timm_wds(view, cfg, workers)
                if "litdata" not in missing:
                    folder = tmp_path / "folder"
                    lit_inputs = [(str(folder / f"{label:05d}" / f"{key}.jpg"), label) for key, _, label in raw]
                    makers["litdata"] = make_litdata(lit_inputs, tmp_path / "litdata", cfg, workers)
        if cfg.s3:
            (tmp_path / "weed").mkdir()
            s3 = stack.enter_context(seaweedfs(tmp_path / "weed"))
            client = s3["client"]()
            names = [f"shard-{i:06d}.tar" for i in range(len(urls))]
            for url, name in zip(urls, names, strict=True):
                client.upload_file(url, s3["bucket"], f"view/{name}")
            ds = PreparedDataset.open(str(view))
            DatasetWriter(f"s3://{s3['bucket']}/view", s3["storage_options"]).write_info(
                num_classes=ds.num_classes,
                splits={cfg.split: list(zip(names, [s.length for s in ds.shards(cfg.split)], strict=True))},
                config=ds.info.get("config"),
                name=ds.name,
            )
            makers["ours_s3"] = make_ours(
                f"s3://{s3['bucket']}/view", cfg, workers, storage_options=s3["storage_options"]
            )
        if cfg.s3_url:
            makers["ours_s3_url"] = make_ours(cfg.s3_url, cfg, workers)
        for name, make_iter in makers.items():
            log.info("warming up %s", name)
            _count_epochs(make_iter, cfg.warmup_epochs)
        limits = {"limit": _limit_worker}
        if importlib.util.find_spec("simplejpeg") is not None:
            limits["limit_turbo"] = _turbo_limit_worker
            limits["limit_turbo_fast"] = _turbo_fast_limit_worker
            limits["limit_turbo_batches"] = _turbo_batches_limit_worker
        names = list(makers) + (list(limits) if cfg.baselines else [])
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu_ms: dict[str, list[float]] = {name: [] for name in names}
        # Rounds interleave the contenders so that load from other processes hits them alike.
        with tqdm(total=cfg.rounds * len(names), desc="bench loader", disable=None) as bar:
            for _ in range(cfg.rounds):
                for name in names:
                    if name in limits:
                        seconds, n, cpu = limit_round(samples, cfg, workers, worker=limits[name])
                    else:
                        seconds, n, cpu = _count_epochs(makers[name], cfg.epochs)
                    rates[name].append(n / seconds)
                    cpu_ms[name].append(1000 * cpu / n)
                    bar.update()
    med = {k: statistics.median(v) for k, v in rates.items()}
    result["img_per_s"] = {k: round(v, 1) for k, v in med.items()}
    result["img_per_s_rounds"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    result["cpu_ms_per_img"] = {k: round(v, 3) for k, v in cpu.items()}
    ratios = {}
    peers = [k for k in PEERS if k in med]
    if cfg.baselines:
        ratios["ours_vs_imagefolder"] = med["ours"] / med["imagefolder"]
        ratios["ours_vs_imagefolder_original"] = med["ours"] / med["imagefolder_original"]
        ratios["ours_vs_limit"] = med["ours"] / med["limit"]
        if "limit_turbo" in med:
            ratios["ours_vs_turbo_limit"] = med["ours"] / med["limit_turbo"]
            ratios["ours_vs_turbo_batches_limit"] = med["ours"] / med["limit_turbo_batches"]
        if peers:
            result["best_peer"] = max(peers, key=lambda k: med[k])
            ratios["ours_vs_best_peer"] = med["ours"] / med[result["best_peer"]]
    for k in ("ours_s3", "ours_s3_url"):
        if k in med:
            ratios[f"{k}_vs_local"] = med[k] / med["ours"]
    result["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    if cfg.baselines:
        # CPU time per image is far less sensitive to other jobs on the machine than wall time: the same
        # comparisons as work efficiency (the baseline's CPU per image over ours).
        result["cpu_ratios"] = {
            "ours_vs_imagefolder": round(cpu["imagefolder"] / cpu["ours"], 3),
            "ours_vs_imagefolder_original": round(cpu["imagefolder_original"] / cpu["ours"], 3),
            "ours_vs_limit": round(cpu["limit"] / cpu["ours"], 3),
        }
        if "limit_turbo" in cpu:
            result["cpu_ratios"]["ours_vs_turbo_limit"] = round(cpu["limit_turbo"] / cpu["ours"], 3)
            result["cpu_ratios"]["ours_vs_turbo_batches_limit"] = round(cpu["limit_turbo_batches"] / cpu["ours"], 3)
        if peers:  # the peer that needs the least CPU per image
            result["cpu_ratios"]["ours_vs_best_peer"] = round(min(cpu[k] for k in peers) / cpu["ours"], 3)
    if cfg.baselines:
        result["targets"] = {
            "ours_vs_imagefolder >= 1.2": ratios["ours_vs_imagefolder"] >= 1.2,
            "ours_vs_imagefolder_original >= 1.2": ratios["ours_vs_imagefolder_original"] >= 1.2,
            "ours_vs_limit >= 0.9": ratios["ours_vs_limit"] >= 0.9,
        }
        if cfg.loader.transform == "eval" and "ours_vs_turbo_limit" in ratios:
            # With nothing but a decode to do, ours should be close to libjpeg-turbo's decode alone.
            result["targets"]["ours_vs_turbo_limit >= 0.85"] = ratios["ours_vs_turbo_limit"] >= 0.85
        if "ours_vs_best_peer" in ratios:
            result["targets"]["ours_vs_best_peer >= 1.5"] = ratios["ours_vs_best_peer"] >= 1.5
    return result


def format_result(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['nproc']} x {m['cpu']}, Pillow {m['pillow']}, torch {m['torch']}",
        f"subset: {result['samples_in_subset']} samples in {result['shards_in_subset']} shards, "
        f"{result['config']['loader']['num_workers']} workers, batch {result['config']['batch_size']}, "
        f"transform {result['config']['loader']['transform']} {result['config']['image_size']} px",
    ]
    for k, v in result["img_per_s"].items():
        lines.append(f"  {k:22s} {v:10.1f} img/s  {result['cpu_ms_per_img'][k]:8.3f} CPU ms/img")
    for k, v in result["ratios"].items():
        lines.append(f"  {k:32s} {v:6.3f}")
    if "best_peer" in result:
        lines.append(f"  best peer: {result['best_peer']}")
    if "peers_left_out" in result:
        lines.append(f"  peers left out: {result['peers_left_out']}")
    for k, v in result.get("cpu_ratios", {}).items():
        lines.append(f"  {k + ' (CPU time)':32s} {v:6.3f}")
    for k, ok in result.get("targets", {}).items():
        lines.append(f"  target {k}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)
