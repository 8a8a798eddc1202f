"""Fixtures for the pytest-benchmark suites in ``benchmarks/`` (run: ``python -m pytest benchmarks -q``).

``benchmarks/`` is outside the test suite's ``testpaths``: nothing here runs
in CI's test pass, and nothing here asserts a speed.  Files are named
``bench_*.py``; the hook below collects them (pytest's default pattern is
``test_*.py``).  Every record carries the backend, CPU count, stream count
and chunk size in ``extra_info``.

The registry always runs in a subprocess (``chunkpull.bench.model.RegistryProcess``)
so its CPU time is not in the measured process; generated models are
cached between sessions like ``chunkpull bench``'s.
"""

from __future__ import annotations

import os

import pytest

from chunkpull._hashio import BACKEND
from chunkpull.bench.model import RegistryProcess, embedded_target, ensure_model, warm


def pytest_collect_file(parent, file_path):
    # A file named on the command line is collected by pytest itself already.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def machine_info() -> dict:
    """What every benchmark record is annotated with."""
    return {"backend": BACKEND, "cpu_count": os.cpu_count()}


@pytest.fixture(scope="session")
def served_model():
    """Factory: ``served_model(size, layers=1, chunk_size=8M)`` -> (BenchModel, RegistryProcess, Target).

    One registry process per distinct model and chunk size for the whole
    session; its chunksums are requested once up front, so the first
    measured round does not pay for them (and the blobs sit in the page cache).
    """
    started: dict[tuple, tuple] = {}

    def make(size: int, layers: int = 1, *, chunk_size: int = 8 << 20):
        key = (size, layers, chunk_size)
        if key not in started:
            model = ensure_model(size, layers)
            server = RegistryProcess(model.root, chunk_size=chunk_size).__enter__()
            target = embedded_target(server, model)
            started[key] = (model, server, target)
            warm(target)
        return started[key]

    yield make
    for _, server, _ in started.values():
        server.__exit__()
