"""The chunked, verified pull written as an idiomatic plain-Python program.

This is the ``python-threads`` baseline of ``chunkpull bench --compare``: the
same design as chunkpull (the registry's chunk list, ranged GETs on a pool of
threads, each chunk written at its final offset, the whole-blob SHA-256
computed in order while later chunks still arrive) written the way a careful
Python programmer would, with ``requests``, ``concurrent.futures``,
``hashlib`` and ``os.pwrite``, and nothing from chunkpull.  hashlib and
os.pwrite release the GIL on large buffers, so this loop is genuinely
parallel; it is the bar chunkpull's data path has to clear.

Deliberately kept plain: ``r.content`` allocates each chunk's bytes, and a
completed chunk is kept in a dict until the in-order hasher reaches it.
What it does not do: retries, resume, progress.  It imports only the
standard library, ``requests`` and (for ``blake3:`` chunk digests) ``blake3``,
never chunkpull: it ships in the package so that ``--compare`` always has it,
and the bench child loads it by path so that its process does not carry
chunkpull's imports either.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import requests

__all__ = ["fetch_chunks", "pull_threads"]


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
) -> None:
    """Download a blob to path in chunks on ``streams`` threads and verify it.

    The whole-blob SHA-256 must equal ``sha256_hex``; with ``check_chunks``
    every chunk's digest is checked as well (two hashes per byte, like
    chunkpull's ``--verify chunks``; without it, one, like ``--verify blob``).
    At most ``2 * streams`` chunks are fetched ahead of the in-order hasher,
    which bounds the memory held by completed chunks waiting their turn.

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

    def fetch(index: int) -> tuple[int, bytes]:
        digest, start, end = chunks[index]
        r = session().get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=(10, 60))
        r.raise_for_status()
        data = r.content
        if len(data) != end - start + 1:
            raise ValueError(f"chunk {start}-{end}: got {len(data)} bytes")
        if check_chunks and digest is not None:
            h = _chunk_hasher(digest)
            h.update(data)
            if h.hexdigest() != digest.partition(":")[2]:
                raise ValueError(f"chunk {start}-{end} does not match {digest}")
        os.pwrite(fd, data, start)
        return index, data

    whole = hashlib.sha256()
    waiting: dict[int, bytes] = {}  # completed chunks the in-order hasher has not reached
    next_to_hash = 0
    next_to_submit = 0
    window = 2 * streams
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with ThreadPoolExecutor(max_workers=streams) as pool:
            running = set()
            while next_to_hash < len(chunks):
                while next_to_submit < len(chunks) and next_to_submit < next_to_hash + window:
                    running.add(pool.submit(fetch, next_to_submit))
                    next_to_submit += 1
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index, data = future.result()
                    waiting[index] = data
                while next_to_hash in waiting:
                    whole.update(waiting.pop(next_to_hash))
                    next_to_hash += 1
    finally:
        os.close(fd)
    if whole.hexdigest() != sha256_hex:
        raise ValueError(f"blob hashed to sha256:{whole.hexdigest()}, want sha256:{sha256_hex}")
