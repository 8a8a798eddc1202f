"""Where chunk bytes come from: the origin and its mirrors, scheduled by measured throughput.

The origin stays the trust anchor: the manifest, the chunk list and every
digest come from it, so bytes may come from any mirror and are checked
against the origin's digests before they count.  ``Sources`` keeps one
``SourceStats`` per source for the whole pull (so a mirror demoted for one
blob stays demoted for every blob), and ``choose()`` sends the next chunk
where it is expected to finish first: ``(in flight + 1) / measured rate``,
with an untried source assumed as fast as the best one, so every mirror gets
its chance; a source more than ``SLOW_FACTOR`` times slower per stream than
the best gets no new chunks while the best is live.  The origin is never demoted: it is where every chunk can fall
back to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import requests.auth

from ..errors import RegistryError
from .config import Source
from .transport import RangeIgnoredError

__all__ = ["Mirror", "SourceStats", "Sources", "why_demoted"]

# Sources measured slower per stream than the best by more than this get no new chunks.
SLOW_FACTOR = 4.0


def why_demoted(err: BaseException) -> str:
    """Say in a few words why a mirror's request failed (the summary shows it)."""
    if isinstance(err, RangeIgnoredError):
        return "ignores Range"
    if isinstance(err, RegistryError):
        return f"answered {err.status}"
    return f"failed: {str(err)[:200]}"


@dataclass(frozen=True)
class Mirror:
    """A registry that serves the same repository paths as the origin (a pull-through cache, a LAN copy).

    ``root`` is ``<scheme>://<host>[/prefix]``; its repositories are under
    ``<root>/v2/<repository>``.  ``auth`` is the mirror's own (never the
    origin's credentials).
    """

    root: str
    verify_tls: bool = True
    auth: requests.auth.AuthBase | None = None

    def source(self, origin: Source) -> Source:
        """Return the Source for the origin's repository on this mirror."""
        _, _, repository = origin.base_url.partition("/v2/")
        return Source(f"{self.root.rstrip('/')}/v2/{repository}", self.verify_tls, self.auth)


@dataclass
class SourceStats:
    """What one source did in this pull (the figures the summary, ``--json`` and the bench show)."""

    name: str
    origin: bool
    bytes: int = 0  # bytes received from it and kept (verified, or awaiting the whole-blob digest)
    busy_s: float = 0.0  # time spent streaming from it, summed over streams
    chunks: int = 0  # chunks it delivered
    failures: int = 0  # requests that failed (status, reset, stall, ignored Range)
    refused_chunks: int = 0  # chunks whose bytes failed the origin's digest
    demoted: str = ""  # why it is no longer used, for the rest of the pull
    inflight: int = field(default=0, repr=False)

    @property
    def rate_bps(self) -> float | None:
        return self.bytes / self.busy_s if self.busy_s > 0 and self.bytes else None

    def to_json(self) -> dict:
        return {"source": self.name, "origin": self.origin, "bytes": self.bytes, "rate_bps": self.rate_bps, "chunks": self.chunks,
                "failures": self.failures, "refused_chunks": self.refused_chunks, "demoted": self.demoted or None}


class Sources:
    """The origin and the mirrors of one pull, with their stats; thread-safe."""

    def __init__(self, origin_name: str, mirrors: list[Mirror]) -> None:
        self.mirrors = list(mirrors)
        self.stats = [SourceStats(origin_name, True)] + [SourceStats(m.root, False) for m in self.mirrors]
        self._lock = threading.Lock()

    def choose(self, allowed: tuple[int, ...] = ()) -> int:
        """Return the source the next chunk should come from and count it in flight.

        0 is the origin (always allowed); ``allowed`` lists the mirrors
        (1-based, as in ``stats``) that may serve this blob.
        """
        with self._lock:
            live = [0] + [i for i in allowed if not self.stats[i].demoted]
            rates = [self.stats[i].rate_bps for i in live if self.stats[i].rate_bps]
            best = max(rates) if rates else 1.0
            # A chunk on a source far slower than the best holds back the
            # in-order hash (and the pieces parked behind it): leave such a
            # source alone while a fast one is live.
            fast = [i for i in live if (self.stats[i].rate_bps or best) >= best / SLOW_FACTOR]
            pick = min(fast, key=lambda i: ((self.stats[i].inflight + 1) / (self.stats[i].rate_bps or best), i))
            self.stats[pick].inflight += 1
            return pick

    def source_for(self, index: int, origin: Source) -> Source:
        return origin if index == 0 else self.mirrors[index - 1].source(origin)

    def index_of(self, root: str) -> int:
        """Return the stats index (1-based) of the mirror with this root."""
        return next(i for i, m in enumerate(self.mirrors, start=1) if m.root == root)

    def finished(self, index: int, *, busy_s: float, nbytes: int, ok: bool) -> None:
        """Count one request on source index as over: its bytes, its reading time, and whether it failed."""
        with self._lock:
            s = self.stats[index]
            s.inflight -= 1
            s.busy_s += max(0.0, busy_s)
            s.bytes += nbytes
            if ok:
                s.chunks += 1
            else:
                s.failures += 1

    def demote(self, index: int, reason: str, *, refused: bool = False) -> None:
        """Stop using a mirror for the rest of the pull (the origin is never demoted)."""
        with self._lock:
            s = self.stats[index]
            if refused:
                s.refused_chunks += 1
            if index and not s.demoted:
                s.demoted = reason

    def snapshot(self) -> list[SourceStats]:
        with self._lock:
            return [SourceStats(**{k: getattr(s, k) for k in ("name", "origin", "bytes", "busy_s", "chunks", "failures", "refused_chunks", "demoted")})
                    for s in self.stats]
