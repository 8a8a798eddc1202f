"""Pure-Python twin of the native kernels: hashlib, blake3, os.pwrite and a receive loop.

Same names and signatures as ``chunkpull._native`` (a parity test keeps
them so).  hashlib and os.pwrite release the GIL for large buffers too, so
this backend is already parallel-capable; the native one must beat it in
``benchmarks/``.  One difference: a SHA-256 state here is a hashlib object,
not bytes, so it can be copied in memory but not persisted to disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select

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


def recv_full(fd: int, buf, n: int, timeout_s: float) -> int:
    # As the native loop: read until n bytes or EOF, each wait bounded by
    # timeout_s; bytes before a failure are returned, the failure comes next call.
    view = memoryview(buf).cast("B")
    want = len(view) if n < 0 else min(n, len(view))
    wait_ms = None if timeout_s < 0 else int(timeout_s * 1000 + 0.999)
    blocking = os.get_blocking(fd)  # a blocking fd is polled before each read, so the timeout holds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    got = 0
    while got < want:
        try:
            if blocking and not poller.poll(wait_ms):
                raise BlockingIOError(errno.EAGAIN, "timed out")
            r = os.readv(fd, [view[got:want]])
        except BlockingIOError:
            if not blocking and poller.poll(wait_ms):
                continue
            if got:
                break
            raise TimeoutError(errno.ETIMEDOUT, "timed out") from None
        except OSError:
            if got:
                break
            raise
        if not r:
            break
        got += r
    return got
