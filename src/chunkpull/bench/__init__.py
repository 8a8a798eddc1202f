"""``chunkpull bench``: the harness, its measured child process, its baselines and its report.

Loaded only by ``chunkpull bench`` (and ``benchmarks/``), never on the
product's import path.  ``harness.bench_main`` is the entry point.
"""
