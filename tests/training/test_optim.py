"""Optimiser groups, schedules (against torch's OneCycleLR), EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from in21k.training.optim import ModelEma, build_optimizer, build_schedule, cosine_schedule, onecycle_schedule


def test_onecycle_matches_torch():
    total = 57
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-4, total_steps=total, pct_start=0.1, div_factor=20, cycle_momentum=False
    )
    want = []
    for _ in range(total):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = onecycle_schedule(total, max_lr=3e-4, pct_start=0.1, div_factor=20)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_cosine_warmup_shape():
    s = cosine_schedule(20, lr=1.0, warmup_steps=5, min_lr=0.1)
    assert len(s) == 20 and s[4] == pytest.approx(1.0) and s[0] == pytest.approx(0.2)
    assert s[-1] == pytest.approx(0.1) and np.all(np.diff(s[5:]) <= 0)
    with pytest.raises(ValueError, match="no optimizer step"):
        build_schedule("cosine", 0, lr=1, pct_start=0.1, div_factor=20, final_div_factor=1e4, warmup_steps=0, min_lr=0)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.zeros(1, 3, 5, 5))
    opt = build_optimizer(model, name="adam", lr=3e-4, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="adam or adamw"):
        build_optimizer(model, name="sgd", lr=1, weight_decay=0)


def test_ema_moves_towards_model():
    model = torch.nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.5)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, before + 0.5)
