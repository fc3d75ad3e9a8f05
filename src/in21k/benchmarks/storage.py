"""``in21k bench storage``: the loader streaming shards from S3 through each client, against local disk.

The first shards of a local prepared dataset (up to ``max_samples``) are uploaded to a SeaweedFS server
started on 127.0.0.1 (``in21k.benchmarks.s3local``). Then ``create_loader`` runs the same epochs, with the
same options, from local disk and from ``s3://`` through each client of ``--clients`` (``read_client``:
``fsspec`` = s3fs, ``pyarrow``, ``obstore``). Each contender keeps its workers (persistent) and runs
``warmup_epochs`` unmeasured epochs; then ``rounds`` rounds measure every contender in turn, so that load from
other processes hits them alike. Reported: images/s (median over rounds), CPU milliseconds per image of the
loader's processes (main process + workers, from ``/proc``) and of the server process, and the ratios to
local disk: wall clock, and CPU (local CPU per image / the client's). The server runs on the same cores as
the loader, so on a small machine its CPU is part of the wall-clock gap; the CPU ratio is what a client
costs the loader itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from in21k.benchmarks.common import machine
from in21k.benchmarks.loader import Contender, _count_epochs, _cpu_seconds, subset_view
from in21k.benchmarks.options import StorageBenchConfig
from in21k.config import saved_config
from in21k.errors import ConfigError

log = logging.getLogger(__name__)

BUCKET = "in21k-bench-storage"


def _contender(data: str, cfg: StorageBenchConfig, *, client: str, storage_options: dict | None) -> Contender:
    from in21k.loaders import create_loader

    options = dataclasses.replace(cfg.loader, read_client=client, storage_options=storage_options)
    loader = create_loader(
        data=data,
        split=cfg.split,
        batch_size=cfg.batch_size,
        options=options,
        image_size=cfg.image_size,
        train=True,
        decode=cfg.decode,
    )
    epochs = iter(range(1_000_000))

    def one_epoch() -> Iterator:
        loader.set_epoch(next(epochs))
        return iter(loader)

    return Contender(one_epoch, loader._dl)


def _upload(server: Any, view: Path, urls: list[str], split: str) -> str:
    """The subset's shards and an ``_info.json`` listing them in the bucket; returns the dataset URL."""
    from in21k.dataset import DatasetWriter, PreparedDataset

    server.make_bucket(BUCKET)
    client = server.client()
    names = [f"shard-{i:06d}.tar" for i in range(len(urls))]
    for url, name in zip(urls, names, strict=True):
        client.upload_file(url, BUCKET, f"view/{name}")
    ds = PreparedDataset.open(str(view))
    lengths = [s.length for s in ds.shards(split)]
    DatasetWriter(f"s3://{BUCKET}/view", server.storage_options).write_info(
        num_classes=ds.num_classes,
        splits={split: list(zip(names, lengths, strict=True))},
        config=ds.info.get("config"),
        name=ds.name,
    )
    return f"s3://{BUCKET}/view"


def run_storage_bench(cfg: StorageBenchConfig) -> dict[str, Any]:
    from in21k.benchmarks.s3local import start_local_s3

    clients = cfg.client_list()
    result: dict[str, Any] = {"machine": machine(), "config": saved_config(cfg)}
    if "obstore" in clients and importlib.util.find_spec("obstore") is None:
        clients.remove("obstore")
        result["clients_left_out"] = "obstore is not installed (pip install obstore)"
    with tempfile.TemporaryDirectory(prefix="in21k-bench-storage-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        view, urls, total = subset_view(cfg.data, cfg.split, cfg.max_samples, tmp_path / "view")
        if any("://" in u for u in urls):
            raise ConfigError("bench storage needs a local --data (its shards are uploaded to a local server)")
        result["samples_in_subset"], result["shards_in_subset"] = total, len(urls)
        result["mb_in_subset"] = round(sum(Path(u).stat().st_size for u in urls) / 1e6, 1)
        server = start_local_s3(tmp_path / "weed", key="in21k-bench", secret="in21k-bench-secret")
        stack.callback(server.stop)
        s3_url = _upload(server, view, urls, cfg.split)
        contenders = {"local": _contender(str(view), cfg, client="auto", storage_options=None)}
        for client in clients:
            contenders[client] = _contender(s3_url, cfg, client=client, storage_options=server.storage_options)
        for name, contender in contenders.items():
            log.info("warming up %s", name)
            _count_epochs(contender, cfg.warmup_epochs)
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        cpu_ms: dict[str, list[float]] = {name: [] for name in contenders}
        server_ms: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(cfg.rounds):
            for name, contender in contenders.items():
                server0 = _cpu_seconds([server.proc.pid])  # type: ignore[union-attr]
                seconds, n, cpu = _count_epochs(contender, cfg.epochs)
                rates[name].append(n / seconds)
                cpu_ms[name].append(1000 * cpu / n)
                server_ms[name].append(1000 * (_cpu_seconds([server.proc.pid]) - server0) / n)  # type: ignore[union-attr]
            log.info("round %d of %d: %s", r + 1, cfg.rounds, {k: round(v[-1]) for k, v in rates.items()})
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    result["img_per_s"] = {k: round(v, 1) for k, v in med.items()}
    result["img_per_s_rounds"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
    result["cpu_ms_per_img"] = {k: round(v, 3) for k, v in cpu.items()}
    result["server_cpu_ms_per_img"] = {k: round(statistics.median(v), 3) for k, v in server_ms.items()}
    result["ratio_vs_local"] = {c: round(med[c] / med["local"], 3) for c in clients}
    result["cpu_ratio_vs_local"] = {c: round(cpu["local"] / cpu[c], 3) for c in clients}
    if clients:
        best = max(clients, key=lambda c: result["cpu_ratio_vs_local"][c])
        result["best_client"] = best
        result["targets"] = {f"{best}: CPU ratio vs local >= 0.9": result["cpu_ratio_vs_local"][best] >= 0.9}
    return result


def format_result(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    lines = [
        f"machine: {m['nproc']} x {m['cpu']} (the S3 server runs on the same cores)",
        f"subset: {result['samples_in_subset']} samples in {result['shards_in_subset']} shards "
        f"({result['mb_in_subset']} MB), {cfg['loader']['num_workers']} workers, batch {cfg['batch_size']}, "
        f"decode {cfg['decode']}, transform {cfg['loader']['transform']} {cfg['image_size']} px",
        f"  {'contender':10s} {'img/s':>10s} {'CPU ms/img':>11s} {'server ms/img':>14s} {'wall ratio':>11s} "
        f"{'CPU ratio':>10s}",
    ]
    for name, rate in result["img_per_s"].items():
        wall = result["ratio_vs_local"].get(name, 1.0)
        cpu = result["cpu_ratio_vs_local"].get(name, 1.0)
        lines.append(
            f"  {name:10s} {rate:10.1f} {result['cpu_ms_per_img'][name]:11.3f} "
            f"{result['server_cpu_ms_per_img'][name]:14.3f} {wall:11.3f} {cpu:10.3f}"
        )
    if "clients_left_out" in result:
        lines.append(f"  left out: {result['clients_left_out']}")
    for target, met in result.get("targets", {}).items():
        lines.append(f"  target {target}: {'met' if met else 'NOT met'}")
    return "\n".join(lines)
