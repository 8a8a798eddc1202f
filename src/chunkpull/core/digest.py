"""The ``Digest`` value type: parse, validate and format content digests.

This module owns the text forms of a digest: the canonical ``sha256:<hex>``
used on the wire and in manifests, and the file form ``sha256-<hex>`` used as
a blob's name under ``blobs/``.  A ``Digest`` instance is always well formed
(the constructor validates), so code that holds one never re-checks it.
``sha256`` names layers, configs and manifests; ``blake3`` is accepted only
for chunk digests, and only where the caller asks for it.  This module is a
leaf: it imports only the standard library and ``chunkpull.errors``, never
another chunkpull module and never the hashing backend.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidDigestError

__all__ = ["Digest", "SUPPORTED_ALGORITHMS", "sha256_digest"]

# Both algorithms give 32-byte (64 hex digit) digests; anything else is a
# protocol error, not a new algorithm.
SUPPORTED_ALGORITHMS = ("sha256", "blake3")
_RAW_SIZE = 32

# Explicit ASCII classes: ``\d`` would also match non-ASCII digits, and
# uppercase hex is rejected so that one digest has exactly one text form.
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE = re.compile(r"(?P<algorithm>[a-z0-9]+)[:-](?P<hex>[0-9a-f]{64})")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A content digest: an algorithm name and 64 lowercase hex digits.

    Construct one with ``Digest.parse``, ``Digest.from_bytes`` or
    ``sha256_digest``; the constructor itself rejects malformed values, so no
    invalid ``Digest`` exists.

    >>> d = Digest.parse("sha256:abababababababababababababababababababababababababababababababab")
    >>> d.short(), d.filename == "sha256-" + d.hex, Digest.parse(d.filename) == d
    ('abababababab', True, True)

    Raises:
        InvalidDigestError: the algorithm is not supported or ``hex`` is not
            64 lowercase hex digits.
    """

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        if self.algorithm not in SUPPORTED_ALGORITHMS:
            raise InvalidDigestError(
                f"invalid digest: unsupported algorithm {self.algorithm!r} "
                f"(want one of {', '.join(SUPPORTED_ALGORITHMS)})"
            )
        if not isinstance(self.hex, str) or not _HEX_RE.fullmatch(self.hex):
            raise InvalidDigestError(f"invalid digest: {self.hex!r} is not 64 lowercase hex digits")

    @classmethod
    def parse(cls, s: object, *, algorithms: Iterable[str] = ("sha256",)) -> Digest:
        """Parse ``alg:<hex>`` or the file form ``alg-<hex>`` into a Digest.

        ``hex`` must be exactly 64 lowercase hex digits in both forms.
        ``algorithms`` lists the algorithms acceptable here; the default
        accepts only ``sha256``.  Pass ``("sha256", "blake3")`` where chunk
        digests are read.  Algorithms other than ``sha256`` and ``blake3``
        are never accepted.

        Raises:
            InvalidDigestError: ``s`` is not a string, is malformed, or names
                an algorithm not in ``algorithms``; the message contains
                "invalid digest" and ``s``.
        """
        if not isinstance(s, str):
            raise InvalidDigestError(f"invalid digest: {s!r} (want a string like sha256:<64 hex>)")
        m = _DIGEST_RE.fullmatch(s)
        if m is None:
            raise InvalidDigestError(f"invalid digest: {s!r} (want sha256:<64 lowercase hex>)")
        algorithm = m["algorithm"]
        if algorithm not in SUPPORTED_ALGORITHMS or algorithm not in tuple(algorithms):
            raise InvalidDigestError(f"invalid digest: {s!r} (algorithm {algorithm!r} not accepted here)")
        return cls(algorithm, m["hex"])

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Digest:
        """Return the Digest whose raw 32-byte value is ``raw``.

        ``raw`` may be any bytes-like object (as returned by a hash's
        ``digest()`` or by the native kernels).

        Raises:
            InvalidDigestError: ``raw`` is not 32 bytes long, or ``algorithm``
                is not supported.
        """
        data = bytes(raw)
        if len(data) != _RAW_SIZE:
            raise InvalidDigestError(f"invalid digest: raw value is {len(data)} bytes, want {_RAW_SIZE}")
        return cls(algorithm, data.hex())

    @property
    def raw(self) -> bytes:
        """Return the digest's 32 raw bytes."""
        return bytes.fromhex(self.hex)

    @property
    def filename(self) -> str:
        """Return the file form ``<alg>-<hex>``, the blob's name under ``blobs/``."""
        return f"{self.algorithm}-{self.hex}"

    def short(self) -> str:
        """Return the first 12 hex digits, for logs and progress lines."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def sha256_digest(data: bytes | bytearray | memoryview) -> Digest:
    """Return the sha256 Digest of ``data`` (any contiguous bytes-like object).

    Uses ``hashlib``, which releases the GIL for inputs of 2 KiB or more.
    """
    return Digest.from_bytes(hashlib.sha256(data).digest(), "sha256")
