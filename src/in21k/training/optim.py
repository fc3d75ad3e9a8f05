"""Optimisers, learning-rate schedules (arrays indexed by optimizer step), EMA and AMP helpers.

The original recipe: Adam, lr 3e-4, L2 weight decay 1e-4 on parameters with ndim > 1 only, OneCycle
(pct_start 0.1, div_factor 20, cosine annealing, no momentum cycling) stepped every iteration.
Alternatives: AdamW (decoupled decay), cosine with linear warmup, constant; EMA of the weights.
A schedule is a precomputed array (as in dinov2), so a resumed run only needs the step number.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from in21k.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on parameters with ndim > 1 (weights), none on biases and norm scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adam`` (the original, L2 decay) or ``adamw`` (decoupled decay) over ``param_groups``."""
    groups = param_groups(model, weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; choose adam or adamw")


def onecycle_schedule(
    total_steps: int, *, max_lr: float, pct_start: float = 0.1, div_factor: float = 20.0, final_div_factor: float = 1e4
) -> np.ndarray:
    """The lr of each step, identical to ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, two phases)."""
    if total_steps < 2:
        return np.full(max(total_steps, 1), max_lr / div_factor)
    initial = max_lr / div_factor
    final = initial / final_div_factor
    phases = [(float(pct_start * total_steps) - 1, initial, max_lr), (total_steps - 1, max_lr, final)]
    out = np.empty(total_steps)
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, a, b) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                out[step] = b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
                break
            start_step = end_step
    return out


def cosine_schedule(total_steps: int, *, lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> np.ndarray:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine down to ``min_lr``."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(lr / max(warmup_steps, 1), lr, warmup_steps) if warmup_steps else np.empty(0)
    rest = total_steps - warmup_steps
    t = np.arange(rest) / max(rest - 1, 1)
    cos = min_lr + 0.5 * (lr - min_lr) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cos])


def build_schedule(
    name: str,
    total_steps: int,
    *,
    lr: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
    warmup_steps: int,
    min_lr: float,
) -> np.ndarray:
    """``onecycle`` (the original), ``cosine`` (with warmup) or ``constant``, as an lr-per-step array."""
    if total_steps < 1:
        raise ConfigError("the run has no optimizer step: more data, fewer ranks, or a smaller batch/accumulation")
    if name == "onecycle":
        return onecycle_schedule(
            total_steps, max_lr=lr, pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor
        )
    if name == "cosine":
        return cosine_schedule(total_steps, lr=lr, warmup_steps=warmup_steps, min_lr=min_lr)
    if name == "constant":
        return np.full(total_steps, lr)
    raise ConfigError(f"unknown schedule {name!r}; choose onecycle, cosine or constant")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class ModelEma:
    """Exponential moving average of a model's weights (floating tensors; integer buffers are copied)."""

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, cur in zip(self.module.state_dict().values(), model.state_dict().values(), strict=False):
            if ema.dtype.is_floating_point:
                ema.lerp_(cur.detach().to(ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(cur)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto`` = fp16 on CUDA (the original's AMP), none on CPU; ``bf16``/``fp16``/``none`` as named."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 AMP needs a CUDA device; use --amp bf16 or --amp none on CPU")
        return torch.float16
    raise ConfigError(f"unknown amp {amp!r}; choose auto, none, bf16 or fp16")
