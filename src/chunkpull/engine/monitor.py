"""The stream monitor: find stalled, dripping and straggling GETs, and cut them so they retry elsewhere.

Each in-flight GET registers a ``Stream``; a driver calls
``StreamMonitor.check()`` a few times a second, which shuts the socket down
under a stream that must not go on, so its reader fails at once:

- *cancelled*: the pull's cancel event is set (Ctrl-C, SIGTERM, a client
  that left): every read stops within one check, even a stalled one;
- *stalled*: no byte arrived for ``stall_s``;
- *below the floor*: fewer than ``min_rate_bps`` bytes per second over the
  last ``stall_s`` (a registry that drips a byte a second is no better
  than a silent one, and the socket's read timeout never fires on it);
- *straggling*: after ``min_age_s``, below ``1/slow_ratio`` of the typical
  rate of its peers (at most ``max_aborts`` times per label, so a link that
  is simply slow everywhere is left alone).  In the *tail* (``tail`` set:
  no work waits for a stream, so the pull's end waits on the streams left)
  ``tail_slow_ratio`` applies instead: a range a few times slower than its
  peers is cut and resumes at once on a fresh connection, rather than
  holding the blob's end (and the in-order hash) for the whole range.
  A stream given a ``hedge`` is not cut there: ``hedge()`` asks for the
  rest of its range on another connection too (``engine.hedge``), and the
  stream races it from then on, never again judged straggling.

Progress is read from the kernel where it can be (``TCP_INFO``: bytes
received and the time since the last segment), so a stream is judged by
what reached the socket, not by when a multi-MiB read happened to return;
elsewhere it falls back to the bytes its reader reports.

Imports nothing from chunkpull.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CANCELLED", "MIN_RATE_BPS", "SLOW", "STALLED", "Stream", "StreamMonitor", "tcp_progress"]

# The floor below which a stream counts as stalled, however many bytes
# trickle: 8 KiB/s per connection (64 KiB/s over 8 streams).
MIN_RATE_BPS = 8 << 10
CANCELLED, STALLED, DRIPPING, SLOW = "cancelled", "stalled", "below the minimum rate", "straggling"
SETTLE_S = 2.0  # after the stream count rises, how long no stream is judged straggling

# struct tcp_info (linux/tcp.h): tcpi_last_data_recv (ms) and tcpi_bytes_received.
_TCP_INFO_SIZE = 232
_LAST_DATA_RECV = 52
_BYTES_RECEIVED = 128


def tcp_progress(sock: socket.socket | None) -> tuple[int, float] | None:
    """Return (bytes received, seconds since the last data) of a TCP socket, or None where the kernel does not say."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, ValueError, AttributeError):  # not a TCP socket (a test double, a Unix socket)
        return None
    if len(info) < _BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("=Q", info, _BYTES_RECEIVED)[0], struct.unpack_from("=I", info, _LAST_DATA_RECV)[0] / 1000


class _NoSocket:
    """What an attempt without a socket is attached to: watched by its byte counts, never cut."""

    sock = None


_NO_SOCKET = _NoSocket()


class Stream:
    """One in-flight GET, as the StreamMonitor sees it.

    ``aborted`` says why the monitor cut the current attempt (None: it did
    not); it is cleared when the next attempt attaches its response.
    """

    __slots__ = ("label", "cancel", "started", "last", "bytes", "window", "aborted", "active_s", "hedge", "racing", "_resp", "_lock", "_clock",
                 "_paused_at", "_tcp_base", "_history")

    def __init__(self, label: object, clock: Callable[[], float] = time.monotonic, cancel: threading.Event | None = None) -> None:
        self.label = label
        self.cancel = cancel
        self._clock = clock
        self.started = self.last = clock()
        self.bytes = 0
        self.window = 0  # size of the read in flight
        self.aborted: str | None = None
        self.active_s = 0.0  # reading time of the attempts so far, pauses excluded (what a source's rate is measured on)
        # Called (by the monitor thread) instead of a cut in the tail: True if
        # it started a hedge, which this stream then races (see engine.hedge).
        self.hedge: Callable[[], bool] | None = None
        self.racing = False
        self._resp: object | None = None  # what attach() was given (or _NO_SOCKET): set while an attempt is attached
        self._lock = threading.Lock()
        self._paused_at: float | None = None
        self._tcp_base: int | None = None  # the socket's byte count when this attempt attached
        self._history: collections.deque[tuple[float, int]] = collections.deque()  # (time, bytes) samples

    def pause(self) -> None:
        """Stop the clock: the reader waits for a buffer, not for the network."""
        self._paused_at = self._clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            waited = self._clock() - self._paused_at
            self.started += waited
            self.last += waited
            self._paused_at = None
            self._history.clear()  # a rate across the pause means nothing

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def active_until(self, now: float) -> float:
        """Return the end of this stream's reading time so far (the pause start, if paused)."""
        paused_at = self._paused_at
        return now if paused_at is None else paused_at

    def attach(self, conn: object | None) -> None:
        """Start watching an attempt read from conn: a socket, an object whose ``sock`` is one, or None.

        ``sock`` may also be anything with ``shutdown(how)`` (a library's
        public way to cut its response); without ``getsockopt`` the kernel's
        figures are missing and, as with None, the bytes the reader reports
        are all the monitor sees.  None: the attempt cannot be cut.
        """
        with self._lock:
            self._resp = _NO_SOCKET if conn is None else conn
            self.started = self.last = self._clock()
            self.bytes = 0
            self.aborted = None
            self._history.clear()
            got = tcp_progress(self._sock())
            self._tcp_base = got[0] if got else None

    def detach(self) -> None:
        with self._lock:
            self._resp = None
            self.active_s += max(0.0, self.last - self.started)

    def advance(self, n: int) -> None:
        self.bytes += n
        self.last = self._clock()

    def _sock(self) -> Any:
        conn = self._resp
        if conn is None or isinstance(conn, socket.socket):
            return conn
        return getattr(conn, "sock", None)

    def observe(self, now: float) -> tuple[int, float]:
        """Return (bytes this attempt received, seconds since its last byte), from the kernel when it says."""
        with self._lock:
            got = tcp_progress(self._sock()) if self._tcp_base is not None else None
        if got is None:
            return self.bytes, now - self.last
        received = max(self.bytes, got[0] - self._tcp_base)
        return received, min(now - self.started, got[1])

    def abort(self, reason: str) -> bool:
        """Shut the connection down under the reader, which then fails (and retries elsewhere)."""
        with self._lock:
            sock = self._sock()
            if sock is None:
                return False
            self.aborted = reason
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
            return True


class StreamMonitor:
    """Watch in-flight GETs and cut those that are cancelled, stalled, below the floor or straggling (see the module docstring)."""

    def __init__(
        self,
        *,
        stall_s: float = 10.0,
        min_rate_bps: float = MIN_RATE_BPS,
        min_age_s: float = 0.5,
        slow_ratio: float = 8.0,
        max_aborts: int = 2,
        tail_slow_ratio: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_s = stall_s
        self.min_rate_bps = min_rate_bps
        self.min_age_s = min_age_s
        self.slow_ratio = slow_ratio
        self.max_aborts = max_aborts
        self.tail_slow_ratio = tail_slow_ratio
        self.tail = False  # set by the driver while no work waits for a stream
        self._judge_slow_from = 0.0  # no stream is called straggling before this (see settle())
        self.clock = clock
        self._streams: set[Stream] = set()
        self._finished: list[float] = []  # rates of recently finished streams
        self._aborts: dict[object, int] = {}
        self._lock = threading.Lock()
        self.aborted = 0
        self.hedged = 0  # straggling streams raced by a hedge rather than cut

    def stream(self, label: object, cancel: threading.Event | None = None) -> Stream:
        s = Stream(label, self.clock, cancel)
        with self._lock:
            self._streams.add(s)
        return s

    def done(self, s: Stream) -> None:
        elapsed = s.last - s.started
        with self._lock:
            self._streams.discard(s)
            if s.bytes and elapsed > 0 and not s.aborted:
                self._finished = [*self._finished[-15:], s.bytes / elapsed]

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def check(self) -> list[Stream]:
        """Cut the streams that must not go on; return them."""
        now = self.clock()
        with self._lock:
            attached = [s for s in self._streams if s._resp is not None]
            finished = list(self._finished)
        seen = {s: s.observe(now) for s in attached}
        # Peers' rates: every stream that has moved bytes, paused ones
        # included (a paused stream waits for a buffer, often for a stalled
        # stream to catch up; its rate up to the pause still counts).
        rates = {}
        for s, (received, _silent) in seen.items():
            active = s.active_until(now) - s.started
            if received and active > 0:
                rates[s] = received / active
        victims = []
        for s in attached:
            reason = self._verdict(s, now, seen[s], rates, finished)
            if reason is None:
                continue
            if reason == SLOW and s.racing:
                continue  # it races a hedge: whichever finishes first wins
            if reason == SLOW and self.tail and s.hedge is not None and s.hedge():
                s.racing, s.hedge = True, None
                self.hedged += 1
                continue
            if reason == SLOW:
                with self._lock:
                    n = self._aborts.get(s.label, 0)
                    if n >= self.max_aborts:
                        continue
                    self._aborts[s.label] = n + 1
            if s.abort(reason):
                self.aborted += 1
                victims.append(s)
        return victims

    def settle(self, seconds: float = SETTLE_S) -> None:
        """Call no stream straggling for a while: more streams were just let onto a link.

        A new connection takes a second or two to win its share of a link
        that others already fill, and cut then, its replacement fares the
        same (measured on a 200 Mbit/s link: every growth of the stream count
        cost five to six cuts, each twice, and megabytes of bytes sent for
        nothing).  Stalls and the minimum rate are still enforced, and in
        the tail a stream with a hedge is still raced: nothing is cut there,
        and the pull's end would wait out the settling on it.
        """
        self._judge_slow_from = self.clock() + seconds

    def _verdict(self, s: Stream, now: float, seen: tuple[int, float], rates: dict[Stream, float], finished: list[float]) -> str | None:
        if s.cancel is not None and s.cancel.is_set():
            return CANCELLED
        if s.paused:
            return None
        received, silent = seen
        age = now - s.started
        peers = sorted([r for t, r in rates.items() if t is not s] + finished)
        typical = peers[len(peers) // 2] if peers else None
        if s._tcp_base is None:
            # No kernel figures: bytes show only when a read returns, so a
            # slow but live link gets three times what one read needs.
            patience = max(self.stall_s, 3 * s.window / typical) if typical else self.stall_s
        else:
            patience = self.stall_s
        if silent >= patience:
            return STALLED
        s._history.append((now, received))
        while len(s._history) > 1 and s._history[1][0] <= now - self.stall_s:
            s._history.popleft()
        t0, b0 = s._history[0]
        if s._tcp_base is not None and now - t0 >= self.stall_s and (received - b0) < self.min_rate_bps * (now - t0):
            return DRIPPING
        # Settling does not hold in the tail: there the blob's end waits on
        # the slow stream, and a hedge (not a cut) costs only a few duplicate bytes when the verdict was early.
        settled = now >= self._judge_slow_from or (self.tail and s.hedge is not None)
        if age >= self.min_age_s and len(peers) >= 2 and settled:  # too young, too few peers, or settling
            # Credit the read in flight (its bytes may show only when it
            # returns), so a slow link everywhere is not "slow".
            credit = received if s._tcp_base is not None else received + s.window
            if credit * (self.tail_slow_ratio if self.tail else self.slow_ratio) < typical * age:
                return SLOW
        return None
