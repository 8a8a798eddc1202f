"""The hash+write kernel: native (Cython, GIL released) against ``hashlib`` + ``os.pwrite``.

The fallback backend (``chunkpull._fallback``) is the honest baseline:
hashlib and os.pwrite release the GIL on large buffers too, so both
backends run in parallel threads.  Each round hashes and writes 64 MiB,
split evenly over 1, 2 or 4 threads, in pieces of the registry's per-worker
buffer size, at disjoint offsets of one file:

- SHA-256: ``sha256_update_pwrite`` on a running state, the kernel a
  one-stream blob uses (one fused pass on native; write, then hash, on the
  fallback);
- BLAKE3: ``pwrite_all`` then ``blake3`` (both backends hash with the
  ``blake3`` package; only the write differs), as ``engine.assembler.ChunkHasher`` does.

Two buffer sizes: ``piece`` (the registry's read unit, reused per thread,
so it stays in the CPU cache: both backends are the same OpenSSL SHA-256
and the same pwrite syscall, and tie) and ``chunk`` (a whole 8 MiB chunk
per call, from a 64 MiB working set per thread, so the bytes come from RAM:
the fused native kernel hashes a 256 KiB slice and writes it while it is
still cached, the fallback streams the buffer through the cache twice).

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

from chunkpull.engine.config import DEFAULT_BUFFER_SIZE

TOTAL = 64 << 20
PIECE = DEFAULT_BUFFER_SIZE  # what one registry worker hands the kernel per read
CHUNK = 8 << 20  # a whole chunk, as a plain "fetch chunk, hash, write" loop hands it
WORKING_SET = 64 << 20  # per thread, in the chunk case: more than the CPU caches hold
SIZES = {"piece": PIECE, "chunk": CHUNK}
ROUNDS = 10

_rates: dict[tuple[str, str, int, str], float] = {}  # (algorithm, size, threads, backend) -> MiB/s


def _backend(name: str):
    if name == "python":
        return importlib.import_module("chunkpull._fallback")
    try:
        return importlib.import_module("chunkpull._native")
    except ImportError as err:
        pytest.skip(f"native extension not built: {err}")


def _kernel(mod, algorithm: str):
    if algorithm == "sha256":

        def sha256_pwrite(fd: int, view, offset: int) -> bytes:
            state = mod.sha256_init()
            mod.sha256_update_pwrite(state, fd, view, offset)
            return mod.sha256_final(state)

        return sha256_pwrite

    def blake3_pwrite(fd: int, view, offset: int) -> bytes:
        mod.pwrite_all(fd, view, offset)
        return mod.blake3(view)

    return blake3_pwrite


# python before native for each (algorithm, threads): the native row reads
# the fallback's rate to report the ratio.
CASES = [
    pytest.param(alg, size, threads, backend, id=f"{alg}-{size}-{threads}t-{backend}")
    for alg in ("sha256", "blake3")
    for size in ("piece", "chunk")
    for threads in (1, 2, 4)
    for backend in ("python", "native")
]


@pytest.mark.parametrize(("algorithm", "size", "threads", "backend"), CASES)
def test_hash_write(benchmark, tmp_path, machine_info, algorithm, size, threads, backend):
    mod = _backend(backend)
    kernel = _kernel(mod, algorithm)
    step = SIZES[size]
    share = TOTAL // threads
    # Random bytes so no hash or write takes a shortcut; in the chunk case
    # each thread cycles through a working set larger than the caches.
    count = WORKING_SET // step if size == "chunk" else 1
    seed = os.urandom(step)
    buffers = [[memoryview(bytearray(seed)) for _ in range(count)] for _ in range(threads)]
    fd = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, TOTAL, step):
            os.pwrite(fd, buffers[0][0], off)

        def work(i: int) -> None:
            base = i * share
            for n, off in enumerate(range(0, share, step)):
                kernel(fd, buffers[i][n % count], base + off)

        with ThreadPoolExecutor(max_workers=threads) as pool:

            def one_round() -> None:
                for f in [pool.submit(work, i) for i in range(threads)]:
                    f.result()

            benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    finally:
        os.close(fd)
    info = benchmark.extra_info
    info.update(machine_info, threads=threads, algorithm=algorithm, kernel_backend=backend, bytes=TOTAL, buffer=step, size=size)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    rate = TOTAL / (1 << 20) / benchmark.stats.stats.median
    _rates[(algorithm, size, threads, backend)] = rate
    info["mib_s"] = round(rate, 1)
    baseline = _rates.get((algorithm, size, threads, "python"))
    if backend == "native" and baseline:
        info["ratio_vs_fallback"] = round(rate / baseline, 3)
