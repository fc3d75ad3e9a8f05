"""Distributed state behind small typed getters, and ``init_distributed`` from torchrun's environment.

torchrun (``python -m torch.distributed.run``) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in every process. None of them set means a single process; some but not all set means a
broken launch, which raises naming what is missing. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from in21k.errors import SetupError

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # None: single process, no process group

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def read_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """torchrun's variables, or ``None`` when none is set; raises when only some are."""
    environ = dict(os.environ if environ is None else environ)
    present = {k: environ[k] for k in ENV_VARS if environ.get(k, "") != ""}
    if not present:
        return None
    missing = [k for k in ENV_VARS if k not in present]
    if missing:
        raise SetupError(
            f"half-set distributed environment: {', '.join(present)} set but {', '.join(missing)} missing. "
            "Launch with torchrun (python -m torch.distributed.run --nproc-per-node N -m in21k train ...), "
            "or unset the variables to train in a single process."
        )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        if not present[k].isdigit():
            raise SetupError(f"distributed environment: {k}={present[k]!r} is not a non-negative integer")
    if int(present["RANK"]) >= int(present["WORLD_SIZE"]):
        raise SetupError(
            f"distributed environment: RANK={present['RANK']} is not below WORLD_SIZE={present['WORLD_SIZE']}"
        )
    return present


def init_distributed(*, backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun described (or stay single-process); idempotent."""
    env = read_env()
    if env is None:
        return DistInfo(0, 1, 0, None)
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        log.info("joined process group: rank %d of %d (local %d), backend %s", rank, world, local, backend)
    return DistInfo(rank, world, local, backend)


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_enabled() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    out = value.detach().clone()
    if is_enabled():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def destroy() -> None:
    if is_enabled():
        dist.destroy_process_group()


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_replicas_agree(model: torch.nn.Module) -> str:
    """Every rank logs its parameter digest; rank 0 checks that all ranks hold the same weights."""
    digest = state_digest(model)
    log.info("final parameter digest (rank %d): %s", get_rank(), digest)
    if is_enabled():
        digests = [None] * get_world_size()
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(
                f"model replicas diverged across ranks: digests {digests}; this is a bug, please report it"
            )
    return digest
