"""The semantic tree of ImageNet-21K classes, built from WordNet 3.0."""

from in21k.tree.classlists import ClassList, load_class_list, timm_list_names
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
    "ClassList",
    "SCHEMA",
    "NotWordNetNounError",
    "SemanticTree",
    "TreeClass",
    "load_class_list",
    "read_synsets_file",
    "timm_list_names",
    "timm_synsets",
]
