"""The semantic tree of ImageNet-21K classes, built from WordNet 3.0."""

from in21k.tree.semantic_tree import (
    BUILTIN_TREES,
    SCHEMA,
    NotWordNetNounError,
    SemanticTree,
    TreeClass,
    read_synsets_file,
    timm_synsets,
)

__all__ = [
    "BUILTIN_TREES",
    "SCHEMA",
    "NotWordNetNounError",
    "SemanticTree",
    "TreeClass",
    "read_synsets_file",
    "timm_synsets",
]
