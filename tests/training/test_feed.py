"""The device-side feeds on CPU: the --gpu-decode path (batched decode_jpeg + batch augmentation) and the plain one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from in21k.training.feed import DecodedFeed, GpuDecodeFeed

CPU = torch.device("cpu")


def jpeg(colour, w, h) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), colour, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_gpu_decode_squashes_mixed_sizes_and_keeps_colour():
    jpegs = [jpeg((200, 40, 40), 32, 32), jpeg((40, 200, 40), 20, 50), jpeg((40, 40, 200), 64, 48)]
    feed = GpuDecodeFeed(device=CPU, image_size=32, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = feed(jpegs, torch.tensor([0, 1, 2]))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2]
    means = x.mean(dim=(2, 3)) * 255
    for i, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        assert torch.allclose(means[i], torch.tensor(colour, dtype=torch.float32), atol=6), (i, means[i])


def test_gpu_decode_train_augments_deterministically_per_seed():
    jpegs = [jpeg((120 + 10 * i, 90, 60), 32, 32) for i in range(8)]
    labels = torch.arange(8)
    feed = GpuDecodeFeed(device=CPU, image_size=32, train=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a, _ = feed(jpegs, labels, seed=7)
    b, _ = feed(jpegs, labels, seed=7)
    c, _ = feed(jpegs, labels, seed=8)
    plain, _ = GpuDecodeFeed(device=CPU, image_size=32, train=False, mean=(0.5,) * 3, std=(0.25,) * 3)(jpegs, labels)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert torch.isfinite(a).all()
    assert a.min() >= (0 - 0.5) / 0.25 - 1e-5 and a.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_gpu_decode_drops_corrupt_members():
    good = jpeg((10, 20, 30), 16, 16)
    bad = good[: len(good) // 3].clone()
    feed = GpuDecodeFeed(device=CPU, image_size=16, train=False, mean=(0,) * 3, std=(1,) * 3)
    x, y = feed([good, bad, good], torch.tensor([4, 5, 6]))
    assert y.tolist() == [4, 6] and x.shape[0] == 2 and feed.dropped == 1


def test_decoded_feed_normalises_on_device():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x, y = DecodedFeed(device=CPU, mean=(0.5,) * 3, std=(0.5,) * 3, channels_last=True)(images, torch.tensor([1, 2]))
    assert torch.allclose(x, torch.ones_like(x)) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_on_cuda_matches_cpu():
    jpegs = [jpeg((200, 40, 40), 32, 32), jpeg((40, 200, 40), 24, 40)]
    cpu, _ = GpuDecodeFeed(device=CPU, image_size=32, train=False, mean=(0,) * 3, std=(1,) * 3)(
        jpegs, torch.tensor([0, 1])
    )
    cuda_feed = GpuDecodeFeed(device=torch.device("cuda"), image_size=32, train=False, mean=(0,) * 3, std=(1,) * 3)
    gpu, _ = cuda_feed(jpegs, torch.tensor([0, 1]))
    assert torch.allclose(gpu.cpu(), cpu, atol=3 / 255)


def _double(images, labels, *, seed=None):
    return images * 2, labels + seed


def test_prefetcher_keeps_order_and_seeds():
    import threading

    from in21k.training.feed import DevicePrefetcher

    source = [(torch.full((2,), float(i)), torch.tensor([i, i])) for i in range(7)]
    got = list(DevicePrefetcher(source, _double, device=CPU, depth=2, start=3, seed_of=lambda i: 100 * i))
    assert [i for i, _, _ in got] == list(range(3, 10))
    for k, (i, x, y) in enumerate(got):
        assert torch.equal(x, torch.full((2,), 2.0 * k)) and y.tolist() == [k + 100 * i] * 2
    before = threading.active_count()
    stream = iter(DevicePrefetcher(iter(source), _double, device=CPU, depth=1))
    next(stream)
    stream.close()  # an early stop joins the thread and closes the source
    assert threading.active_count() == before


def test_prefetcher_reraises_source_errors():
    from in21k.training.feed import DevicePrefetcher

    def source():
        yield torch.zeros(1), torch.zeros(1, dtype=torch.long)
        raise RuntimeError("shard 7 is unreadable")

    with pytest.raises(RuntimeError, match="shard 7"):
        list(DevicePrefetcher(source(), _double, device=CPU))
