"""What one pull's engine is told: its settings (``PullConfig``) and where the bytes come from (``Source``).

The registry façade turns user settings and the environment into these two
values; the engine reads nothing else, so it never reaches back into the
façade.

Imports ``engine.monitor`` (its rate floor) and ``requests`` (the type of per-request credentials).
"""

from __future__ import annotations

from dataclasses import dataclass

import requests.auth

from ..core.manifest import Layer
from .monitor import MIN_RATE_BPS

__all__ = [
    "BlobJob",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_CHUNKING_THRESHOLD",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_SPLIT_CHUNK_SIZE",
    "DEFAULT_STALL_TIMEOUT_S",
    "IO_MODES",
    "VERIFY_MODES",
    "PullConfig",
    "Source",
]

DEFAULT_CHUNKING_THRESHOLD = 64 << 20  # Ollama's: smaller layers come in one request
# One piece: the unit of socket reads and writes.  Measured on the 2-core
# reference machine (1 GiB from the built-in registry, 8 streams, disk-bound
# at ~0.4 GB/s): 1 MiB and 512 KiB pieces cost 2.4-2.9 CPU-s, 2 and 4 MiB
# 3.5-3.9 (twice the system time), at the same wall time; and 64 streams
# then hold 64 MiB, not 256.
DEFAULT_BUFFER_SIZE = 1 << 20
# Pieces parked ahead of the in-order hash may use this much memory (the
# pool never has fewer than max_streams + 2 pieces, so each stream can read).
DEFAULT_MEMORY_BUDGET = 32 << 20
MIN_PIECE_BYTES = 32 << 20  # the pieces a pull may always hold, whatever its stream count
# Our own split of a blob when the registry has no chunksums.
DEFAULT_SPLIT_CHUNK_SIZE = 8 << 20
DEFAULT_STALL_TIMEOUT_S = 5.0
DEFAULT_MIN_RATE_BPS = MIN_RATE_BPS  # the stream monitor's floor
VERIFY_MODES = ("blob", "chunks")
IO_MODES = ("auto", "direct", "buffered")


@dataclass(frozen=True, slots=True)
class PullConfig:
    """The engine's settings for one pull; every field has the documented default.

    max_streams
        worker threads, hence concurrent connections (8); with ``adaptive``,
        the upper bound of the adaptive count.
    adaptive
        let ``engine.adaptive`` find the stream count: it starts at 8 and
        grows while throughput rises, within 2 ... ``max_streams``.
    chunking_threshold
        blobs smaller than this come in one request (64 MiB).
    verify
        ``"blob"``: one SHA-256 pass per byte, chunk digests only locate a
        failure; ``"chunks"``: every chunk is also checked as it arrives.
    buffer_size
        bytes per piece, a multiple of 4096 (4 MiB).
    memory_budget
        the cap on bytes of pieces parked ahead of the in-order hash
        (32 MiB).  Within it the pieces follow the stream count: a chunk
        per stream, at least 32 MiB, and never fewer than streams + 2 pieces.
    io
        ``"auto"``: O_DIRECT where the file system allows it; ``"direct"``
        insists; ``"buffered"`` never uses it.
    stall_timeout_s
        a stream that sends nothing for this long is cut and retried.
    monitor_interval_s
        how often the driver checks streams for stalls.
    split_chunk_size
        chunk size of our own split when the registry lists no chunks.
    min_rate_bps
        a stream slower than this over ``stall_timeout_s`` counts as
        stalled, however many bytes trickle in (8 KiB/s).

    Raises:
        ValueError: a setting out of its range.
    """

    max_streams: int = 8
    adaptive: bool = False
    chunking_threshold: int = DEFAULT_CHUNKING_THRESHOLD
    verify: str = "blob"
    buffer_size: int = DEFAULT_BUFFER_SIZE
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    io: str = "auto"
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    monitor_interval_s: float = 0.25
    split_chunk_size: int = DEFAULT_SPLIT_CHUNK_SIZE
    min_rate_bps: float = DEFAULT_MIN_RATE_BPS

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        if self.io not in IO_MODES:
            raise ValueError(f"io must be one of {', '.join(IO_MODES)}, not {self.io!r}")
        if self.buffer_size <= 0 or self.buffer_size % 4096:
            raise ValueError("buffer_size must be a positive multiple of 4096 bytes")
        if self.memory_budget <= 0 or self.split_chunk_size <= 0:
            raise ValueError("memory_budget and split_chunk_size must be positive")


@dataclass(frozen=True, slots=True)
class Source:
    """Where one repository's blobs come from, and how to ask for them.

    ``base_url`` is ``<scheme>://<host>/v2/<repository>``; ``verify_tls`` is
    False only for ``https+insecure``; ``auth``, when set, is attached to
    every request sent to this source (and, by requests' own rule, dropped
    on a redirect to another host).
    """

    base_url: str
    verify_tls: bool = True
    auth: requests.auth.AuthBase | None = None

    def blob_url(self, digest: object) -> str:
        return f"{self.base_url}/blobs/{digest}"

    def chunksums_url(self, digest: object) -> str:
        return f"{self.base_url}/chunksums/{digest}"


@dataclass(frozen=True)
class BlobJob:
    """One blob to pull: its layer, its origin, and which of the pull's mirrors may serve it (indexes into ``Sources.mirrors``)."""

    layer: Layer
    source: Source
    mirrors: tuple[int, ...] = ()
