"""The chunked, verified pull written as a careful plain-Python program: the bar chunkpull must clear.

This is the ``python-threads`` baseline of ``chunkpull bench --compare``
(and, with ``direct=True``, ``python-threads-direct``): the same design as
chunkpull (the registry's chunk list, ranged GETs on a pool of threads,
each chunk written at its final offset, the whole-blob SHA-256 computed in
byte order over the chunks while they are still in memory) written the way
a careful Python engineer would, with ``requests``, ``concurrent.futures``,
``hashlib`` and ``os.pwrite``, and nothing from chunkpull:

- bodies are streamed (``stream=True``) and read with ``readinto`` straight
  into chunk buffers from a fixed pool (``2 × streams`` of them), which is
  also what bounds the chunks held ahead of the in-order hash;
- hashlib and os.pwrite release the GIL on large buffers, so fetching,
  writing and hashing genuinely overlap;
- ``direct=True`` writes through a second, ``O_DIRECT`` descriptor from
  page-aligned (mmap) buffers, as chunkpull does, so that a comparison
  isolates what chunkpull adds beyond bypassing the page cache.

What it does not do: retries, resume, progress, stall detection.  It
imports only the standard library, ``requests`` and (for ``blake3:`` chunk
digests) ``blake3``, never chunkpull: the bench child loads this file by
path, so the baseline's process does not carry chunkpull's imports either.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import requests

__all__ = ["fetch_chunks", "pull_threads"]

_ALIGN = 4096


def fetch_chunks(session: requests.Session, chunksums_url: str, size: int, chunk_size: int) -> tuple[str | None, list[tuple[str | None, int, int]]]:
    """Return (bytes URL or None, [(digest or None, start, end inclusive), ...]) for a blob.

    Reads the registry's chunksums (``<alg>:<hex> <start>-<end>`` lines); a
    registry without them (404) gets an even split into ``chunk_size`` pieces
    without digests.  The chunks must tile ``[0, size)``.

    Raises:
        requests.HTTPError: the chunksums request failed with another status.
        ValueError: the list does not tile the blob.
    """
    r = session.get(chunksums_url, timeout=(10, 60))
    if r.status_code == 404:
        return None, [(None, start, min(start + chunk_size, size) - 1) for start in range(0, size, chunk_size)]
    r.raise_for_status()
    chunks = []
    for line in r.text.splitlines():
        if not line.strip():
            continue
        digest, span = line.split()
        start, end = (int(x) for x in span.split("-"))
        chunks.append((digest, start, end))
    expect = 0
    for _, start, end in chunks:
        if start != expect or end < start:
            raise ValueError(f"chunk list does not tile the blob at offset {expect}")
        expect = end + 1
    if expect != size:
        raise ValueError(f"chunk list covers {expect} bytes, the blob has {size}")
    return r.headers.get("Content-Location") or None, chunks


def _chunk_hasher(digest: str):
    algorithm, _, _ = digest.partition(":")
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    raise ValueError(f"unsupported chunk digest {digest!r}")


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def pull_threads(
    blob_url: str,
    chunksums_url: str,
    size: int,
    sha256_hex: str,
    path: str,
    *,
    streams: int = 8,
    check_chunks: bool = True,
    chunk_size: int = 8 << 20,
    verify_tls: bool = True,
    direct: bool = False,
) -> None:
    """Download a blob to path in chunks on ``streams`` threads and verify it.

    The whole-blob SHA-256 must equal ``sha256_hex``; with ``check_chunks``
    every chunk's digest is checked as well (two hashes per byte, like
    chunkpull's ``--verify chunks``; without it, one, like ``--verify blob``).
    Memory is ``2 × streams`` buffers of the largest chunk.  With ``direct``
    the page-aligned part of every chunk that starts on a page is written
    with ``O_DIRECT``.

    Raises:
        ValueError: a chunk or the whole blob has the wrong digest, or the
            chunk list does not tile the blob.
        requests.RequestException: a request failed (there are no retries).
    """
    local = threading.local()

    def session() -> requests.Session:
        # requests.Session is not documented as thread-safe: one per thread.
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.verify = verify_tls
        return local.session

    location, chunks = fetch_chunks(session(), chunksums_url, size, chunk_size)
    url = location or blob_url
    largest = max((end - start + 1 for _, start, end in chunks), default=0)
    window = 2 * streams
    free: queue.Queue = queue.Queue()
    for _ in range(min(window, len(chunks))):
        # mmap memory is page-aligned, as O_DIRECT needs.
        free.put(memoryview(mmap.mmap(-1, max(largest, 1))) if direct else memoryview(bytearray(largest)))

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    direct_fd = -1
    if direct:
        try:
            direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            pass  # tmpfs and some others refuse O_DIRECT: write through the page cache

    def write(view: memoryview, offset: int) -> None:
        head = len(view) - len(view) % _ALIGN if direct_fd >= 0 and offset % _ALIGN == 0 else 0
        if head:
            _pwrite_all(direct_fd, view[:head], offset)
        if head < len(view):
            _pwrite_all(fd, view[head:], offset + head)

    def fetch(index: int) -> tuple[int, memoryview]:
        digest, start, end = chunks[index]
        n = end - start + 1
        buf = free.get()  # never waits: at most `window` chunks are in flight or waiting
        view = buf[:n]
        with session().get(url, headers={"Range": f"bytes={start}-{end}"}, stream=True, timeout=(10, 60)) as r:
            r.raise_for_status()
            got = 0
            while got < n:
                k = r.raw.readinto(view[got:])
                if not k:
                    raise ValueError(f"chunk {start}-{end}: the body ended after {got} bytes")
                got += k
        if check_chunks and digest is not None:
            h = _chunk_hasher(digest)
            h.update(view)
            if h.hexdigest() != digest.partition(":")[2]:
                raise ValueError(f"chunk {start}-{end} does not match {digest}")
        write(view, start)
        return index, buf

    whole = hashlib.sha256()
    waiting: dict[int, memoryview] = {}  # fetched chunks the in-order hasher has not reached
    next_to_hash = 0
    next_to_submit = 0
    try:
        with ThreadPoolExecutor(max_workers=streams) as pool:
            running = set()
            while next_to_hash < len(chunks):
                while next_to_submit < len(chunks) and next_to_submit < next_to_hash + window:
                    running.add(pool.submit(fetch, next_to_submit))
                    next_to_submit += 1
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index, buf = future.result()
                    waiting[index] = buf
                while next_to_hash in waiting:
                    _, start, end = chunks[next_to_hash]
                    buf = waiting.pop(next_to_hash)
                    whole.update(buf[: end - start + 1])
                    free.put(buf)
                    next_to_hash += 1
    finally:
        if direct_fd >= 0:
            os.close(direct_fd)
        os.close(fd)
    if whole.hexdigest() != sha256_hex:
        raise ValueError(f"blob hashed to sha256:{whole.hexdigest()}, want sha256:{sha256_hex}")
