"""Benchmarks: each module prints its figures and is run with `python -m bench.<name>` (see BENCHMARKS.md)."""
