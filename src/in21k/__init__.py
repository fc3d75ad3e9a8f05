"""in21k: ImageNet-21K pretraining for everyone, from one laptop to a GPU cluster."""

__version__ = "0.1.0"
