"""What a request took, for whoever measures the engine (``chunkpull bench``): ``Transport.observer``.

Both data paths (our own HTTP/1.1 connections for blob ranges, requests for
the control plane) report the same record, so a benchmark that watches
requests measures the path users run, not a stand-in.  Imports nothing from
chunkpull.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestTiming"]


@dataclass(frozen=True)
class RequestTiming:
    """One GET: the URL asked and the one that answered (after redirects), its status, and when it was sent, answered and done (``time.perf_counter``)."""

    url: str
    answered: str
    status: int
    ranged: bool
    start: float
    first: float  # the answer's headers are in
    end: float  # the body is read (or the request failed)
