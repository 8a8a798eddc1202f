"""Page-aligned buffers for the data path, from one bounded pool.

All network bytes of a chunked pull land in pieces of one preallocated
anonymous mapping: memory is ``count × size`` bytes whatever the blob size,
and pieces are page-aligned (mmap memory always is) so they can be written
with ``O_DIRECT``.  (numpy would do too, but importing it costs 13 MiB of
RSS and an idle BLAS thread pool, for nothing the data path needs.)

A piece travels: a worker acquires it, reads bytes from the socket into it,
writes them to the work file, and hands it to the blob's in-order hash; the
hash releases it once those bytes are in.  Pieces of chunks ahead of the
hash wait ("park") in memory, so when the pool runs low only the workers
whose chunk is next in line for the hash may take the last ``reserve``
pieces: they release theirs at once, so the pull always moves on.

Why the reserve cannot deadlock: chunks are queued in order, and the worker
pool takes them first in, first out, so the chunk a blob's hash waits for is
always running (and may take a reserve piece, which its hash releases at
once) or already done.

Imports nothing from chunkpull but errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import threading
import time
from collections.abc import Callable

from ..errors import PullCancelledError

__all__ = ["ALIGN", "Piece", "PiecePool", "PoolPieces", "ReusedBuffer", "aligned_buffer", "pieces_for"]

ALIGN = 4096  # page size, and the strictest O_DIRECT alignment we meet
_HUGE = 2 << 20  # a transparent huge page
# How long a stream waits for a piece before the pool asks for parked ones
# back (``PiecePool.reclaim``): long enough that the hash frees one first on
# a fast link, short next to a chunk's time on a slow one.  A last resort:
# chunks started while pieces are short skip parking (BlobAssembler.deliver).
SPILL_AFTER_S = 0.1


def aligned_buffer(size: int) -> memoryview:
    """Return a page-aligned, writable buffer of size bytes (freed with its last view).

    Large buffers start on a 2 MiB boundary and ask for transparent huge
    pages: measured on the reference machine, that cut the CPU time of a
    1 GiB pull by a fifth (fewer page faults, and O_DIRECT pins one page per
    2 MiB instead of 512).
    """
    if size < _HUGE:
        return memoryview(mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))[:size]
    # MAP_PRIVATE: an anonymous mmap defaults to MAP_SHARED, which is
    # shmem-backed and gets no huge pages.
    m = mmap.mmap(-1, size + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    skip = (-ctypes.addressof(ctypes.c_char.from_buffer(m))) % _HUGE
    with contextlib.suppress(AttributeError, OSError):  # THP may be off: a hint only
        m.madvise(mmap.MADV_HUGEPAGE, skip, size)
    return memoryview(m)[skip : skip + size]


class Piece:
    """One buffer of the pool; ``release()`` returns it (idempotent)."""

    __slots__ = ("view", "_pool", "_held")

    def __init__(self, view: memoryview, pool: PiecePool) -> None:
        self.view = view
        self._pool = pool
        self._held = False

    def release(self) -> None:
        self._pool._put(self)


def pieces_for(streams: int, chunk: int, piece: int, memory_budget: int, floor: int = 32 << 20) -> int:
    """How many pieces a pull at ``streams`` streams may hold: a whole chunk per stream (and one to read into),
    at least ``floor`` bytes, at most ``memory_budget`` bytes, never fewer than streams + 2."""
    want = max(streams * (math.ceil(chunk / piece) + 1), floor // piece)
    return max(streams + 2, min(want, memory_budget // piece))


class PiecePool:
    """A fixed set of ``count`` aligned pieces of ``size`` bytes; thread-safe."""

    @classmethod
    def sized_for(cls, streams: int, chunk: int, piece: int, memory_budget: int) -> PiecePool:
        """A pool with enough pieces for ``streams`` streams to park a whole chunk each, within the memory budget.

        The memory is reserved, not touched: only pieces in use become
        resident, and ``allow()`` limits how many are handed out.
        """
        return cls(max(4, pieces_for(streams, chunk, piece, memory_budget)), piece)

    def allow(self, n: int) -> None:
        """Hand out at most n pieces at once (the stream count moved); never more than the pool holds."""
        with self._cond:
            self.allowance = max(2, min(n, self.count))
            self._cond.notify_all()

    def __init__(self, count: int, size: int) -> None:
        if count < 2 or size <= 0 or size % ALIGN:
            raise ValueError(f"want at least 2 pieces of a positive multiple of {ALIGN} bytes")
        self.size = size
        self.count = count
        self._memory = aligned_buffer(count * size)
        self._free = [Piece(self._memory[i * size : (i + 1) * size], self) for i in range(count)]
        self._cond = threading.Condition()
        self.reserve = 1
        self.allowance = count  # pieces that may be out at once
        self.headroom = 1  # pieces one chunk parks while ahead of the hash (set by the engine)
        self.streams = 0  # streams reading into pieces at once (set by the engine)
        # Called, without the pool's lock, when a caller has found no piece
        # for SPILL_AFTER_S: frees parked pieces if it can (returns True), so
        # streams need not wait on the in-order hash (see BlobAssembler.spill).
        self.reclaim: Callable[[], bool] | None = None

    @property
    def free(self) -> int:
        with self._cond:
            return len(self._free)

    def acquire(self, *, priority: Callable[[], bool] = lambda: False, cancel: threading.Event | None = None, poll_s: float = 0.1) -> Piece:
        """Take a piece, waiting while none may be had.

        ``priority()`` says whether the caller's bytes are next in line for
        the hash; only such callers may take the last ``reserve`` pieces.

        Raises:
            PullCancelledError: cancel was set while waiting.
        """
        waited = 0.0
        while True:
            with self._cond:
                out = self.count - len(self._free)
                if (len(self._free) > self.reserve and out < self.allowance - self.reserve) or (self._free and priority()):
                    piece = self._free.pop()
                    piece._held = True
                    return piece
                if cancel is not None and cancel.is_set():
                    raise PullCancelledError()
                reclaim, free = self.reclaim, len(self._free)
            # None to be had for a while: ask for parked pieces back.
            if reclaim is not None and waited >= SPILL_AFTER_S and reclaim():
                waited = 0.0
                continue
            with self._cond:
                if len(self._free) == free:  # nothing came back meanwhile
                    # Woken by releases; the timeout re-checks priority (the
                    # hash may have reached the caller's chunk) and cancel.
                    started = time.monotonic()
                    self._cond.wait(poll_s if reclaim is None else min(poll_s, SPILL_AFTER_S))
                    waited += time.monotonic() - started

    def chunks_ahead(self) -> int:
        """How many chunks ahead of a blob's hash may park their pieces, with every stream holding one piece."""
        # Unlocked: a hint, read once per chunk.
        # A chunk ahead holds at most headroom pieces, the one being read into
        # included; the chunk at the hash parks none but reads into one.
        return max(0, (self.allowance - self.reserve - 1) // self.headroom)

    def set_reserve(self, blobs: int) -> None:
        """Keep one piece per blob in flight for the workers whose chunk is next for its hash.

        Capped at half the pool, so many blobs at once never shut the other
        workers out entirely.
        """
        with self._cond:
            self.reserve = max(1, min(blobs, self.count // 2))
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the pool's memory now (pieces still held keep theirs until released)."""
        with self._cond:
            self._free.clear()
            self._memory = None

    def wake(self) -> None:
        """Let waiters re-check their priority (the hash moved on)."""
        with self._cond:
            self._cond.notify_all()

    def _put(self, piece: Piece) -> None:
        with self._cond:
            if not piece._held:
                return
            piece._held = False
            if self._memory is not None:
                self._free.append(piece)
            self._cond.notify_all()


class ReusedBuffer:
    """One buffer reused for every read of a stream (the sink is done with it when it returns)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __call__(self) -> memoryview:
        return self.view

    def drop(self) -> None:
        pass


class PoolPieces:
    """Pool pieces for one chunk's stream: each read gets its own, which the sink takes over."""

    __slots__ = ("pool", "priority", "cancel", "held")

    def __init__(self, pool: PiecePool, priority: Callable[[], bool], cancel: threading.Event) -> None:
        self.pool = pool
        self.priority = priority
        self.cancel = cancel
        self.held: Piece | None = None  # acquired, not yet handed to the sink

    def __call__(self) -> memoryview:
        self.held = self.pool.acquire(priority=self.priority, cancel=self.cancel)
        return self.held.view

    def take(self) -> Piece:
        piece, self.held = self.held, None
        return piece

    def drop(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None
