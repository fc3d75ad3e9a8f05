"""timm models with a tree-sized head, and --init from an ImageNet-1K-shaped checkpoint."""

from __future__ import annotations

import logging

import pytest
import torch

from in21k.training.model import build_model, load_init_checkpoint


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "resnet50", "vit_base_patch16_224"])
def test_models_build_with_tree_head_and_step(name):
    torch.manual_seed(0)
    model = build_model(name=name, num_classes=13, image_size=32)
    assert model.get_classifier().out_features == 13
    x = torch.randn(2, 3, 32, 32)
    loss = model(x).logsumexp(dim=1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_init_loads_matching_and_skips_head(tmp_path, wrapper, caplog):
    torch.manual_seed(1)
    in1k = build_model(name="resnet10t", num_classes=1000)
    state = {f"module.{k}" if wrapper == "model" else k: v for k, v in in1k.state_dict().items()}  # DDP-saved too
    path = tmp_path / "in1k.pth"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    torch.manual_seed(2)
    model = build_model(name="resnet10t", num_classes=7)
    with caplog.at_level(logging.INFO, logger="in21k.training.model"):
        report = load_init_checkpoint(model, path)
    head = {"fc.weight", "fc.bias"}
    assert set(report.skipped) == head and set(report.missing) == head
    assert set(report.loaded) == set(in1k.state_dict()) - head
    for key, value in model.state_dict().items():
        if key not in head:
            assert torch.equal(value, in1k.state_dict()[key]), key
    assert model.fc.weight.shape == (7, model.fc.in_features)
    assert "skipped fc.weight" in caplog.text and "loaded" in caplog.text


def test_init_rejects_unrelated_and_unsafe_files(tmp_path):
    model = build_model(name="resnet10t", num_classes=7)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, other)
    with pytest.raises(ValueError, match="no tensor matched"):
        load_init_checkpoint(model, other)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": model, "x": torch.zeros(1)}, unsafe)  # a pickled module: refused by weights_only
    with pytest.raises(ValueError, match="weights_only"):
        load_init_checkpoint(model, unsafe)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model(name="resnet_does_not_exist", num_classes=3)
