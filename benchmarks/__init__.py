"""Benchmarks on real data (not tests): run ``uv run python benchmarks/digits.py``."""
