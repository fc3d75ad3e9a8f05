"""Benchmarks (``in21k bench ...``) and the local object-store servers they and the tests start.

Tools, not library modules: they sit on top of every stage and nothing in ``in21k.tree``,
``in21k.pipeline``, ``in21k.loaders``, ``in21k.training`` or ``in21k.predict`` imports them. Every
benchmark prints figures as ratios against a baseline run in the same invocation (docs/benchmarks.md).
"""
