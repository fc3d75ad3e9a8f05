"""``in21k train`` and ``in21k finetune`` share one ``run:`` section and one help text per shared flag."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from in21k.cli import main
from in21k.training.config import FinetuneConfig, RunOptions, TrainConfig

# Fields both commands have whose meaning really differs (what the data is, where the tree and the
# architecture come from, which optimizers exist, what the loader section also serves).
DIFFERENT_ON_PURPOSE = {"data", "tree", "model", "image_size", "optimizer", "loader"}


def test_shared_flags_have_one_help_text():
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    finetune = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    both = (train.keys() & finetune.keys()) - DIFFERENT_ON_PURPOSE
    assert {"run", "epochs", "batch_size", "lr", "amp", "out", "resume", "seed"} <= both
    drift = [name for name in sorted(both) if train[name].metadata != finetune[name].metadata]
    assert drift == []
    assert train["run"].type == finetune["run"].type == "RunOptions"


@pytest.mark.parametrize(
    "command", [["train", "--data", "D"], ["finetune", "--checkpoint", "C", "--data", "D"]], ids=lambda c: c[0]
)
def test_the_run_section_from_yaml_and_flags(command, tmp_path, capsys):
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 1, "run": {"log_every": 5, "val_max_batches": 2}}))
    assert main([*command, "--out", "R", "--config", str(cfg), "--run.log-every", "7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    defaults = dataclasses.asdict(RunOptions())
    assert printed["run"] == {**defaults, "log_every": 7, "val_max_batches": 2}  # YAML < flags, key by key
    assert main([*command, "--out", "R", "--run.keep-last", "0"]) == 2
    assert "--run.keep-last must be >= 1, got 0" in capsys.readouterr().err
