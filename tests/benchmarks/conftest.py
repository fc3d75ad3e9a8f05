"""Fixtures of the benchmark tests: the loader tests' small prepared dataset."""

from tests.loaders.conftest import prepared  # noqa: F401
