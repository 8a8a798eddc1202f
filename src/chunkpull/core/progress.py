"""Progress events and the thread-safe aggregator that consumers read.

A pull reports through one callback, ``progress(event)``, called from worker
threads: it must be thread-safe and must not block.  Every layer (config blob
included) gets a ``start`` (or ``cached``) event before any byte moves, so
consumers know every total up front.  ``Progress.n`` is a *delta* in bytes,
and the sum of a layer's deltas never exceeds its total: re-fetched bytes are
not counted twice, so a consumer's "completed" figure never goes backwards.

The ``Aggregator`` owns the lock and the totals; the CLI's bars, the
``/api/pull`` stream and ``PullResult``'s byte counts all read snapshots
from it and do no arithmetic of their own.

States are a ``StrEnum`` (``State``): each member equals its string
(``State.DONE == "done"``), so JSON and older string comparisons keep
working, and a type checker sees the closed set.

This module imports nothing from chunkpull.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "Progress", "ProgressCallback", "LayerProgress", "ByteCounts", "Aggregator", "State",
    "START", "CACHED", "BYTES", "RESUMED", "VERIFYING", "DONE", "ERROR",
]


class State(StrEnum):
    """What happened to a layer; each member is equal to its lowercase string.

    >>> State.DONE == "done", str(State.CACHED)
    (True, 'cached')
    """

    START = "start"  # layer announced: total known, nothing fetched yet
    CACHED = "cached"  # layer already in the cache; n == total
    BYTES = "bytes"  # n more bytes of the layer arrived
    RESUMED = "resumed"  # n bytes were verified by an earlier, interrupted pull
    VERIFYING = "verifying"  # all bytes are in; the whole-blob digest is being finished
    DONE = "done"  # the blob is verified and committed under its digest
    ERROR = "error"  # the layer failed; error says why


# The members under their old module-level names (the engine and older callers use these).
START, CACHED, BYTES, RESUMED = State.START, State.CACHED, State.BYTES, State.RESUMED
VERIFYING, DONE, ERROR = State.VERIFYING, State.DONE, State.ERROR


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event for one layer, as a pull's ``progress`` callback receives it.

    ``digest`` is the layer's canonical text form (``sha256:<hex>``),
    ``total`` its size in bytes, ``n`` a *delta* in bytes (for ``bytes``
    and ``resumed``; the whole size for ``cached``), ``error`` the cause of
    an ``error`` event.

    >>> ev = Progress("sha256:" + "ab" * 32, 1000, State.BYTES, n=250)
    >>> ev.state, ev.n
    (<State.BYTES: 'bytes'>, 250)
    """

    digest: str
    total: int
    state: State
    n: int = 0
    error: BaseException | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class LayerProgress:
    """One layer's progress so far: what ``Aggregator.layers()`` and ``chunkpull.apull`` give.

    ``completed`` counts bytes in place (cached, resumed and fetched), never
    goes backwards and never exceeds ``total``; ``resumed`` is the part of
    it an earlier, interrupted pull had fetched.

    >>> p = LayerProgress("sha256:" + "ab" * 32, 1000, completed=250, state=State.BYTES)
    >>> f"{p.state} {p.completed}/{p.total}"
    'bytes 250/1000'
    """

    digest: str
    total: int
    completed: int = 0
    state: State = State.START
    error: BaseException | None = None
    resumed: int = 0  # of completed, bytes an earlier pull had fetched


class ByteCounts(NamedTuple):
    """Where a pull's bytes came from: moved over the network now, resumed from a work file, or already cached.

    >>> ByteCounts(fetched=700, resumed=300, cached=0).fetched
    700
    """

    fetched: int
    resumed: int
    cached: int


class Aggregator:
    """Fold progress events into per-layer totals; safe to feed from many threads.

    An Aggregator is itself a progress callback.  ``clock`` is injectable so
    tests never depend on wall time.

    >>> agg = Aggregator()
    >>> agg(Progress("sha256:" + "ab" * 32, 1000, State.START))
    >>> agg(Progress("sha256:" + "ab" * 32, 1000, State.BYTES, n=400))
    >>> agg.totals()
    (400, 1000)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._layers: dict[str, LayerProgress] = {}
        self._clock = clock
        self.started_at = clock()
        self._changed = threading.Condition(self._lock)
        self._version = 0

    def __call__(self, event: Progress) -> None:
        with self._lock:
            layer = self._layers.get(event.digest)
            if layer is None:
                layer = self._layers[event.digest] = LayerProgress(event.digest, event.total)
            if event.state == CACHED:
                layer.completed = layer.total
            elif event.state == DONE:
                layer.completed = layer.total
            else:
                layer.completed = min(layer.total, layer.completed + event.n)
            if event.state == RESUMED:
                layer.resumed = min(layer.total, layer.resumed + event.n)
                event_state = BYTES
            else:
                event_state = event.state
            if event_state != BYTES:
                layer.state = State(event_state)
            elif layer.state == START:
                layer.state = BYTES
            if event.error is not None:
                layer.error = event.error
            self._version += 1
            self._changed.notify_all()

    def wait(self, version: int, timeout_s: float) -> int:
        """Block until something changed after ``version`` (or timeout); return the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version, timeout_s)
            return self._version

    def touch(self) -> None:
        """Count a change without an event, waking every ``wait()`` (e.g. the pull has ended)."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def layers(self) -> list[LayerProgress]:
        """Return a consistent copy of every layer's progress, in announcement order."""
        with self._lock:
            return [LayerProgress(l.digest, l.total, l.completed, l.state, l.error, l.resumed) for l in self._layers.values()]

    def totals(self) -> tuple[int, int]:
        """Return (completed, total) bytes over all layers."""
        with self._lock:
            return (sum(l.completed for l in self._layers.values()), sum(l.total for l in self._layers.values()))

    def byte_counts(self, digests: Collection[str] | None = None) -> ByteCounts:
        """Return the bytes fetched by this pull, resumed from earlier ones, and found cached (of ``digests``' layers only, if given)."""
        with self._lock:
            layers = [l for l in self._layers.values() if digests is None or l.digest in digests]
            cached = sum(l.total for l in layers if l.state == CACHED)
            resumed = sum(l.resumed for l in layers if l.state != CACHED)
            fetched = sum(l.completed - l.resumed for l in layers if l.state != CACHED)
            return ByteCounts(fetched, resumed, cached)

    def elapsed_s(self) -> float:
        """Return the seconds since this Aggregator was made (on its clock)."""
        return self._clock() - self.started_at
