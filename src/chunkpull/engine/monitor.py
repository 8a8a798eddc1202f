"""The stream monitor: find stalled and straggling ranged GETs, and cut them so they retry elsewhere.

Each in-flight ranged GET registers a ``Stream``; the puller's driver calls
``StreamMonitor.check()`` a few times a second, which shuts down the socket
under a stream that stalled or crawls, so its reader fails at once and
retries the rest of its range on another connection.

Imports nothing from chunkpull.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import requests

__all__ = ["Stream", "StreamMonitor"]


class Stream:
    """One in-flight ranged GET, as the StreamMonitor sees it."""

    __slots__ = ("label", "started", "last", "bytes", "window", "_resp", "_lock", "aborted", "_clock", "_paused_at")

    def __init__(self, label: object, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self.started = self.last = clock()
        self.bytes = 0
        self.window = 0  # size of the read in flight
        self._resp: requests.Response | None = None
        self._lock = threading.Lock()
        self.aborted = False
        self._paused_at: float | None = None

    def pause(self) -> None:
        """Stop the clock: the reader waits for a buffer, not for the network."""
        self._paused_at = self._clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            waited = self._clock() - self._paused_at
            self.started += waited
            self.last += waited
            self._paused_at = None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def active_until(self, now: float) -> float:
        """Return the end of this stream's reading time so far (the pause start, if paused)."""
        paused_at = self._paused_at
        return now if paused_at is None else paused_at

    def attach(self, resp: requests.Response) -> None:
        with self._lock:
            self._resp = resp
            self.started = self.last = self._clock()
            self.bytes = 0

    def detach(self) -> None:
        with self._lock:
            self._resp = None

    def advance(self, n: int) -> None:
        self.bytes += n
        self.last = self._clock()

    def abort(self) -> bool:
        """Shut the connection down under the reader, which then fails and retries elsewhere."""
        with self._lock:
            conn = getattr(self._resp.raw, "connection", None) if self._resp is not None else None
            sock = getattr(conn, "sock", None)
            if sock is None:
                return False
            self.aborted = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
            return True


class StreamMonitor:
    """Find stalled and straggling streams among the in-flight ranged GETs.

    A stream is *stalled* when no byte arrived for ``stall_s``, and a
    *straggler* when, after ``min_age_s``, its rate is below ``1/slow_ratio``
    of the typical rate (the median over live peers and the last 16 finished
    streams).  ``check()`` aborts such streams (each label at most
    ``max_aborts`` times, so a link that is simply slow everywhere is left
    alone); their readers then retry the rest of their range on another
    connection.
    """

    def __init__(self, *, stall_s: float = 10.0, min_age_s: float = 0.5, slow_ratio: float = 8.0, max_aborts: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.min_age_s = min_age_s
        self.slow_ratio = slow_ratio
        self.max_aborts = max_aborts
        self.clock = clock
        self._streams: set[Stream] = set()
        self._finished: list[float] = []  # rates of recently finished streams
        self._aborts: dict[object, int] = {}
        self._lock = threading.Lock()
        self.aborted = 0

    def stream(self, label: object) -> Stream:
        s = Stream(label, self.clock)
        with self._lock:
            self._streams.add(s)
        return s

    def done(self, s: Stream) -> None:
        elapsed = s.last - s.started
        with self._lock:
            self._streams.discard(s)
            if s.bytes and elapsed > 0 and not s.aborted:
                self._finished = [*self._finished[-15:], s.bytes / elapsed]

    def check(self) -> list[Stream]:
        """Abort stalled and straggling streams; return them."""
        now = self.clock()
        with self._lock:
            attached = [s for s in self._streams if s._resp is not None]
            finished = list(self._finished)
        # Peers' rates: every stream that has moved bytes, paused ones
        # included (a paused stream waits for a buffer, often for a stalled
        # stream to catch up; its rate up to the pause still counts).
        rates = {}
        for s in attached:
            active = s.active_until(now) - s.started
            if s.bytes and active > 0:
                rates[s] = s.bytes / active
        victims = []
        for s in attached:
            age = now - s.started
            if s.paused:
                continue
            peers = sorted([r for t, r in rates.items() if t is not s] + finished)
            # A slow but live link needs a while to fill one slice: allow
            # three times what the typical rate needs for it.
            patience = max(self.stall_s, 3 * s.window / peers[len(peers) // 2]) if peers else self.stall_s
            stalled = now - s.last >= patience
            slow = False
            if age >= self.min_age_s:  # too young to judge otherwise
                if len(peers) >= 2:
                    # Credit the read in flight (its bytes show only when it
                    # returns), so a slow link everywhere is not "slow".
                    slow = (s.bytes + s.window) * self.slow_ratio < peers[len(peers) // 2] * age
            if not (stalled or slow):
                continue
            with self._lock:
                n = self._aborts.get(s.label, 0)
                if n >= self.max_aborts:
                    continue
                self._aborts[s.label] = n + 1
            if s.abort():
                self.aborted += 1
                victims.append(s)
        return victims
