"""``--classes imagenet21k_miil``: label index i is line i of timm's list, at the full 11,221 classes, and weights in
timm's layout for ``resnet50.miil_in21k`` (its ``resnet50`` with an 11,221-class ``fc``; random weights made here,
saved as timm saves them) load as ``--init`` and as a ``--teacher`` without remapping."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from in21k.dataset import DatasetWriter
from in21k.errors import ConfigError
from in21k.pipeline.options import PrepareConfig
from in21k.pipeline.plan import make_plan
from in21k.tree import SemanticTree, load_class_list, timm_list_names

pytestmark = pytest.mark.slow


def test_named_lists_are_timms_files() -> None:
    names = timm_list_names()
    assert {"imagenet21k_miil", "imagenet21k_miil_w21", "imagenet12k", "imagenet22k"} <= set(names)
    sizes = {name: len(load_class_list(name)) for name in ("imagenet21k_miil", "imagenet21k_miil_w21", "imagenet12k")}
    assert sizes == {"imagenet21k_miil": 11_221, "imagenet21k_miil_w21": 10_450, "imagenet12k": 11_821}
    assert load_class_list("fall11").wnids == load_class_list("imagenet21k_miil").wnids
    with pytest.raises(ConfigError, match="neither a file nor one of timm's lists .*imagenet21k_miil_w21"):
        load_class_list("imagenet21k_mill")
    # An unsorted list keeps its order: imagenet22k_ms puts the ImageNet-1K classes first.
    ms = load_class_list("imagenet22k_ms").wnids
    assert list(ms[:1000]) == list(load_class_list("imagenet").wnids) and list(ms) != sorted(ms)
    # The tree in a list's order: index i is the list's i-th wnid; parents and depths are those of the sorted tree.
    part = list(ms[990:1010])
    given, ordered = SemanticTree.build(part, keep_order=True), SemanticTree.build(part)
    assert given.wnids == part and ordered.wnids == sorted(part)

    def parent_of(t: SemanticTree) -> dict:
        return {c.wnid: (t.wnids[c.parent] if c.parent >= 0 else None, c.depth) for c in t.classes}

    assert parent_of(given) == parent_of(ordered)


def test_imagenet21k_miil_label_order_and_resnet50_miil_in21k_weights(tmp_path) -> None:
    import safetensors.torch
    import timm

    from in21k.training.model import build_model, load_init_checkpoint
    from in21k.training.pretrained import read_trained_model

    listed = load_class_list("imagenet21k_miil")
    lines = (resources.files("timm.data") / "_info" / "imagenet21k_miil_synsets.txt").read_text().split()
    assert list(listed.wnids) == lines and len(lines) == 11_221

    # The plan of a release holding these classes (one member each) and one more: index i == line i.
    extra = "n00001740"  # entity.n.01, not in the list
    wnids = [*lines, extra]
    index = {
        "wnid": wnids,
        "member": [f"{w}_1.JPEG" for w in wnids],
        "source": ["s"] * len(wnids),
        "offset": list(range(len(wnids))),
        "size": [100] * len(wnids),
    }
    plan = make_plan(index, PrepareConfig(raw="r", out="o", min_images=2, val_per_class=0), class_list=listed.wnids)
    assert plan.kept_wnids == lines
    assert all(c.index == (lines.index(c.wnid) if c.kept else -1) for c in plan.classes[:50] + plan.classes[-50:])
    dropped = [c for c in plan.classes if not c.kept]
    assert [(c.wnid, c.reason) for c in dropped] == [(extra, "not_in_class_list")]
    assert all(c.flag == "few_images" for c in plan.classes if c.kept)  # one member < --min-images: kept, flagged

    # prepare builds the tree of plan.kept_wnids in that order; for this sorted list that is the shipped fall11 tree
    # (tests/tree checks the two are equal), and keep_order's own rule is checked below on an unsorted list.
    tree = SemanticTree.builtin("fall11")
    assert tree.wnids == lines
    writer = DatasetWriter(str(tmp_path / "dst"))
    writer.write_tree(tree)
    writer.write_classes(tree, {})
    rows = (tmp_path / "dst" / "classes.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[1] for r in rows] == lines
    miil = torch.load(tmp_path / "dst" / "imagenet21k_miil_tree.pth", weights_only=True)
    assert miil["class_list"] == lines

    # resnet50.miil_in21k's layout: timm's resnet50 with an 11,221-class fc, saved as timm saves weights.
    model = timm.create_model("resnet50", pretrained=False, num_classes=11_221)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    del model
    student = build_model(name="resnet50", num_classes=tree.num_classes)
    report = load_init_checkpoint(student, tmp_path / "model.safetensors")
    assert not report.skipped and not report.missing and "fc.weight" in report.loaded
    assert torch.equal(student.fc.weight, state["fc.weight"])
    teacher = read_trained_model(tmp_path / "pytorch_model.bin", model_name="resnet50", tree=tree)
    assert teacher.kind == "foreign" and torch.equal(teacher.model.fc.bias, state["fc.bias"])
