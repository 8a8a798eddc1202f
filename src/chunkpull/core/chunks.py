"""Chunks of a blob, the chunksums wire format, and the per-blob assembler.

A registry that supports chunked pulls answers::

    GET /v2/library/smol/chunksums/sha256:9f86...   ->  200 OK
    Content-Location: https://cdn.example/v2/library/smol/blobs/sha256:9f86...

    sha256:1b4f0e98...  0-8388607
    sha256:60303ae2...  8388608-16777215
    sha256:fd61a03a...  16777216-20971519

Each line names a chunk by an inclusive byte range and the digest of exactly
those bytes; the chunks must tile the blob (start at 0, no gap, no overlap,
end at size-1).  ``parse_chunksums`` enforces that.

Value types and the wire format only, no I/O; the engine's
``BlobAssembler`` puts chunks together.  Imports core.digest and errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import IntegrityError, InvalidDigestError
from .digest import Digest

__all__ = [
    "Chunk",
    "ChunkSum",
    "parse_chunksums",
    "split",
    "MAX_CHUNKSUMS_BYTES",
]

# A chunksums body lists one line (~90 bytes) per chunk; 16 MiB allows
# ~180,000 chunks, far more than any sane blob needs, and caps what a hostile
# registry can make us buffer.
MAX_CHUNKSUMS_BYTES = 16 << 20

_LINE = re.compile(rb"^(\S+)\s+(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes start..end of a blob, *inclusive* end, as on the wire."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class ChunkSum:
    """A chunk and the digest its bytes must hash to (None when unknown)."""

    chunk: Chunk
    digest: Digest | None


def split(size: int, chunk_size: int) -> list[Chunk]:
    """Return chunks of at most chunk_size bytes tiling a blob of size bytes."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return [Chunk(start, min(start + chunk_size, size) - 1) for start in range(0, size, chunk_size)]


def parse_chunksums(body: bytes, size: int) -> list[ChunkSum]:
    """Parse a chunksums body and check that its chunks tile a blob of size bytes.

    Raises:
        IntegrityError: a malformed line, a bad digest, or chunks that leave a
            gap, overlap, or do not end at size-1.  The message names the line.
    """
    if len(body) > MAX_CHUNKSUMS_BYTES:
        raise IntegrityError(f"chunksums body is larger than {MAX_CHUNKSUMS_BYTES} bytes")
    sums: list[ChunkSum] = []
    expect = 0
    for lineno, raw in enumerate(body.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise IntegrityError(f"chunksums line {lineno}: want '<digest> <start>-<end>', got {raw[:120]!r}")
        try:
            digest = Digest.parse(m.group(1).decode("ascii"), algorithms=("sha256", "blake3"))
        except (InvalidDigestError, UnicodeDecodeError) as err:
            raise IntegrityError(f"chunksums line {lineno}: {err}") from None
        start, end = int(m.group(2)), int(m.group(3))
        if start != expect:
            what = "gap" if start > expect else "overlap"
            raise IntegrityError(f"chunksums line {lineno}: chunk {start}-{end} leaves a {what} (expected start {expect})")
        if end < start or end >= size:
            raise IntegrityError(f"chunksums line {lineno}: chunk {start}-{end} is outside the {size}-byte blob")
        sums.append(ChunkSum(Chunk(start, end), digest))
        expect = end + 1
    if expect != size:
        raise IntegrityError(f"chunksums cover bytes 0-{expect - 1} of a {size}-byte blob: missing chunks at the end")
    return sums
