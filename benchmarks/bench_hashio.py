"""The hash+write kernel: native (Cython, GIL released) against ``hashlib`` + ``os.pwrite``.

The fallback backend (``chunkpull._fallback``) is the honest baseline:
hashlib and os.pwrite release the GIL on large buffers too, so both
backends run in parallel threads.  Each round hashes and writes 64 MiB,
split evenly over 1, 2 or 4 threads, in pieces of the registry's per-worker
buffer size, at disjoint offsets of one file:

- SHA-256: ``sha256_pwrite`` (one fused pass on native; hash, then write,
  on the fallback);
- BLAKE3: ``pwrite_all`` then ``blake3`` (both backends hash with the
  ``blake3`` package; only the write differs), as ``chunks.ChunkHasher`` does.

The file is written once before measuring and then overwritten: the pages
are already in the page cache, so the rounds measure the kernels, not the
kernel's page allocation (``bench_pull.py`` and ``chunkpull bench`` measure
whole pulls into fresh files).

``extra_info`` has MiB/s, the backend, the CPU count, the thread count, and
on native rows the ratio to the fallback row with the same algorithm and
threads (when that row ran first in the session, as it does by default).
"""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkpull.registry import DEFAULT_BUFFER_SIZE

TOTAL = 64 << 20
PIECE = DEFAULT_BUFFER_SIZE  # what one registry worker hands the kernel per read
ROUNDS = 10

_rates: dict[tuple[str, int, str], float] = {}  # (algorithm, threads, backend) -> MiB/s


def _backend(name: str):
    if name == "python":
        return importlib.import_module("chunkpull._fallback")
    try:
        return importlib.import_module("chunkpull._native")
    except ImportError as err:
        pytest.skip(f"native extension not built: {err}")


def _kernel(mod, algorithm: str):
    if algorithm == "sha256":
        return mod.sha256_pwrite

    def blake3_pwrite(fd: int, view, offset: int) -> bytes:
        mod.pwrite_all(fd, view, offset)
        return mod.blake3(view)

    return blake3_pwrite


# python before native for each (algorithm, threads): the native row reads
# the fallback's rate to report the ratio.
CASES = [
    pytest.param(alg, threads, backend, id=f"{alg}-{threads}t-{backend}")
    for alg in ("sha256", "blake3")
    for threads in (1, 2, 4)
    for backend in ("python", "native")
]


@pytest.mark.parametrize(("algorithm", "threads", "backend"), CASES)
def test_hash_write(benchmark, tmp_path, machine_info, algorithm, threads, backend):
    mod = _backend(backend)
    kernel = _kernel(mod, algorithm)
    share = TOTAL // threads
    # One buffer per thread, random so no hash or write takes a shortcut.
    buffers = [memoryview(bytearray(os.urandom(PIECE))) for _ in range(threads)]
    fd = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, TOTAL, PIECE):
            os.pwrite(fd, buffers[0], off)

        def work(i: int) -> None:
            base = i * share
            for off in range(0, share, PIECE):
                kernel(fd, buffers[i], base + off)

        with ThreadPoolExecutor(max_workers=threads) as pool:

            def one_round() -> None:
                for f in [pool.submit(work, i) for i in range(threads)]:
                    f.result()

            benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    finally:
        os.close(fd)
    info = benchmark.extra_info
    info.update(machine_info, threads=threads, algorithm=algorithm, kernel_backend=backend, bytes=TOTAL, piece=PIECE)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    rate = TOTAL / (1 << 20) / benchmark.stats.stats.median
    _rates[(algorithm, threads, backend)] = rate
    info["mib_s"] = round(rate, 1)
    baseline = _rates.get((algorithm, threads, "python"))
    if backend == "native" and baseline:
        info["ratio_vs_fallback"] = round(rate / baseline, 3)
