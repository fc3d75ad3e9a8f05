"""The semantic tree on real WordNet 3.0: known chains, the multiple-path rule, the full class lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from in21k.tree import NotWordNetNounError, SemanticTree, timm_synsets
from in21k.tree.wordnet import load_wordnet, noun_synset, wnid_of

TENCH, CYPRINID, FISH, VERTEBRATE, ANIMAL = "n01440764", "n01439121", "n02512053", "n01471682", "n00015388"
PERSON, CAUSAL_AGENT, ORGANISM, WHOLE, LIVING_THING = "n00007846", "n00007347", "n00004475", "n00003553", "n00004258"


@pytest.fixture(scope="module", params=["fall11", "winter21"])
def full_tree(request) -> tuple[str, list[str], SemanticTree]:
    wnids = timm_synsets(request.param)
    return request.param, wnids, SemanticTree.build(wnids)


def test_tench_has_its_true_hypernym_chain():
    synset = noun_synset(TENCH)
    assert synset.name() == "tench.n.01"
    tree = SemanticTree.build([TENCH, CYPRINID, FISH, VERTEBRATE, ANIMAL])
    i = tree.wnid_to_index[TENCH]
    assert tree.names[i] == "tench, Tinca tinca"
    assert [tree.wnids[j] for j in tree.path(i)] == [ANIMAL, VERTEBRATE, FISH, CYPRINID, TENCH]
    assert tree.classes[i].depth == 4
    # Every dataset ancestor is a real WordNet hypernym of tench, in order (WordNet: one path, 17 synsets).
    (path,) = synset.hypernym_paths()
    wordnet_chain = [wnid_of(s) for s in path]
    assert [s.name() for s in path[-2:]] == ["cyprinid.n.01", "tench.n.01"]
    assert wordnet_chain[0] == "n00001740" and len(wordnet_chain) == 17  # entity.n.01 ... tench.n.01
    positions = [wordnet_chain.index(w) for w in [ANIMAL, VERTEBRATE, FISH, CYPRINID, TENCH]]
    assert positions == sorted(positions)


def test_tench_in_shipped_fall11_tree():
    tree = SemanticTree.builtin("fall11")
    i = tree.wnid_to_index[TENCH]
    assert [tree.wnids[j] for j in tree.path(i)] == [ANIMAL, VERTEBRATE, FISH, CYPRINID, TENCH]


@pytest.mark.parametrize(
    ("wnids", "parent"),
    [
        ([PERSON, CAUSAL_AGENT], CAUSAL_AGENT),  # only the short path holds a dataset class
        ([PERSON, ORGANISM], ORGANISM),  # only the long path holds one
        ([PERSON, ORGANISM, CAUSAL_AGENT], ORGANISM),  # one each: the longer path wins
        ([PERSON, WHOLE, CAUSAL_AGENT], WHOLE),  # one each: longer path, nearest dataset ancestor on it
        ([PERSON, CAUSAL_AGENT, LIVING_THING, ORGANISM], ORGANISM),  # two on the long path beat one
    ],
)
def test_multiple_hypernym_paths_rule(wnids, parent):
    assert len(noun_synset(PERSON).hypernym_paths()) == 2
    tree = SemanticTree.build(wnids)
    person = tree.classes[tree.wnid_to_index[PERSON]]
    assert tree.wnids[person.parent] == parent
    # The choice does not depend on the order the classes were listed in.
    assert SemanticTree.build(list(reversed(wnids))).to_dict() == tree.to_dict()


def test_non_nouns_raise_listing_them():
    with pytest.raises(NotWordNetNounError) as info:
        SemanticTree.build([TENCH, "n00000001", "v01234567", "tench"])
    assert sorted(info.value.wnids) == ["n00000001", "tench", "v01234567"]
    assert "n00000001" in str(info.value) and "not WordNet 3.0 noun" in str(info.value)


def test_targets_table_matches_chains():
    wnids = [TENCH, CYPRINID, FISH, VERTEBRATE, ANIMAL, PERSON, ORGANISM, "n01443537", "n02084071"]
    tree = SemanticTree.build(wnids)
    targets = tree.targets
    assert targets.shape == (tree.num_classes, tree.num_levels)
    for c in range(tree.num_classes):
        chain = tree.class_tree[c]
        for level in range(tree.num_levels):
            if level < len(chain):
                ancestor = chain[len(chain) - 1 - level]
                assert tree.levels[level][targets[c, level]] == ancestor
                assert tree.ancestors[c, level] == ancestor
            else:
                assert targets[c, level] == -1 and tree.ancestors[c, level] == -1


def test_full_class_lists(full_tree, tmp_path):
    name, wnids, tree = full_tree
    assert tree.num_classes == len(set(wnids)) == {"fall11": 11221, "winter21": 10450}[name]
    assert sorted(tree.wnids) == sorted(set(wnids))
    index = tree.wnid_to_index
    wn = load_wordnet()
    for c in tree.classes:
        chain = tree.class_tree[c.index]
        assert chain[0] == c.index and len(chain) == c.depth + 1
        assert all(0 <= j < tree.num_classes for j in chain)  # every ancestor is a dataset class
        if c.parent >= 0:
            # the parent is a real WordNet hypernym (transitively) of the class
            child = noun_synset(c.wnid)
            hypernyms = {wnid_of(s) for s in child.closure(lambda s: s.hypernyms() + s.instance_hypernyms())}
            assert tree.wnids[c.parent] in hypernyms
    assert wn.get_version() == "3.0"
    depths = sorted({c.depth for c in tree.classes})
    assert depths == list(range(tree.num_levels))  # levels contiguous from 0
    assert sum(len(level) for level in tree.levels) == tree.num_classes
    assert all(level == sorted(level) for level in tree.levels)
    # tree.json round trip
    path = tree.save(tmp_path / "tree.json")
    loaded = SemanticTree.load(path)
    assert loaded.to_dict() == tree.to_dict()
    assert json.loads(path.read_text())["schema"] == "in21k.semantic-tree/1"
    # MIIL .pth round trip, loadable as plain data
    pth = tree.to_miil_pth(tmp_path / "imagenet21k_miil_tree.pth")
    raw = torch.load(pth, weights_only=True)
    assert set(raw) == {"class_list", "class_description", "class_tree_list", "child_2_parent"}
    assert raw["class_list"] == tree.wnids
    assert raw["class_tree_list"][index[wnids[0]]][0] == index[wnids[0]]
    assert SemanticTree.from_miil_pth(pth).to_dict() == tree.to_dict()
    # the shipped package data is this very tree
    assert SemanticTree.builtin(name).to_dict() == tree.to_dict()


def test_json_rejects_bad_files(tmp_path):
    tree = SemanticTree.build([TENCH, CYPRINID])
    data = tree.to_dict()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "schema": "other/1"}))
    with pytest.raises(ValueError, match="schema"):
        SemanticTree.load(bad)
    broken = dict(data)
    broken["levels"] = [[0, 1]]
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="levels"):
        SemanticTree.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        SemanticTree.load(tmp_path / "missing.json")
    gz = tree.save(tmp_path / "tree.json.gz")
    assert SemanticTree.load(gz).to_dict() == data


def test_missing_wordnet_names_the_fix(monkeypatch, tmp_path):
    import nltk

    from in21k.tree import wordnet

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    wordnet.load_wordnet.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="make wordnet"):
            wordnet.load_wordnet()
    finally:
        monkeypatch.undo()
        wordnet.load_wordnet.cache_clear()
    assert np.all(SemanticTree.build([TENCH]).targets == 0)
