"""Benchmarks of the pipeline, run from the repository root with ``python -m``.

``python -m benchmarks.bench_grid --help`` lists the stages of the grid benchmark.
"""
