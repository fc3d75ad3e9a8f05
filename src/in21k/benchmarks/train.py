"""``in21k bench train`` and ``in21k bench infer``: training and inference throughput.

The model-zoo row (the columns of the original's table, docs/design.md "Where the time goes"): without
``--batch-size`` the maximal batch is found by search (doubling from ``--search-start`` until an
out-of-memory error, then bisection to within 1/64; on CPU, where memory exhaustion is not an exception,
``--max-batch`` caps the search), then training (``bench train``) and inference (both commands) are timed
on synthetic device tensors at 90% of it. The row's ``ratio`` is against the original's V100 figure for
that model: a cross-machine reference, not a same-machine baseline.

The loader comparison of ``bench train`` (does our input path keep the accelerator busy?): the synthetic
run is what the GPU can consume (no input pipeline at all); the loader-fed run reads
real shards through ``create_loader`` (``--gpu-decode``: workers only batch JPEG bytes and the device
decodes and augments). Their ratio says how much of the accelerator the data path leaves idle.
``--make-data`` first writes a synthetic prepared dataset (224 px JPEGs at quality 95, the real
ImageNet-21K-P class list and tree), so the check needs neither WordNet nor the raw release.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from in21k.benchmarks.data import make_bench_data
from in21k.benchmarks.options import BenchInferConfig, BenchTrainConfig
from in21k.errors import ConfigError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- timing
class _Trainer:
    def __init__(self, cfg: BenchTrainConfig, tree, device: torch.device) -> None:
        from in21k.training.losses import SemanticSoftmaxLoss
        from in21k.training.model import build_model
        from in21k.training.optim import autocast_dtype, build_optimizer

        torch.manual_seed(cfg.seed)
        self.device = device
        self.model = build_model(name=cfg.model, num_classes=tree.num_classes, image_size=cfg.image_size).to(device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        self.loss_fn = SemanticSoftmaxLoss(tree).to(device)
        self.optimizer = build_optimizer(self.model, name="adam", lr=1e-4, weight_decay=1e-4)
        self.dtype = autocast_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with ctx:
            logits = self.step_model(x)
        loss = self.loss_fn(logits, y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(batches, work, *, warmup: int, steps: int, device: torch.device, desc: str = "timing") -> float:
    """img/s over ``steps`` batches after ``warmup`` untimed ones (with a progress line: CPU runs take minutes)."""
    from in21k.progress import progress

    it = iter(batches)
    with progress(total=warmup + steps, desc=desc, unit="step", interval=10.0) as bar:
        for _ in range(warmup):
            work(*next(it))
            bar.update(1)
        _sync(device)
        start, seen = time.perf_counter(), 0
        for _ in range(steps):
            seen += work(*next(it))
            bar.update(1)
        _sync(device)
    return seen / (time.perf_counter() - start)


def resolve_defaults(cfg: Any, device: torch.device, *, steps: int, warmup: int) -> Any:
    """The device-dependent defaults: ``--amp auto`` (bf16 on CUDA, none on CPU), fewer steps on a CPU."""
    cuda = device.type == "cuda"
    return dataclasses.replace(
        cfg,
        amp=("bf16" if cuda else "none") if cfg.amp == "auto" else cfg.amp,
        steps=cfg.steps if cfg.steps is not None else (steps if cuda else 10),
        warmup=cfg.warmup if cfg.warmup is not None else (warmup if cuda else 2),
    )


# ----------------------------------------------------------------------------------------- model-zoo row
# The original's model-zoo table (one V100, 224 px, 90% of the maximal batch; docs/design.md "Where the time goes"):
# model -> (maximal batch size, training img/s, inference img/s).
V100_TABLE: dict[str, tuple[int, int, int]] = {
    "mobilenetv3_large_100": (488, 1210, 5980),
    "resnet50": (320, 720, 2760),
    "tresnet_m": (520, 670, 2970),
    "vit_base_patch16_224": (160, 340, 1140),
}
RATIO_BASELINE = (
    "the original's V100 figure for this model (its model-zoo table, 224 px): a cross-machine reference, "
    "not a same-machine baseline"
)
ROW_HEADER = (
    "| Backbone | Maximal batch size | Maximal training speed (img/sec) | Maximal inference speed (img/sec) |\n"
    "| :---: | :---: | :---: | :---: |"
)
_SEARCH_LIMIT = 1 << 16


@dataclass
class BatchSearch:
    """The largest batch that fit, whether ``--max-batch`` stopped the search first, and every try."""

    max_batch: int
    capped: bool
    tried: list[tuple[int, bool]]


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, or a CPU allocation failure (when the OS refuses rather than kills)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def find_max_batch(fits: Callable[[int], bool], *, start: int = 8, cap: int | None = None) -> BatchSearch:
    """Largest ``b`` with ``fits(b)``: doubling from ``start`` until a failure (or ``cap``), then bisection.

    The bisection stops when the bracket is within 1/64 of the lower end (each try costs a step and, on
    GPUs, an autotune). Assumes that what fits at ``b`` fits below ``b``.
    """
    tried: list[tuple[int, bool]] = []

    def ok(b: int) -> bool:
        result = bool(fits(b))
        tried.append((b, result))
        log.info("batch %d: %s", b, "fits" if result else "out of memory")
        return result

    start = max(1, min(start, cap) if cap is not None else start)
    lo, hi, b = 0, None, start
    while hi is None:
        if ok(b):
            lo = b
            if (cap is not None and b >= cap) or b >= _SEARCH_LIMIT:
                return BatchSearch(b, True, tried)
            b = min(2 * b, cap) if cap is not None else 2 * b
        else:
            hi = b
    while hi - lo > max(1, lo // 64):
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    if lo == 0:
        raise RuntimeError("even a batch of 1 does not fit in memory; try a smaller --image-size or model")
    return BatchSearch(lo, False, tried)


def _fits(step: Callable[[], None], device: torch.device, cleanup: Callable[[], None] | None = None) -> bool:
    failed = False
    try:
        step()
        _sync(device)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        failed = True
    if failed or device.type == "cuda":
        # Drop what the failed step left (gradients, cached blocks) before the next, smaller try.
        if cleanup is not None:
            cleanup()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return not failed


def _synthetic_batch(
    batch: int, image_size: int, num_classes: int, device: torch.device, *, channels_last: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 3, image_size, image_size, device=device, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, num_classes, (batch,), device=device, generator=g)


def _infer_step(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> int:
    with torch.inference_mode():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            model(x)
    return x.shape[0]


def _time_infer(model, x, *, dtype, device, warmup: int, steps: int) -> float:
    was_training = model.training
    model.eval()
    try:
        return _timed(
            iter(lambda: (x,), None),
            lambda xb: _infer_step(model, xb, dtype, device),
            warmup=warmup,
            steps=steps,
            device=device,
        )
    finally:
        model.train(was_training)


def _speed(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def zoo_row(
    model: str, search: BatchSearch | None, batch: int, train_img_s: float | None, infer_img_s: float | None
) -> str:
    """One markdown row with the original table's columns."""
    if search is None:
        size = f"- (given batch {batch})"
    else:
        size = f"{search.max_batch}" + (" (capped by --max-batch)" if search.capped else "")
    return f"| {model} | {size} | {_speed(train_img_s)} | {_speed(infer_img_s)} |"


def _reference(model: str, train_img_s: float | None, infer_img_s: float | None) -> dict[str, Any]:
    ref = V100_TABLE.get(model)
    if ref is None:
        return {
            "ratio": None,
            "ratio_baseline": "none: the original's table has no figure for this model",
            "reference_v100": None,
        }
    out: dict[str, Any] = {
        "ratio_baseline": RATIO_BASELINE,
        "reference_v100": {"max_batch": ref[0], "train_img_s": ref[1], "infer_img_s": ref[2]},
    }
    out["ratio_train"] = round(train_img_s / ref[1], 4) if train_img_s else None
    out["ratio_infer"] = round(infer_img_s / ref[2], 4) if infer_img_s else None
    return out


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _check_search_possible(device: torch.device, batch_size: int | None, max_batch: int | None) -> None:
    if batch_size is None and max_batch is None and device.type != "cuda":
        raise ConfigError(
            "finding the maximal batch on CPU needs --max-batch (running out of CPU memory ends the process "
            "instead of raising an error); or give --batch-size"
        )


def bench_infer(cfg: BenchInferConfig) -> dict[str, Any]:
    """``in21k bench infer``: the maximal inference batch, then inference img/s at 90% of it."""
    from in21k.training.model import build_model
    from in21k.training.optim import autocast_dtype
    from in21k.tree import SemanticTree

    device = _device(cfg.device)
    cfg = resolve_defaults(cfg, device, steps=100, warmup=10)
    _check_search_possible(device, cfg.batch_size, cfg.max_batch)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tree = SemanticTree.load(cfg.tree)
    torch.manual_seed(cfg.seed)
    model = build_model(name=cfg.model, num_classes=tree.num_classes, image_size=cfg.image_size).to(device).eval()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if cfg.compile else model
    dtype = autocast_dtype(cfg.amp, device)

    def batch_of(b: int) -> torch.Tensor:
        return _synthetic_batch(
            b, cfg.image_size, tree.num_classes, device, channels_last=cfg.channels_last, seed=cfg.seed
        )[0]

    search = None
    batch = cfg.batch_size
    if batch is None:
        search = find_max_batch(
            lambda b: _fits(lambda: _infer_step(run_model, batch_of(b), dtype, device), device),
            start=cfg.search_start,
            cap=cfg.max_batch,
        )
        batch = max(1, int(0.9 * search.max_batch))
    infer = _time_infer(run_model, batch_of(batch), dtype=dtype, device=device, warmup=cfg.warmup, steps=cfg.steps)
    log.info("%s inference at batch %d: %.1f img/s", cfg.model, batch, infer)
    result: dict[str, Any] = {
        "bench": "infer",
        "model": cfg.model,
        "device": _device_name(device),
        "cpus": os.cpu_count(),
        "image_size": cfg.image_size,
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "num_classes": tree.num_classes,
        "max_batch": search.max_batch if search else None,
        "max_batch_capped": search.capped if search else None,
        "search": search.tried if search else None,
        "batch_size": batch,
        "train_img_s": None,
        "infer_img_s": round(infer, 1),
    }
    ref = _reference(cfg.model, None, infer)
    ref["ratio"] = ref.pop("ratio_infer", None)
    ref.pop("ratio_train", None)
    result.update(ref)
    result["row"] = zoo_row(cfg.model, search, batch, None, infer)
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def format_text(result: dict[str, Any]) -> str:
    """The table header, the row, a line saying what the ratio compares, then the JSON line."""
    lines = [ROW_HEADER, result["row"]]
    what = f"[{result['device']}, {result['image_size']} px, amp {result['amp']}, batch {result['batch_size']}]"
    if result.get("reference_v100"):
        parts = [f"{k.split('_')[1]} {result[k]:.3f}" for k in ("ratio_train", "ratio_infer") if result.get(k)]
        if result["bench"] == "infer" and result.get("ratio") is not None:
            parts = [f"infer {result['ratio']:.3f}"]
        lines.append(f"ratio vs {RATIO_BASELINE}: {', '.join(parts)} {what}")
    else:
        lines.append(f"ratio: none (the original's table has no {result['model']}) {what}")
    lines.append(json.dumps(result))
    return "\n".join(lines)


def _loader_batches(cfg: BenchTrainConfig, data: str, *, gpu_decode: bool, device: torch.device):
    from in21k.loaders import create_loader
    from in21k.training.feed import DevicePrefetcher, build_feed

    loader = create_loader(
        data=data,
        split="train",
        batch_size=cfg.batch_size,
        options=cfg.loader,
        seed=cfg.seed,
        train=True,
        image_size=cfg.image_size,
        decode="none" if gpu_decode else "cpu",
    )
    feed = build_feed(
        gpu_decode=gpu_decode,
        device=device,
        image_size=cfg.image_size,
        train=True,
        mean=loader.mean,
        std=loader.std,
        channels_last=cfg.channels_last,
    )
    epoch = 0
    while True:  # as many epochs as the timing needs; the feed runs ahead in a thread, as in training
        loader.set_epoch(epoch)
        for _, x, y in DevicePrefetcher(
            loader, feed, device=device, depth=2, seed_of=lambda i, e=epoch: e * 100_003 + i
        ):
            yield x, y
        epoch += 1


def bench_train(cfg: BenchTrainConfig) -> dict[str, Any]:
    from in21k.dataset import PreparedDataset
    from in21k.tree import SemanticTree

    device = _device(cfg.device)
    cfg = resolve_defaults(cfg, device, steps=200, warmup=20)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = cfg.data
    if cfg.make_data:
        start = time.perf_counter()
        data = str(
            make_bench_data(
                cfg.make_data,
                images=cfg.make_images,
                shards=cfg.make_shards,
                tree_name=cfg.tree,
                image_size=cfg.image_size,
                workers=cfg.make_workers,
                seed=cfg.seed,
            )
        )
        log.info(
            "wrote %d images in %d shards to %s in %.1fs",
            cfg.make_images,
            cfg.make_shards,
            data,
            time.perf_counter() - start,
        )
    if data:
        tree = SemanticTree.from_dict(
            PreparedDataset.open(data, storage_options=cfg.loader.storage_options).tree_data()
        )
    else:
        tree = SemanticTree.load(cfg.tree)
    _check_search_possible(device, cfg.batch_size, cfg.max_batch)
    trainer = _Trainer(cfg, tree, device)
    search = None
    if cfg.batch_size is None:

        def train_at(b: int) -> None:
            x, y = _synthetic_batch(
                b, cfg.image_size, tree.num_classes, device, channels_last=cfg.channels_last, seed=cfg.seed
            )
            trainer.step(x, y)

        search = find_max_batch(
            lambda b: _fits(lambda: train_at(b), device, cleanup=lambda: trainer.optimizer.zero_grad(set_to_none=True)),
            start=cfg.search_start,
            cap=cfg.max_batch,
        )
        cfg = dataclasses.replace(cfg, batch_size=max(1, int(0.9 * search.max_batch)))
        log.info(
            "%s: maximal training batch %d%s; timing at %d",
            cfg.model,
            search.max_batch,
            " (capped)" if search.capped else "",
            cfg.batch_size,
        )
    result: dict[str, Any] = {
        "bench": "train",
        "model": cfg.model,
        "device": _device_name(device),
        "cpus": os.cpu_count(),
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "num_classes": tree.num_classes,
        "steps": cfg.steps,
        "num_workers": cfg.loader.num_workers,
    }

    def train_on(x, y):
        trainer.step(x, y)
        return len(y)

    g = torch.Generator(device=device).manual_seed(cfg.seed)
    x = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device, generator=g)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, tree.num_classes, (cfg.batch_size,), device=device, generator=g)
    synthetic = _timed(
        iter(lambda: (x, y), None),
        train_on,
        warmup=cfg.warmup,
        steps=cfg.steps,
        device=device,
        desc=f"bench train {cfg.model} (synthetic)",
    )
    result["synthetic_img_s"] = round(synthetic, 1)
    log.info("%s synthetic: %.1f img/s", cfg.model, synthetic)
    infer = _time_infer(
        trainer.step_model, x, dtype=trainer.dtype, device=device, warmup=min(cfg.warmup, 10), steps=cfg.steps
    )
    log.info("%s inference at batch %d: %.1f img/s", cfg.model, cfg.batch_size, infer)
    result.update(
        max_batch=search.max_batch if search else None,
        max_batch_capped=search.capped if search else None,
        search=search.tried if search else None,
        train_img_s=round(synthetic, 1),
        infer_img_s=round(infer, 1),
    )
    ref = _reference(cfg.model, synthetic, infer)
    ref["ratio"] = ref.get("ratio_train")
    result.update(ref)
    result["row"] = zoo_row(cfg.model, search, cfg.batch_size, synthetic, infer)
    if data:
        paths = [("loader", cfg.gpu_decode)] + (
            [("loader_cpu_decode", False)] if cfg.cpu_decode_too and cfg.gpu_decode else []
        )
        for name, gpu in paths:
            batches = _loader_batches(cfg, data, gpu_decode=gpu, device=device)
            # Input path alone (no model): the most it could ever deliver.
            feed_only = _timed(
                batches, lambda xb, yb: len(yb), warmup=cfg.warmup, steps=min(cfg.steps, 50), device=device
            )
            fed = _timed(
                batches, train_on, warmup=2, steps=cfg.steps, device=device, desc=f"bench train {cfg.model} ({name})"
            )
            result[f"{name}_img_s"] = round(fed, 1)
            result[f"{name}_feed_only_img_s"] = round(feed_only, 1)
            result[f"{name}_ratio"] = round(fed / synthetic, 3)
            result[f"{name}_gpu_decode"] = gpu
            log.info(
                "%s %s: %.1f img/s fed (ratio %.3f), input path alone %.1f img/s",
                cfg.model,
                name,
                fed,
                fed / synthetic,
                feed_only,
            )
            batches.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m in21k.benchmarks.train``: the same as ``in21k bench train`` without the other commands' imports
    (for machines that have torch, timm and torchvision but not the whole toolkit's dependencies)."""
    import argparse

    from in21k.config import CommandParser, add_config_args, config_from_args, print_config_requested, report_error
    from in21k.errors import In21kError

    parser = CommandParser(
        prog="python -m in21k.benchmarks.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser, BenchTrainConfig)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        cfg = config_from_args(args, BenchTrainConfig)
        if print_config_requested(args, cfg):
            return 0
        result = bench_train(cfg)
    except In21kError as exc:
        return report_error(parser.prog, exc)
    print(json.dumps(result) if args.json else format_text(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
