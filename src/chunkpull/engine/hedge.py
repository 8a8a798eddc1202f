"""Hedged ranges: one chunk's remaining bytes streamed over two connections at once, first bytes in win.

When the end of a pull waits on a range that arrives far slower than its
peers, the engine asks for the rest of that range again on a fresh
connection and lets both run (``Puller._hedge``).  A ``RangeRace`` merges
them: it keeps a cursor, the first byte of the range nobody has supplied
yet, and of each piece a racer brings takes only the part at or past the
cursor.  So every byte of the range is written once, at its own offset, and
fed to the chunk's digest in order, whichever connection brought it; bytes
a racer brings from behind the cursor are dropped (counted in ``wasted``).
The racer that supplies the range's last byte wins: the race closes and the
other racers are cut (their readers see ``RaceLost``, or a shut socket, and
stop without retrying).

The race is the chunk owner's: it closes when the owner's stream ends, won
or not, so a hedge never delivers into a chunk that has moved on (reset for
a bad digest, failed, or done).

Imports nothing from chunkpull but the monitor and pieces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .monitor import Stream
from .pieces import ALIGN, PoolPieces

__all__ = ["LOST", "RaceLost", "RangeRace", "Racer"]

LOST = "lost the race"  # why a racer was cut (Stream.aborted)

# accept(offset, view, release, aligned): write and hash bytes the race took.
Accept = Callable[[int, memoryview, Callable[[], None], bool], None]


class RaceLost(Exception):
    """Raised to a racer whose range is finished (or given up) already; the engine stops that stream quietly."""


class Racer:
    """One stream in a race: the monitor's view of it (set once its first attempt starts)."""

    __slots__ = ("stream", "taken")

    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.taken = 0  # bytes of the range this racer supplied first


class RangeRace:
    """Merge the streams of bytes start..end (inclusive) of one chunk; thread-safe."""

    def __init__(self, start: int, end: int, accept: Accept) -> None:
        self.cursor = start  # the first byte no racer has supplied yet
        self.end = end
        self._accept = accept
        self._lock = threading.Lock()
        self._racers: list[Racer] = []
        self.closed = False
        self.over = threading.Event()  # set when closed: hedges waiting for a piece give up
        self.winner: Racer | None = None
        self.wasted = 0  # bytes that arrived behind the cursor

    def racer(self) -> Racer:
        """Enter a new racer (the owner first)."""
        r = Racer()
        with self._lock:
            self._racers.append(r)
        return r

    def sink_for(self, racer: Racer, pieces: PoolPieces, aligned: bool) -> Callable[[int, memoryview], None]:
        """The sink a racer streams into: each piece it reads is offered to the race (and handed over with it)."""

        def sink(offset: int, view: memoryview) -> None:
            self.offer(racer, offset, view, pieces.take().release, aligned)

        return sink

    @property
    def done(self) -> bool:
        """Every byte of the range is in, or the race was given up."""
        return self.closed

    def offer(self, racer: Racer, offset: int, view: memoryview, release: Callable[[], None], aligned: bool) -> None:
        """Take the bytes of view (at offset) past the cursor; ``release()`` once they are written and hashed (at once if none are new).

        Raises:
            RaceLost: the race is over; this racer should stop.
            Whatever accept raises (the chunk's own checks, a write error).
        """
        cut: list[Stream] = []
        with self._lock:
            if self.closed:
                release()
                raise RaceLost()
            skip = self.cursor - offset
            if skip >= len(view):
                release()
                self.wasted += len(view)
                return
            if skip > 0:
                # Each racer reads its bytes in order from where it started,
                # at or before the cursor, so a piece never starts past it.
                view, offset = view[skip:], self.cursor
                aligned = aligned and skip % ALIGN == 0
                self.wasted += skip
            self._accept(offset, view, release, aligned)
            self.cursor = offset + len(view)
            racer.taken += len(view)
            if self.cursor > self.end:
                self.closed, self.winner = True, racer
                cut = [r.stream for r in self._racers if r is not racer and r.stream is not None]
        if self.closed:
            self.over.set()
        for s in cut:
            s.abort(LOST)

    def close(self) -> None:
        """End the race (the owner's stream ended): later offers are refused, other racers cut."""
        with self._lock:
            self.closed = True
            cut = [r.stream for r in self._racers[1:] if r.stream is not None and r is not self.winner]
        self.over.set()
        for s in cut:
            s.abort(LOST)
