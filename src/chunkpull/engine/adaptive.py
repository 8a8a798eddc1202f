"""Adaptive streams: how many chunk GETs run at once, found by measuring (hf_xet's idea: grow while it pays).

``StreamGate`` is a semaphore whose limit moves between ``low`` and
``high``; every chunk stream holds one permit.  ``StreamController`` is
ticked by the engine's monitor thread with the pull's byte count: over
windows of ``window_s`` (and ``window_bytes`` at least) it compares throughput
before and after each change,

- grows the limit by half (at least 2) when every permit is in use and work
  is waiting, unless it is holding;
- keeps a growth that paid (throughput rose by ``gain``) and may grow again
  next window;
- keeps a growth that neither paid nor cost (within ``loss``) once, then
  holds for ``hold_windows``: on a link where each connection is capped just
  under the link's share (8 x 15 MB/s on 1 Gbit/s) one more step is worth a
  few per cent that a window cannot tell from noise, and more streams than
  needed cost a little memory, not throughput;
- steps back to the previous limit when a growth cost throughput, or when a
  second growth in a row did not pay, and holds;
- never moves below ``low`` or above ``high``.

It is the default (``--streams auto``, ``Registry(max_streams=0)`` ask for
it explicitly); ``--streams N`` or ``CHUNKPULL_MAX_STREAMS`` pin the count,
and a pinned count makes no controller: the gate stays at N.  Pure logic on
an injectable clock, so the tests replay throughput curves without sockets.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable

from ..errors import PullCancelledError
from .pieces import PiecePool, pieces_for

__all__ = ["ADAPTIVE", "ADAPTIVE_HIGH", "ADAPTIVE_LOW", "ADAPTIVE_START", "StreamController", "StreamGate", "Streams"]

ADAPTIVE_LOW, ADAPTIVE_START, ADAPTIVE_HIGH = 2, 8, 64
ADAPTIVE = 0  # the max_streams value that asks for an adaptive count (``--streams auto``)


class StreamGate:
    """At most ``limit`` holders at once, served in arrival order; the limit may change while they run (thread-safe).

    First come, first served: chunks are queued in byte order, and a chunk
    overtaken at the gate for long would hold the blob's in-order hash back
    (every later byte then waits for it, in memory or on disk).
    """

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._queue: collections.deque[threading.Event] = collections.deque()  # waiters, first in line first
        self.active = 0
        self.waiting = 0

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, n: int) -> None:
        with self._lock:
            self._limit = n
            self._wake_next()

    def acquire(self, cancel: threading.Event | None = None, poll_s: float = 1.0) -> bool:
        """Wait for a permit, in turn; return False (holding none) if cancel was set first.

        A waiter sleeps until it is first in line and a permit is free, or
        until ``wake_all()`` (call it when cancel is set); ``poll_s`` only
        bounds a wait nobody ended.  (Dozens of chunks wait here on a large
        blob: polling them at 10 Hz cost a visible share of the pull's CPU
        in GIL hand-offs.)
        """
        me = threading.Event()
        with self._lock:
            if not self._queue and self.active < self._limit:
                self.active += 1
                return True
            self._queue.append(me)
            self.waiting += 1
        try:
            while True:
                me.clear()  # before looking: a wake-up after the look is not lost
                with self._lock:
                    if self._queue[0] is me and self.active < self._limit:
                        self._queue.popleft()
                        self.active += 1
                        self._wake_next()  # a raised limit may let the next one in too
                        return True
                    if cancel is not None and cancel.is_set():
                        self._queue.remove(me)
                        self._wake_next()
                        return False
                me.wait(poll_s)  # only the first in line is woken: no herd on every release
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        with self._lock:
            self.active -= 1
            self._wake_next()

    def wake_all(self) -> None:
        """Wake every waiter to look at its cancel event (the pull was cancelled)."""
        with self._lock:
            for waiter in self._queue:
                waiter.set()

    def _wake_next(self) -> None:
        # Called with the lock held.
        if self._queue and self.active < self._limit:
            self._queue[0].set()


class StreamController:
    """Hill-climb a StreamGate's limit on measured throughput (see the module docstring)."""

    def __init__(self, gate: StreamGate, *, low: int = ADAPTIVE_LOW, high: int = ADAPTIVE_HIGH, window_s: float = 0.5,
                 window_bytes: int = 48 << 20, gain: float = 0.05, loss: float = 0.05, hold_windows: int = 6,
                 clock: Callable[[], float]) -> None:
        self.gate, self.low, self.high = gate, low, high
        # A window lasts window_s and carries window_bytes at least (up to
        # 8 x window_s): bytes are counted a piece at a time, so on a slow
        # link 0.5 s holds too few pieces to tell 5 % from noise.
        self.window_s, self.window_bytes = window_s, window_bytes
        self.gain, self.loss, self.hold_windows = gain, loss, hold_windows
        self._flat = False  # the current limit is a growth kept without paying: the next must pay
        self._clock = clock
        self._at: float | None = None
        self._bytes = 0
        self._before: float | None = None  # throughput at the limit before the last growth
        self._previous: int | None = None  # that limit
        self._hold = 0
        self._busy = False  # every permit was in use with work waiting, at some point in the window
        self.history: list[tuple[float, int, float]] = []  # (time, limit, throughput) per window, for the summary and tests

    def tick(self, total_bytes: int) -> None:
        """Feed the pull's byte count so far; called a few times a second."""
        now = self._clock()
        if self.gate.active >= self.gate.limit and self.gate.waiting:
            self._busy = True
        if self._at is None:
            self._at, self._bytes = now, total_bytes
            return
        elapsed = now - self._at
        if elapsed < self.window_s or (total_bytes - self._bytes < self.window_bytes and elapsed < 8 * self.window_s):
            return
        rate = (total_bytes - self._bytes) / (now - self._at)
        self._at, self._bytes = now, total_bytes
        busy, self._busy = self._busy, False
        limit = self.gate.limit
        self.history.append((now, limit, rate))
        if self._previous is not None:
            # The window after a growth: keep it if it paid; keep one that
            # was flat once, and hold; otherwise step back, and hold.
            if rate >= self._before * (1 + self.gain):
                self._flat = False
            elif rate >= self._before * (1 - self.loss) and not self._flat:
                self._flat = True
                self._hold = self.hold_windows
            else:
                self.gate.set_limit(self._previous)
                self._hold = self.hold_windows
            self._previous = self._before = None
            return
        if self._hold:
            self._hold -= 1
            return
        if busy and limit < self.high:
            self._previous, self._before = limit, rate
            self.gate.set_limit(min(self.high, max(limit + 2, limit * 3 // 2)))


class Streams:
    """One pull's stream count: the gate every chunk stream passes, its controller when adaptive, and the piece allowance that follows it."""

    def __init__(self, max_streams: int, *, adaptive: bool, memory_budget: int, clock: Callable[[], float],
                 on_grow: Callable[[], None] = lambda: None) -> None:
        self.gate = StreamGate(min(ADAPTIVE_START, max_streams) if adaptive else max_streams)
        self.on_grow = on_grow  # the count just rose (the engine lets new streams settle before judging them)
        self.controller = StreamController(self.gate, high=max_streams, clock=clock) if adaptive else None
        self.memory_budget = memory_budget
        self.bytes = 0  # new bytes the pull has received (read by the controller; a lost update under a race only blurs one window)
        self._pool: PiecePool | None = None
        self._chunk = 0

    def slot(self, cancel: threading.Event | None) -> contextlib.AbstractContextManager[None]:
        """Hold a stream permit while fetching (PullCancelledError if cancelled while waiting)."""
        return _Slot(self.gate, cancel)

    def attach(self, pool: PiecePool, chunk: int) -> None:
        """Let the piece pool hand out what the current stream count needs."""
        self._pool, self._chunk = pool, chunk
        pool.headroom = max(1, -(-chunk // pool.size))
        self._allow()

    def _allow(self) -> None:
        assert self._pool is not None
        self._pool.streams = self.gate.limit
        self._pool.allow(pieces_for(self.gate.limit, self._chunk, self._pool.size, self.memory_budget))

    def counts(self) -> list[int]:
        """The stream counts the pull ran at, in order, without repeats."""
        seen = [limit for _t, limit, _rate in self.controller.history] if self.controller else []
        out: list[int] = []
        for n in [*seen, self.gate.limit]:
            if not out or out[-1] != n:
                out.append(n)
        return out

    def tick(self) -> None:
        """Called by the monitor thread: let the controller move the count, and the pool's allowance follow."""
        if self.controller is None:
            return
        before = self.gate.limit
        self.controller.tick(self.bytes)
        if self.gate.limit != before and self._pool is not None:
            self._allow()
        if self.gate.limit > before:
            self.on_grow()


class _Slot:
    __slots__ = ("gate", "cancel")

    def __init__(self, gate: StreamGate, cancel: threading.Event | None) -> None:
        self.gate, self.cancel = gate, cancel

    def __enter__(self) -> None:
        if not self.gate.acquire(self.cancel):
            raise PullCancelledError()

    def __exit__(self, *exc: object) -> None:
        self.gate.release()
