"""From a loader batch to the model's input on the device: the CPU-decoded path and the GPU-decode path.

``DecodedFeed`` takes the loader's ``uint8 [B, 3, H, W]`` batch (decoded and augmented by CPU workers),
moves it as ``uint8`` and converts to float on the device. ``GpuDecodeFeed`` (``--gpu-decode``) takes
the raw JPEG bytes (``decode="none"``: CPU workers only read and batch) and decodes them with
``torchvision.io.decode_jpeg(list, device=...)``, squashes every image to ``image_size`` and, for
training, augments the whole batch with a few tensor ops (random affine + flip through one
``grid_sample``, brightness/contrast/saturation, Cutout with a random colour). On CPU the same code runs
with ``device="cpu"``, which is how it is tested. ``DevicePrefetcher`` runs either feed one or two
batches ahead in a thread (on a side CUDA stream on GPUs) so that decoding overlaps training.
The batch augmentation approximates the original's per-image RandAugment with its geometric and
colour operations; it is not bit-identical to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from in21k.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _norm_tensors(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, s


class DecodedFeed:
    """``uint8 [B,3,H,W]`` CPU batch -> normalised float on ``device`` (``(x/255 - mean) / std``)."""

    def __init__(
        self, *, device: torch.device, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
    ) -> None:
        self.device = device
        self.mean, self.std = _norm_tensors(mean, std, device)
        self.channels_last = channels_last

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        del seed  # the CPU workers already augmented; the argument keeps both feeds interchangeable
        non_blocking = self.device.type == "cuda"
        x = images.to(self.device, non_blocking=non_blocking).float().div_(255)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(self.device, non_blocking=non_blocking)


class GpuDecodeFeed:
    """JPEG bytes -> decoded, squashed, (train:) batch-augmented, normalised float on ``device``."""

    def __init__(
        self,
        *,
        device: torch.device,
        image_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
        cutout_factor: float = 0.5,
        max_rotate_deg: float = 15.0,
        max_shear: float = 0.15,
        max_translate: float = 0.1,
        colour_strength: float = 0.4,
        p: float = 0.5,
    ) -> None:
        self.device = device
        self.size = image_size
        self.train = train
        self.mean, self.std = _norm_tensors(mean, std, device)
        self.channels_last = channels_last
        self.cutout_factor = cutout_factor
        self.max_rotate = math.radians(max_rotate_deg)
        self.max_shear = max_shear
        self.max_translate = max_translate
        self.colour_strength = colour_strength
        self.p = p
        self.dropped = 0  # samples whose bytes did not decode
        self._gen: torch.Generator | None = None

    # ---------------------------------------------------------------- decode
    def decode(self, jpegs: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched decode + squash to ``image_size``: float ``[B,3,S,S]`` in 0..255 on the device."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            images = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=self.device)
            keep = list(range(len(images)))
        except RuntimeError:
            # One bad member fails the whole batched call: decode one by one and drop the bad ones (counted).
            images, keep = [], []
            for i, data in enumerate(jpegs):
                try:
                    images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                    keep.append(i)
                except RuntimeError:
                    self.dropped += 1
            if not images:
                raise DataError("no image of the batch decoded; are these JPEG bytes (decode='none')?") from None
            labels = labels[keep]
        out = torch.empty((len(images), 3, self.size, self.size), dtype=torch.float32, device=self.device)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(tuple(img.shape[-2:]), []).append(i)
        for shape, idx in by_shape.items():
            group = torch.stack([images[i] for i in idx]).float()
            if shape != (self.size, self.size):
                # Squash (aspect ratio ignored), like the original's resize; antialias for downscaling.
                group = F.interpolate(
                    group, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
                )
            out[torch.as_tensor(idx, device=self.device)] = group
        return out, labels

    # ---------------------------------------------------------------- augment
    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=self.device, generator=self._gen)

    def _rand(self, n: int) -> torch.Tensor:
        return self._uniform(n) * 2 - 1

    def _apply(self, n: int) -> torch.Tensor:
        return self._uniform(n) < self.p

    def augment(self, x: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Batch augmentation of float 0..255 images (one random draw per sample and operation).

        ``seed`` makes the draws a function of the batch (the trainer passes one derived from seed, rank,
        epoch and batch index), so a resumed run augments exactly as an uninterrupted one would.
        """
        self._gen = torch.Generator(device=self.device)
        if seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(seed)
        n = x.shape[0]
        # Geometry: flip, rotation, shear, translation in one affine grid; outside pixels get grey 128.
        angle = self._rand(n) * self.max_rotate * self._apply(n)
        shear = self._rand(n) * self.max_shear * self._apply(n)
        trans = self._rand(n * 2).view(n, 2) * self.max_translate * 2 * self._apply(n).unsqueeze(1)
        flip = torch.where(self._uniform(n) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos * flip, -sin + shear, trans[:, 0]], 1), torch.stack([sin * flip, cos, trans[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x - 128.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 128.0
        # Colour: brightness, contrast, saturation, each on a random subset.
        s = self.colour_strength
        bright = 1 + self._rand(n) * s * self._apply(n)
        x = x * bright.view(n, 1, 1, 1)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        contrast = (1 + self._rand(n) * s * self._apply(n)).view(n, 1, 1, 1)
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
        sat = (1 + self._rand(n) * s * self._apply(n)).view(n, 1, 1, 1)
        x = (x - gray) * sat + gray
        x = x.clamp_(0, 255)
        # Cutout: one square of side cutout_factor * size with a random colour per sample (the original's CutoutPIL).
        if self.cutout_factor > 0:
            half = self.cutout_factor * self.size / 2
            cy, cx = self._uniform(n) * self.size, self._uniform(n) * self.size
            r = torch.arange(self.size, device=self.device, dtype=torch.float32)
            rows = (r.view(1, -1) >= (cy - half).view(-1, 1)) & (r.view(1, -1) < (cy + half).view(-1, 1))
            cols = (r.view(1, -1) >= (cx - half).view(-1, 1)) & (r.view(1, -1) < (cx + half).view(-1, 1))
            mask = (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)  # [B,1,S,S]
            colour = torch.floor(self._uniform(n, 3, 1, 1) * 256)
            x = torch.where(mask, colour, x)
        return x

    def __call__(
        self, jpegs: Sequence[torch.Tensor], labels: torch.Tensor, *, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = self.decode(jpegs, labels)
        if self.train:
            x = self.augment(x, seed=seed)
        x = (x.div_(255) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels.to(self.device, non_blocking=self.device.type == "cuda")


def build_feed(*, gpu_decode: bool, device: torch.device, image_size: int, train: bool, mean, std, channels_last: bool):
    if gpu_decode:
        return GpuDecodeFeed(
            device=device, image_size=image_size, train=train, mean=mean, std=std, channels_last=channels_last
        )
    return DecodedFeed(device=device, mean=mean, std=std, channels_last=channels_last)


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class DevicePrefetcher:
    """Runs the feed of the next ``depth`` batches in a background thread, on a side CUDA stream on GPUs.

    The decode/augment kernels of batch ``i+1`` then overlap the training kernels of batch ``i``, and the
    host work (reading the worker queue, launching decode) overlaps the Python of the training step.
    Yields ``(index, x, y)`` in order. Exceptions from the source or the feed re-raise in the consumer.
    Every batch's augmentation seed is ``seed_of(index)``, so results do not depend on the thread timing.
    """

    def __init__(
        self,
        source: Iterable,
        feed: Callable,
        *,
        device: torch.device,
        depth: int = 2,
        start: int = 0,
        seed_of: Callable[[int], int] | None = None,
    ) -> None:
        if depth < 1:
            raise ConfigError(f"prefetch depth must be >= 1, got {depth}")
        self.source, self.feed, self.device, self.depth, self.start = source, feed, device, depth, start
        self.seed_of = seed_of or (lambda i: i)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        cuda = self.device.type == "cuda"

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            it = iter(self.source)
            try:
                stream = torch.cuda.Stream(self.device) if cuda else None
                for i, (images, labels) in enumerate(it, start=self.start):
                    if stop.is_set():
                        break
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        x, y = self.feed(images, labels, seed=self.seed_of(i))
                        event = None
                        if stream is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                    if not put((i, x, y, event)):
                        break
                else:
                    put(_END)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(_Failure(exc))
            finally:
                close = getattr(it, "close", None)
                if close is not None:  # the loader's epoch bookkeeping must finish before the next set_epoch
                    close()

        thread = threading.Thread(target=work, name="in21k-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                i, x, y, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    x.record_stream(current)  # the side stream's allocation is now also used on this stream
                    y.record_stream(current)
                yield i, x, y
        finally:
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)
            thread.join()
