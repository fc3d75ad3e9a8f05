"""The semantic tree: every class's ancestors among the dataset's classes, its level, per-level indices.

Built from WordNet 3.0 hypernyms (``build``), saved as ``tree.json`` (schema ``in21k.semantic-tree/1``,
see docs/tree.md), and convertible to and from the original's ``imagenet21k_miil_tree.pth`` layout.

Class indices follow the sorted order of the wnids, or the order of a given class list (``build(...,
keep_order=True)``: index ``i`` is the list's ``i``-th wnid, as published weights need). A class's
*parent* is its nearest ancestor that is itself a dataset class, on one chosen WordNet hypernym path;
its *depth* (level) is the number of dataset-class ancestors above it, so roots are level 0 and levels
are contiguous. Where WordNet gives several hypernym paths (root -> synset) the chosen one is, in order of preference:

1. the path that contains the most dataset classes;
2. then the longer path;
3. then the path whose synset offsets, read from the root down, are smaller (lexicographically).

Rule 1 keeps as much of the dataset's own hierarchy as possible; 2 prefers the more specific
WordNet chain; 3 only makes the choice deterministic.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from in21k import storage
from in21k.errors import ConfigError, DataError

SCHEMA = "in21k.semantic-tree/1"
BUILTIN_TREES = ("fall11", "winter21")


@dataclass(frozen=True)
class TreeClass:
    index: int
    wnid: str
    name: str
    depth: int
    parent: int  # -1 for a root


class NotWordNetNounError(DataError):
    """Some wnids are not WordNet 3.0 noun synsets; ``wnids`` lists them."""

    def __init__(self, wnids: Sequence[str]) -> None:
        self.wnids = list(wnids)
        shown = ", ".join(self.wnids[:20]) + (f" ... ({len(self.wnids)} in all)" if len(self.wnids) > 20 else "")
        super().__init__(
            f"{len(self.wnids)} class id(s) are not WordNet 3.0 noun synsets: {shown}. "
            "Remove them from the class list (the prepare job drops such classes with the reason 'not_wordnet_noun')."
        )


def _choose_path(paths: list[list[Any]], dataset: set[str]) -> list[Any]:
    from in21k.tree.wordnet import wnid_of

    def key(path: list[Any]) -> tuple:
        in_dataset = sum(1 for s in path if wnid_of(s) in dataset)
        return (-in_dataset, -len(path), [s.offset() for s in path])

    return min(paths, key=key)


@dataclass
class SemanticTree:
    """A forest over the dataset's classes; see the module docstring for the rules."""

    classes: list[TreeClass]
    wordnet: str = "3.0"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, wnids: Iterable[str], *, keep_order: bool = False) -> SemanticTree:
        """Build the tree of ``wnids`` from WordNet 3.0 (raises ``NotWordNetNounError`` for bad ids).

        Class indices follow the sorted wnids, or with ``keep_order`` the order given (which must not repeat a
        wnid). Parents and depths do not depend on the order: the same classes in another order give the same
        tree with its indices permuted.
        """
        from in21k.tree.wordnet import noun_synset, wnid_of

        if keep_order:
            ordered = list(wnids)
            if len(set(ordered)) != len(ordered):
                seen: set[str] = set()
                first = next(w for w in ordered if w in seen or seen.add(w))  # type: ignore[func-returns-value]
                raise DataError(f"the class list repeats {first}: each class needs exactly one index")
        else:
            ordered = sorted(set(wnids))
        if not ordered:
            raise DataError("cannot build a semantic tree from an empty class list")
        synsets = {}
        bad = []
        for wnid in ordered:
            synset = noun_synset(wnid)
            if synset is None:
                bad.append(wnid)
            else:
                synsets[wnid] = synset
        if bad:
            raise NotWordNetNounError(bad)
        dataset = set(ordered)
        index = {w: i for i, w in enumerate(ordered)}
        parents: dict[str, int] = {}
        for wnid in ordered:
            path = _choose_path(synsets[wnid].hypernym_paths(), dataset)
            parent = -1
            for synset in reversed(path[:-1]):  # nearest ancestor first
                anc = wnid_of(synset)
                if anc in dataset:
                    parent = index[anc]
                    break
            parents[wnid] = parent
        depths: dict[int, int] = {}

        def depth(i: int) -> int:
            # Iterative walk: chains are short, but a cycle would mean a bug in the path choice.
            chain = []
            j = i
            while j not in depths:
                chain.append(j)
                j = parents[ordered[j]]
                if j == -1:
                    break
                if len(chain) > len(ordered):
                    raise RuntimeError(f"cycle in hypernym parents at {ordered[i]}")
            base = -1 if j == -1 else depths[j]
            for k in reversed(chain):
                base += 1
                depths[k] = base
            return depths[i]

        classes = []
        for wnid in ordered:
            i = index[wnid]
            classes.append(TreeClass(i, wnid, lemma_name(synsets[wnid]), depth(i), parents[wnid]))
        return cls(classes)

    @classmethod
    def builtin(cls, name: str) -> SemanticTree:
        """The shipped tree of ``fall11`` (11,221 classes) or ``winter21`` (10,450): no WordNet needed."""
        if name not in BUILTIN_TREES:
            raise ConfigError(f"unknown built-in tree {name!r}; choose one of {', '.join(BUILTIN_TREES)}")
        ref = resources.files("in21k.tree") / "data" / f"{name}.tree.json.gz"
        with ref.open("rb") as f:
            return cls.from_dict(json.loads(gzip.decompress(f.read())))

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = len(self.classes)
        for i, c in enumerate(self.classes):
            if c.index != i:
                raise DataError(f"tree class {c.wnid}: index {c.index} is not its position {i}")
            if c.parent == -1:
                if c.depth != 0:
                    raise DataError(f"tree class {c.wnid}: a root must have depth 0, has {c.depth}")
            elif not 0 <= c.parent < n or c.parent == i:
                raise DataError(f"tree class {c.wnid}: parent {c.parent} is not another class index")
            elif self.classes[c.parent].depth != c.depth - 1:
                raise DataError(f"tree class {c.wnid}: depth {c.depth} is not its parent's depth + 1")

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def wnids(self) -> list[str]:
        return [c.wnid for c in self.classes]

    @cached_property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @cached_property
    def wnid_to_index(self) -> dict[str, int]:
        return {c.wnid: c.index for c in self.classes}

    @cached_property
    def depths(self) -> np.ndarray:
        return np.array([c.depth for c in self.classes], dtype=np.int64)

    @property
    def num_levels(self) -> int:
        return int(self.depths.max()) + 1

    @cached_property
    def levels(self) -> list[list[int]]:
        """``levels[k]``: the class indices of depth ``k``, ascending."""
        out: list[list[int]] = [[] for _ in range(self.num_levels)]
        for c in self.classes:
            out[c.depth].append(c.index)
        return out

    @cached_property
    def class_tree(self) -> list[list[int]]:
        """``class_tree[i] = [i, parent, grandparent, ..., root]`` (the original's ``class_tree_list``)."""
        out = []
        for c in self.classes:
            chain = [c.index]
            while self.classes[chain[-1]].parent != -1:
                chain.append(self.classes[chain[-1]].parent)
            out.append(chain)
        return out

    @cached_property
    def ancestors(self) -> np.ndarray:
        """``[num_classes, num_levels]`` int64: the class index of each class's ancestor at each level, -1 below it."""
        table = np.full((self.num_classes, self.num_levels), -1, dtype=np.int64)
        for i, chain in enumerate(self.class_tree):
            for level, cls_index in enumerate(reversed(chain)):
                table[i, level] = cls_index
        return table

    @cached_property
    def level_position(self) -> np.ndarray:
        """``level_position[c]``: the position of class ``c`` within ``levels[depth(c)]``."""
        pos = np.empty(self.num_classes, dtype=np.int64)
        for level in self.levels:
            pos[level] = np.arange(len(level))
        return pos

    @cached_property
    def targets(self) -> np.ndarray:
        """``[num_classes, num_levels]`` int64 for the semantic softmax loss.

        ``targets[c, k]`` is the position, within ``levels[k]``, of class ``c``'s ancestor at level ``k``
        (``c`` itself at its own depth), or -1 where ``c`` has no ancestor at that level.
        """
        anc = self.ancestors
        return np.where(anc >= 0, self.level_position[np.maximum(anc, 0)], -1)

    def roots(self) -> list[int]:
        return self.levels[0]

    def path(self, index: int) -> list[int]:
        """Root-first chain of class ``index``."""
        return list(reversed(self.class_tree[index]))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "wordnet": self.wordnet,
            "num_classes": self.num_classes,
            "num_levels": self.num_levels,
            "classes": [
                {"index": c.index, "wnid": c.wnid, "name": c.name, "depth": c.depth, "parent": c.parent}
                for c in self.classes
            ],
            "levels": self.levels,
            "class_tree": self.class_tree,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticTree:
        if data.get("schema") != SCHEMA:
            raise DataError(f"not a semantic tree of schema {SCHEMA!r} (found {data.get('schema')!r})")
        known = {"schema", "wordnet", "num_classes", "num_levels", "classes", "levels", "class_tree"}
        try:
            classes = [
                TreeClass(int(c["index"]), str(c["wnid"]), str(c["name"]), int(c["depth"]), int(c["parent"]))
                for c in data["classes"]
            ]
        except (KeyError, TypeError) as exc:
            raise DataError(f"malformed tree.json class entry: {exc}") from None
        tree = cls(
            classes, wordnet=str(data.get("wordnet", "3.0")), extra={k: v for k, v in data.items() if k not in known}
        )
        # levels and class_tree are derived; a file whose copies disagree was edited by hand or is corrupt.
        if "levels" in data and data["levels"] != tree.levels:
            raise DataError("tree.json: 'levels' disagrees with the classes' depths")
        if "class_tree" in data and data["class_tree"] != tree.class_tree:
            raise DataError("tree.json: 'class_tree' disagrees with the classes' parents")
        return tree

    def save(self, path: str | Path) -> Path:
        """Write ``tree.json`` (gzip when the name ends in ``.gz``), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        if path.suffix == ".gz":
            payload = gzip.compress(payload, mtime=0)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, storage_options: dict[str, Any] | None = None) -> SemanticTree:
        """Read a tree file (``tree.json``, ``.json.gz`` or a MIIL ``.pth``; local or any storage URL) or a
        built-in tree by name (``fall11``, ``winter21``)."""
        if str(path) in BUILTIN_TREES:
            return cls.builtin(str(path))
        url = str(path)
        try:
            storage.check_access(url, storage_options)
            raw = storage.read_bytes(url, storage_options=storage_options)
        except storage.NotFoundError:
            raise DataError(
                f"tree file {url!r} does not exist (give a tree.json, an imagenet21k_miil_tree.pth, or fall11/winter21)"
            ) from None
        if url.endswith(".pth"):
            return cls._from_miil_bytes(raw, url)
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{url} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ the original's layout
    def to_miil_dict(self) -> dict[str, Any]:
        """The dict the original saved as ``imagenet21k_miil_tree.pth``."""
        child_2_parent = {c.wnid: self.classes[c.parent].wnid for c in self.classes if c.parent != -1}
        return {
            "class_list": list(self.wnids),
            "class_description": {c.wnid: c.name for c in self.classes},
            "class_tree_list": [list(chain) for chain in self.class_tree],
            "child_2_parent": child_2_parent,
        }

    def to_miil_bytes(self) -> bytes:
        """``imagenet21k_miil_tree.pth``'s bytes (``torch.save`` of ``to_miil_dict``)."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(self.to_miil_dict(), buf)
        return buf.getvalue()

    def to_miil_pth(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_miil_bytes())
        tmp.replace(path)
        return path

    @classmethod
    def from_miil_dict(cls, data: dict[str, Any]) -> SemanticTree:
        missing = [k for k in ("class_list", "class_tree_list") if k not in data]
        if missing:
            raise DataError(f"not a MIIL semantic tree: missing key(s) {', '.join(missing)}")
        class_list = [str(w) for w in data["class_list"]]
        descriptions = data.get("class_description") or {}
        trees = data["class_tree_list"]
        if len(trees) != len(class_list):
            raise DataError("MIIL tree: class_tree_list and class_list differ in length")
        classes = []
        for i, (wnid, chain) in enumerate(zip(class_list, trees, strict=True)):
            chain = [int(x) for x in chain]
            if not chain or chain[0] != i:
                raise DataError(f"MIIL tree: class_tree_list[{i}] must start with {i}, got {chain[:3]}")
            name = descriptions.get(wnid, wnid) if isinstance(descriptions, dict) else str(descriptions[i])
            classes.append(TreeClass(i, wnid, str(name), len(chain) - 1, chain[1] if len(chain) > 1 else -1))
        return cls(classes)

    @classmethod
    def from_miil_pth(cls, path: str | Path) -> SemanticTree:
        """Load an ``imagenet21k_miil_tree.pth`` (local or any storage URL) safely: plain data only."""
        return cls._from_miil_bytes(storage.read_bytes(str(path)), str(path))

    @classmethod
    def _from_miil_bytes(cls, raw: bytes, where: str) -> SemanticTree:
        import io

        import torch

        try:
            data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"{where} is not a loadable MIIL tree .pth (plain data only): {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a dict, found {type(data).__name__}")
        return cls.from_miil_dict(data)

    # ------------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "num_levels": self.num_levels,
            "classes_per_level": [len(level) for level in self.levels],
            "num_roots": len(self.levels[0]),
        }


def lemma_name(synset: Any) -> str:
    """The class description the original used: the synset's lemmas, ``, ``-joined, underscores as spaces."""
    return ", ".join(name.replace("_", " ") for name in synset.lemma_names())


def read_synsets_file(path: str | Path) -> list[str]:
    """One wnid per line (blank lines and ``#`` comments ignored); extra columns after whitespace are ignored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"synsets file {str(path)!r} does not exist")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.split()[0])
    if not out:
        raise DataError(f"synsets file {str(path)!r} lists no classes")
    return out


TIMM_SYNSET_FILES = {"fall11": "imagenet21k_miil_synsets.txt", "winter21": "imagenet21k_miil_w21_synsets.txt"}


def timm_synsets(name: str) -> list[str]:
    """The class list timm ships for ``fall11`` or ``winter21`` ImageNet-21K-P."""
    if name not in TIMM_SYNSET_FILES:
        raise ConfigError(f"unknown class list {name!r}; choose one of {', '.join(TIMM_SYNSET_FILES)} or give a file")
    try:
        ref = resources.files("timm.data") / "_info" / TIMM_SYNSET_FILES[name]
        text = ref.read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError(f"timm's class list for {name} was not found ({exc}); install timm (`make test`)") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
