"""The benchmark suite: `python benchmarks/run.py [--quick] [--out benchmarks/results]` (see README.md)."""
