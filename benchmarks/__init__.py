"""Benchmarks on real data (not tests): ``uv run python benchmarks/compare.py``, ``benchmarks/train_teacher.py``."""
