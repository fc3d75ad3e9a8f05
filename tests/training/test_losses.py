"""SemanticSoftmaxLoss and semantic_accuracy against a straightforward per-sample reference (real WordNet)."""

from __future__ import annotations

import math

import pytest
import torch

from in21k.training import SemanticSoftmaxLoss, semantic_accuracy
from in21k.training.losses import SingleLabelLoss
from in21k.tree import SemanticTree

# Real WordNet 3.0 wnids with a three-level chain (dog > working dog > German shepherd / husky).
WNIDS = [
    "n01440764",
    "n01443537",
    "n02084071",
    "n02085620",
    "n02103406",
    "n02106662",
    "n01503061",
    "n01530575",
    "n02121808",
    "n02123045",
    "n01639765",
    "n02085374",
    "n01531178",
    "n02124075",
    "n01641577",
    "n02110185",
]


@pytest.fixture(scope="module")
def tree() -> SemanticTree:
    t = SemanticTree.build(WNIDS)
    assert t.num_levels >= 3  # the test needs ignored (deeper) levels
    return t


def reference_loss(tree: SemanticTree, logits: torch.Tensor, labels: list[int], eps: float, clamp: float = 20.0):
    """Per sample, per level, in plain Python from ``class_tree`` (the original's chain layout)."""
    levels = tree.levels
    sizes = [len(lv) for lv in levels]
    n = tree.num_classes
    total = 0.0
    per_level = {}
    for k, level in enumerate(levels):
        if len(level) < 2:
            continue
        weight = min(n / sum(sizes[k:]), clamp)
        level_sum = 0.0
        for b, label in enumerate(labels):
            chain = tree.class_tree[label]
            depth = len(chain) - 1
            if k > depth:
                continue  # ignored: contributes zero but still counts in the batch mean
            target_class = chain[depth - k]
            target = level.index(target_class)
            row = [float(logits[b, c]) for c in level]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            logp = [v - lse for v in row]
            q = [(1 - eps) * (1.0 if i == target else 0.0) + eps / len(level) for i in range(len(level))]
            level_sum += -sum(qi * li for qi, li in zip(q, logp, strict=False))
        per_level[k] = level_sum / len(labels)
        total += weight * per_level[k]
    return total, per_level


def reference_accuracy(tree: SemanticTree, logits: torch.Tensor, labels: list[int]):
    correct = valid = 0
    per = {}
    for k, level in enumerate(tree.levels):
        if len(level) < 2:
            continue
        c_k = v_k = 0
        for b, label in enumerate(labels):
            chain = tree.class_tree[label]
            depth = len(chain) - 1
            if k > depth:
                continue
            scores = [float(logits[b, c]) for c in level]
            pred = level[scores.index(max(scores))]
            c_k += pred == chain[depth - k]
            v_k += 1
        correct += c_k
        valid += v_k
        if v_k:
            per[k] = c_k / v_k
    return correct / valid, per


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_loss_matches_reference(tree, eps):
    g = torch.Generator().manual_seed(0)
    labels = list(range(tree.num_classes)) * 2  # every class: roots (ignored deeper) and deep classes
    logits = torch.randn(len(labels), tree.num_classes, generator=g, dtype=torch.float64) * 3
    loss_fn = SemanticSoftmaxLoss(tree, label_smoothing=eps)
    got = loss_fn(logits, torch.tensor(labels))
    want, per_level = reference_loss(tree, logits, labels, eps)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got_levels = loss_fn.level_losses(logits, torch.tensor(labels))
    assert got_levels.tolist() == pytest.approx([per_level[k] for k in loss_fn.levels.level_ids], rel=1e-5)


def test_level_weights_and_clamp(tree):
    sizes = [len(lv) for lv in tree.levels]
    loss_fn = SemanticSoftmaxLoss(tree)
    expect = [min(tree.num_classes / sum(sizes[k:]), 20.0) for k in loss_fn.levels.level_ids]
    assert loss_fn.levels.weights.tolist() == pytest.approx(expect)
    assert loss_fn.levels.weights[0] == pytest.approx(1.0)  # level 0: every class has depth >= 0
    assert loss_fn.levels.level_ids[-1] == tree.num_levels - 1  # the deepest level takes part
    clamped = SemanticSoftmaxLoss(tree, max_level_weight=2.0)
    assert clamped.levels.weights.max().item() == pytest.approx(min(2.0, max(expect)))
    logits = torch.randn(8, tree.num_classes, dtype=torch.float64)
    labels = torch.arange(8)
    want, _ = reference_loss(tree, logits, labels.tolist(), 0.2, clamp=2.0)
    assert clamped(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_only_ignored_rows_give_zero_deep_loss(tree):
    roots = [c for c in tree.levels[0]]
    logits = torch.randn(len(roots), tree.num_classes)
    loss_fn = SemanticSoftmaxLoss(tree)
    per = loss_fn.level_losses(logits, torch.tensor(roots))
    assert per[0] > 0 and torch.all(per[1:] == 0)


def test_loss_gradient_and_perfect_logits(tree):
    labels = torch.arange(tree.num_classes)
    # Logits that put +20 on every class on the label's chain: the loss without smoothing goes to ~0.
    logits = torch.full((tree.num_classes, tree.num_classes), -20.0)
    for i, chain in enumerate(tree.class_tree):
        logits[i, chain] = 20.0
    logits.requires_grad_(True)
    loss = SemanticSoftmaxLoss(tree, label_smoothing=0.0)(logits, labels)
    assert loss.item() < 1e-6
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bad_logits_shape_says_what_to_do(tree):
    with pytest.raises(ValueError, match=r"\[batch, 16\]"):
        SemanticSoftmaxLoss(tree)(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


def test_accuracy_matches_reference(tree):
    g = torch.Generator().manual_seed(1)
    labels = list(range(tree.num_classes)) * 3
    logits = torch.randn(len(labels), tree.num_classes, generator=g)
    acc = semantic_accuracy(logits, torch.tensor(labels), tree)
    top1, per = reference_accuracy(tree, logits, labels)
    assert acc.top1 == pytest.approx(top1)
    assert acc.per_level == pytest.approx(per)
    # Counts add across batches exactly like one big batch (what the DDP all-reduce relies on).
    half = len(labels) // 2
    split = semantic_accuracy(logits[:half], torch.tensor(labels[:half]), tree) + semantic_accuracy(
        logits[half:], torch.tensor(labels[half:]), tree
    )
    assert torch.equal(split.correct, acc.correct) and torch.equal(split.valid, acc.valid)


def test_accuracy_perfect_and_reuses_loss_levels(tree):
    labels = torch.arange(tree.num_classes)
    logits = torch.zeros(tree.num_classes, tree.num_classes)
    for i, chain in enumerate(tree.class_tree):
        logits[i, chain] = 1.0
    loss_fn = SemanticSoftmaxLoss(tree)
    acc = semantic_accuracy(logits, labels, loss_fn.levels)
    assert acc.top1 == 1.0
    assert acc.to_dict()["valid_pairs"] == sum(len(c) for c in tree.class_tree)


def test_single_label_loss_matches_torch():
    logits = torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    assert SingleLabelLoss(label_smoothing=0.2)(logits, labels).item() == pytest.approx(want.item())
