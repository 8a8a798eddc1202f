"""Pure-Python twin of the native kernels: hashlib, blake3 and os.pwrite.

Same names and signatures as ``chunkpull._native`` (a parity test keeps
them so).  hashlib and os.pwrite release the GIL for large buffers too, so
this backend is already parallel-capable; the native one must beat it in
``benchmarks/``.  One difference: a SHA-256 state here is a hashlib object,
not bytes, so it can be copied in memory but not persisted to disk.
"""

from __future__ import annotations

import hashlib
import os

from blake3 import blake3 as _blake3

SHA256_STATE_SIZE = 0  # states are hashlib objects here, not persistable bytes
SHA256_STATE_FORMAT = ""  # ...so no saved state is ever valid here


def sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def blake3(data) -> bytes:
    return _blake3(data).digest()


def sha256_init():
    return hashlib.sha256()


def sha256_update(state, data) -> None:
    state.update(data)


def sha256_final(state) -> bytes:
    return state.digest()


def pwrite_all(fd: int, data, offset: int) -> None:
    if offset < 0:
        raise ValueError("offset must be >= 0")
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(5, os.strerror(5))
        view = view[n:]
        offset += n


def sha256_update_pwrite(state, fd: int, data, offset: int) -> None:
    # Write first: a failed write must not advance the hash.
    pwrite_all(fd, data, offset)
    state.update(data)


def start_writeback(fd: int, offset: int, n: int) -> None:
    # Python has no sync_file_range; the hint is simply skipped.
    return None
