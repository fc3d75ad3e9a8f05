"""The run directory's model file: readers dispatch on its schema, files from before the schema still load, and a
schema this version does not know is refused with a message that says what to do."""

from __future__ import annotations

import pytest
import torch

from in21k.cli import main
from in21k.errors import ConfigError, DataError
from in21k.training.pretrained import read_trained_model
from in21k.training.rundir import MODEL_SCHEMA, SEMANTIC, RunDir, identify, model_file


@pytest.fixture(scope="module")
def saved(pretrained) -> dict:
    """The model file ``in21k train`` wrote (the session's short 21K run)."""
    return torch.load(pretrained, map_location="cpu", weights_only=True)


def test_train_writes_a_versioned_semantic_model_file_and_readers_dispatch_on_it(pretrained, saved):
    assert pretrained == RunDir(pretrained.parent).model
    assert saved["schema"] == MODEL_SCHEMA and saved["task"] == SEMANTIC and saved["tree"]["classes"]
    trained = read_trained_model(pretrained)
    assert trained.kind == "model" and trained.model_name == "resnet10t" and trained.image_size == 32
    ckpt = RunDir(pretrained.parent).list_checkpoints()[-1]
    assert read_trained_model(ckpt).kind == "checkpoint"  # the train checkpoint schema: a semantic model too


def test_a_model_file_from_before_the_schema_field_still_loads(pretrained, saved, tmp_path):
    """The model file as in21k wrote it before it had a schema: the same dict without ``schema`` and ``task``."""
    legacy = {k: v for k, v in saved.items() if k not in ("schema", "task")}
    path = tmp_path / "legacy.pt"
    torch.save(legacy, path)
    assert identify(legacy, path).legacy
    old, new = read_trained_model(path), read_trained_model(pretrained)
    assert old.kind == "model" and old.tree.wnids == new.tree.wnids and (old.mean, old.std) == (new.mean, new.std)
    theirs = new.model.state_dict()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in old.model.state_dict().items())
    # A fine-tuned model of that time carried only task: "single-label"; it is still refused as one.
    torch.save({**legacy, "task": "single-label", "classes": ["a"]}, path)
    with pytest.raises(DataError, match="fine-tuned single-label model"):
        read_trained_model(path)


def test_an_unknown_schema_version_is_refused_by_the_command(saved, folders, tmp_path, capsys):
    newer = tmp_path / "newer.pt"
    torch.save({**saved, "schema": "in21k.model/2"}, newer)
    image = next((folders / "val").rglob("*.jpg"))
    assert main(["predict", "--checkpoint", str(newer), str(image)]) == 2
    err = capsys.readouterr().err
    assert "'in21k.model/2'" in err and "upgrade in21k" in err and "Traceback" not in err


def test_a_foreign_state_dict_is_the_only_guess(saved, tmp_path):
    path = tmp_path / "resnet10t_miil_21k.pth"
    torch.save({"state_dict": saved["model"]}, path)
    assert identify(torch.load(path, weights_only=True), path).kind == "foreign"
    with pytest.raises(ConfigError, match="give the architecture and the tree"):
        read_trained_model(path)


def test_the_model_file_is_built_with_its_tasks_fields_only():
    common = {
        "model": {},
        "ema": None,
        "model_name": "m",
        "image_size": 8,
        "mean": (0, 0, 0),
        "std": (1, 1, 1),
        "config": {},
    }
    assert model_file("single-label", **common, classes=["a"], source_checkpoint="x")["task"] == "single-label"
    with pytest.raises(TypeError):
        model_file(SEMANTIC, **common, classes=["a"])
