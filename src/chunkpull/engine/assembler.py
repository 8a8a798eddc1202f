"""The per-blob assembler: chunks arriving in any order become one work file and one in-order SHA-256.

``BlobAssembler`` owns one blob's work file while its chunks arrive: it
writes each piece at its final offset, keeps the whole-blob SHA-256 running
in byte order over the pieces while they are still in memory (pieces of
chunks ahead of the hash wait for it), checkpoints that hash at every chunk
boundary, and on a whole-blob mismatch uses the chunk digests to find the
chunks to fetch again.  Bytes are read back from the work file only where
they were not delivered in memory this run (a resumed prefix, chunks behind
a repair) and after a mismatch; ``read_back_bytes`` counts them.

Imports core, errors, the hashing backend and ``engine.pieces`` (ALIGN).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from blake3 import blake3 as _Blake3

from .. import _hashio
from ..core.chunks import ChunkSum
from ..core.digest import Digest
from ..errors import IntegrityError
from .pieces import ALIGN, aligned_buffer

__all__ = ["BlobAssembler", "ChunkHasher", "PullStats", "hash_file_range"]


class ChunkHasher:
    """Incremental digest of one chunk's bytes (SHA-256 or BLAKE3, as its chunk digest says)."""

    __slots__ = ("algorithm", "_h")

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        if algorithm == "sha256":
            self._h = _hashio.RunningSha256()
        elif algorithm == "blake3":
            self._h = _Blake3()
        else:
            raise ValueError(f"unsupported chunk digest algorithm {algorithm!r}")

    def update(self, data) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


# Bytes are read back from the work file in pieces of this size, only where
# they were not delivered in memory this run (chunks a resume record marks
# done, chunks behind a repair) and to find bad chunks after a mismatch.
_HASH_READ = 4 << 20
# How long a chunk starting too far ahead of a busy hash waits for it before
# it is sent to the disk to be read back (see deliver).
CATCH_UP_S = 0.5


class BlobAssembler:
    """Assemble one blob in its work file from chunks arriving in any order.

    Workers stream each chunk in pieces and ``deliver(index, offset, piece,
    release)`` them: the piece is written at its offset at once and queued
    for the whole-blob SHA-256, which advances strictly in byte order on one
    thread at a time: the caller's hasher thread when ``wake`` is given (it
    is called on every delivery; the thread then calls ``drain()``), else
    the delivering thread.  Pieces of chunks ahead of the hash wait in memory
    (bounded by the caller's piece pool) and are hashed, then released, as
    soon as the hash reaches them.  ``chunk_done(index)`` marks
    a chunk complete.  Chunks that are done but whose pieces were never
    delivered this run (resumed from a record, or behind a repaired chunk)
    are hashed from the file instead.

    ``finish()`` hashes what remains and compares the digest.  On a mismatch
    it re-hashes each chunk from the file against its chunk digest and
    returns the bad ones; the caller fetches them again and calls
    ``finish()`` once more, which resumes the whole hash from the checkpoint
    before the first bad chunk.

    Writes go through ``direct_fd`` (opened with ``O_DIRECT``) when it is
    given and the piece is aligned, else through ``fd`` (the page cache).

    Thread-safe.
    """

    def __init__(
        self,
        fd: int,
        digest: Digest,
        size: int,
        sums: Sequence[ChunkSum],
        *,
        direct_fd: int = -1,
        hash_state: bytes | None = None,
        hashed: int = 0,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.fd = fd
        self.wake = wake
        self.direct_fd = direct_fd
        self.digest = digest
        self.size = size
        self.sums = list(sums)
        n = len(self.sums)
        self._done = [False] * n
        self._parked: list[deque] = [deque() for _ in range(n)]
        self._spilled = [False] * n  # parked pieces given back to the pool: hash these chunks from the file
        # Where each chunk's bytes written so far end (a chunk is streamed in
        # order): the hash follows a spilled chunk there through the file,
        # rather than stall until the chunk is done (and every chunk started
        # meanwhile, being far ahead of a stalled hash, spill too).
        self._written = [s.chunk.start for s in self.sums]
        self._cond = threading.Condition()
        self._hashing = False  # the turn to advance the whole hash
        self._next = 0  # first chunk not wholly in the hash
        self._pos = 0  # bytes in the hash
        self._whole = _hashio.RunningSha256()
        # _checkpoints[i] is the whole-hash snapshot before chunk i: 112 bytes
        # (native) or one hashlib object (python) per chunk.
        self._checkpoints: dict[int, object] = {0: self._whole.snapshot()}
        self._bufs: list[memoryview] = []
        self._reader: ThreadPoolExecutor | None = None  # reads the work file ahead of the hash (see _hash_from_file)
        self._direct_reads = False
        self._closed = False
        # What the data path did, for tests and benchmarks: bytes written with
        # O_DIRECT and through the page cache, and bytes read back from the file.
        self.direct_bytes = 0
        self.buffered_bytes = 0
        self.read_back_bytes = 0
        self.on_advance: Callable[[], None] = lambda: None  # the hash moved: wake pool waiters
        self.park_ahead: Callable[[], int] = lambda: len(sums)  # how many chunks ahead of the hash may park pieces
        if hash_state is not None and hashed:
            self._restore(hash_state, hashed)

    # -- writing -------------------------------------------------------------

    def write(self, offset: int, data, *, aligned: bool = False) -> None:
        """Write data at offset: O_DIRECT for the aligned part of an aligned buffer."""
        n = len(data)
        head = 0
        if self.direct_fd >= 0 and aligned and offset % ALIGN == 0 and n >= ALIGN:
            head = n - n % ALIGN
            try:
                _hashio.pwrite_all(self.direct_fd, data[:head] if head != n else data, offset)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                # Some file systems (FUSE, ecryptfs) open with O_DIRECT but
                # refuse the write: use the page cache from now on.
                self.direct_fd = -1
                head = 0
        if head != n:
            _hashio.pwrite_all(self.fd, data[head:] if head else data, offset + head)
        # Counters only (no lock): a lost update misreports a statistic, never data.
        self.direct_bytes += head
        self.buffered_bytes += n - head

    def deliver(self, index: int, offset: int, piece: memoryview, release: Callable[[], None], *, aligned: bool = False) -> None:
        """Write a piece of chunk index and queue it for the whole hash.

        Takes ownership of the buffer: ``release()`` is called once the hash
        no longer needs it (at once on errors).
        """
        if offset == self.sums[index].chunk.start and index - self._next > self.park_ahead():
            # A new chunk farther ahead of the hash than the piece pool can
            # park.  If the hash has bytes at hand, it is behind for want of
            # CPU, not bytes: give it a moment (the stream waits, and the
            # sender with it) rather than send this chunk to the disk to be
            # read back, which makes the hash slower still.  Else, or if it
            # does not catch up, the chunk's pieces are released once written
            # and the hash reads it back, so no stream waits for a slow one.
            with self._cond:
                deadline = time.monotonic() + CATCH_UP_S
                while self.wake is not None and not self._closed and index - self._next > self.park_ahead() and self._ready():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if index - self._next > self.park_ahead():
                    self._spilled[index] = not self._parked[index]
        try:
            self.write(offset, piece, aligned=aligned)
        except BaseException:
            release()
            raise
        end = offset + len(piece)
        with self._cond:
            if offset <= self._written[index] < end:
                self._written[index] = end
            # Closed (the blob failed), bytes the hash already has, or a
            # spilled chunk (its bytes are on disk: the hash reads them there).
            drop = self._closed or (offset < self._pos and index <= self._next) or self._spilled[index]
            if drop:
                release()
            else:
                self._parked[index].append((offset, piece, release))
            # The hash may go on: with this piece, or from the file through a spilled chunk it is on.
            kick = not drop or (self._spilled[index] and index == self._next)
        if kick:
            self._kick()

    def spill(self) -> int:
        """Give back the parked pieces of the chunk farthest ahead of the hash; return how many.

        Called when the piece pool has run dry for a while: rather than stall
        every stream until the hash catches up, that chunk is hashed from the
        work file once it is done (its later pieces are released as soon as
        they are written).  Read-backs use O_DIRECT where the writes did (no
        page-cache copies: buffered I/O measured ~2 CPU-s per GiB more) and
        are counted in ``read_back_bytes``.
        """
        with self._cond:
            if self._closed:
                return 0
            for j in range(len(self.sums) - 1, self._next, -1):
                if self._parked[j]:
                    self._spilled[j] = True
                    dropped = list(self._parked[j])
                    self._parked[j].clear()
                    break
            else:
                return 0
        for _off, _piece, release in dropped:
            release()
        return len(dropped)

    def chunk_done(self, index: int) -> None:
        """Mark chunk index complete and advance the in-order hash if it can."""
        with self._cond:
            self._done[index] = True
        self._kick()

    def _kick(self) -> None:
        # With a hasher thread (``wake`` given), tell it; otherwise hash here.
        if self.wake is not None:
            self.wake()
        else:
            self.drain()

    def drain(self) -> bool:
        """Advance the whole hash as far as the bytes at hand allow; False if another thread has the turn."""
        ran = False
        while True:
            with self._cond:
                if self._hashing or self._closed:
                    return ran
                self._hashing = True
            try:
                self._advance()
            finally:
                self._give_turn()
            ran = True
            # Bytes delivered while we held the turn found it taken: look again.
            with self._cond:
                if not self._ready():
                    return ran

    def _ready(self) -> bool:
        """Say whether the hash could advance now; called with the lock held."""
        i = self._next
        if i >= len(self.sums) or self._closed:
            return False
        q = self._parked[i]
        return bool(q and q[0][0] <= self._pos) or self._done[i] or (self._spilled[i] and self._written[i] > self._pos)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the hashing turn (waiting for it): one thread at a time touches the hash."""
        with self._cond:
            while self._hashing:
                self._cond.wait()
            self._hashing = True
        try:
            yield
        finally:
            self._give_turn()

    def _give_turn(self) -> None:
        with self._cond:
            self._hashing = False
            self._cond.notify_all()

    def close(self) -> None:
        """Stop hashing and drop every parked piece; later deliveries are released at once.

        Waits for the hashing turn, so no other thread is reading the work
        file through this assembler when the caller closes it.
        """
        with self._turn():
            with self._cond:
                self._closed = True
            if self._reader is not None:
                self._reader.shutdown()  # idle: reads happen only within a turn
                self._reader = None
        self.release_all()

    def is_next(self, index: int) -> bool:
        """Say whether chunk index is the one the whole hash waits for.

        Reads without the lock on purpose: PiecePool.acquire calls this while
        holding the pool's lock, and the hash releases pieces (taking the
        pool's lock) while holding this one.  A stale answer only delays a
        waiter until its next poll.
        """
        return index == self._next

    def reset_chunk(self, index: int) -> None:
        """Forget a chunk's bytes (they failed its digest): unhash and drop its pieces."""
        with self._turn(), self._cond:
            if self._next == index and self._pos > self.sums[index].chunk.start:
                self._whole = _hashio.RunningSha256.from_snapshot(self._checkpoints[index])
                self._pos = self.sums[index].chunk.start
            self._done[index] = False
            self._spilled[index] = False
            self._written[index] = self.sums[index].chunk.start
            dropped = list(self._parked[index])
            self._parked[index].clear()
        for _off, _piece, release in dropped:
            release()

    def release_all(self) -> None:
        """Release every parked piece (the blob failed or was cancelled)."""
        with self._cond:
            dropped = [item for q in self._parked for item in q]
            for q in self._parked:
                q.clear()
        for _off, _piece, release in dropped:
            release()

    def mark_done(self, done: list[bool]) -> None:
        """Mark chunks done from a resume record (before any worker starts)."""
        with self._cond:
            for i, ok in enumerate(done):
                if ok:
                    self._done[i] = True

    def done_chunks(self) -> list[bool]:
        with self._cond:
            return list(self._done)

    def hashed_prefix(self) -> tuple[int, bytes | None]:
        """Return (bytes hashed, persistable state or None) at the last chunk boundary."""
        with self._cond:
            snap = self._checkpoints.get(self._next)
        return _hashio.RunningSha256.persistable(snap)

    # -- the in-order hash -----------------------------------------------------

    def _restore(self, state: bytes, hashed: int) -> None:
        # A resume record says the first `hashed` bytes (a chunk boundary) are
        # in the hash; a damaged record only costs a re-hash at finish().
        for i, s in enumerate(self.sums):
            if s.chunk.start == hashed:
                try:
                    self._whole = _hashio.RunningSha256(state, hashed)
                except ValueError:
                    return
                self._next, self._pos = i, hashed
                self._checkpoints[i] = self._whole.snapshot()
                for j in range(i):
                    self._done[j] = True
                return

    def _read_buf(self, which: int = 0) -> memoryview:
        # Two read-back buffers per blob, used only by the thread holding the
        # hashing turn (and its reader) or by finish(), so never by two
        # callers at once; page-aligned for O_DIRECT reads.
        while len(self._bufs) <= which:
            self._bufs.append(aligned_buffer(_HASH_READ))
        return self._bufs[which]

    def _hash_from_file(self, offset: int, n: int) -> None:
        """Feed n bytes of the work file from offset into the whole hash; the caller holds the turn.

        Beyond one buffer, the next read runs on a reader thread while this
        one hashes (both release the GIL): after the last byte of a pull
        whose hash fell behind, read and hash overlap instead of taking turns.
        """
        self._direct_reads = self.direct_fd >= 0 and offset % ALIGN == 0
        if n <= _HASH_READ:
            while n > 0:  # a read may come back short: go on from where it ended
                got = self._read_into(self._read_buf(), offset, n)
                self._whole.update(self._bufs[0][:got])
                offset, n = offset + got, n - got
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkpull-readback")
        end, k = offset + n, 0
        pending = self._reader.submit(self._read_into, self._read_buf(0), offset, min(n, _HASH_READ))
        while offset < end:
            got = pending.result()
            buf = self._bufs[k]
            offset += got
            k ^= 1
            if offset < end:
                pending = self._reader.submit(self._read_into, self._read_buf(k), offset, min(end - offset, _HASH_READ))
            self._whole.update(buf[:got])

    def _read_into(self, buf: memoryview, offset: int, want: int) -> int:
        """Read up to want (> 0) bytes of the work file at offset into buf; return how many (at least one)."""
        while True:
            try:
                # O_DIRECT reads whole blocks: ask for want rounded up (the file ends at the blob's size).
                if self._direct_reads:
                    got = os.preadv(self.direct_fd, [buf[: -(-want // ALIGN) * ALIGN]], offset)
                else:
                    got = os.preadv(self.fd, [buf[:want]], offset)
            except OSError as err:
                if not self._direct_reads or err.errno != errno.EINVAL:
                    raise
                self._direct_reads = False  # a file system that takes O_DIRECT writes but not reads
                continue
            if got <= 0:
                raise OSError(errno.EIO, f"work file ends before offset {offset + want}")
            got = min(got, want)
            self._direct_reads = self._direct_reads and got % ALIGN == 0
            return got

    def _advance(self) -> None:
        """Advance the whole hash as far as the bytes at hand allow; the caller holds the turn."""
        while True:
            with self._cond:
                step = None if self._closed else self._next_step()
            if step is None:
                return
            kind, a, b = step
            if kind == "piece":
                piece, release = a, b
                try:
                    self._whole.update(piece)
                finally:
                    release()
                with self._cond:
                    self._pos += len(piece)
            elif kind == "file":
                self._hash_from_file(a, b)
                self.read_back_bytes += b
                with self._cond:
                    self._pos += b
            else:  # chunk boundary
                i = a
                chunk = self.sums[i].chunk
                if self.direct_fd < 0:
                    # Hashed pages are final: start their writeback now, so
                    # the fsync before commit finds little left to write.
                    _hashio.start_writeback(self.fd, chunk.start, chunk.size)
                snap = self._whole.snapshot()
                with self._cond:
                    self._checkpoints[i + 1] = snap
                    self._next = i + 1
                    self._cond.notify_all()  # streams waiting for the hash to catch up (deliver)
                self.on_advance()

    def _next_step(self):
        """Return the next hashing step, or None; called with the lock held."""
        i = self._next
        if i >= len(self.sums):
            return None
        chunk = self.sums[i].chunk
        q = self._parked[i]
        while q and q[0][0] < self._pos:  # stale: the hash has these bytes
            q.popleft()[2]()
        if q and q[0][0] == self._pos:
            _off, piece, release = q.popleft()
            return ("piece", piece, release)
        if self._pos == chunk.end + 1 and self._done[i]:
            return ("boundary", i, None)
        if self._done[i]:
            # Bytes this run did not deliver (resumed, or behind a repair).
            upto = q[0][0] if q else chunk.end + 1
            return ("file", self._pos, upto - self._pos)
        if self._spilled[i] and self._written[i] > self._pos:
            # A spilled chunk still streaming: hash what is on disk so far.
            upto = min(q[0][0], self._written[i]) if q else self._written[i]
            return ("file", self._pos, upto - self._pos)
        return None

    def finish(self, suspects: Iterable[int] = ()) -> list[int]:
        """Finish the whole-blob hash; return [] when it matches, else the bad chunk indexes.

        Holds the hashing turn from the last byte to the verdict, so no other
        thread can hash (or rewind) in between.  ``suspects`` are chunks
        without digests whose source is not trusted (a mirror's): when no
        chunk digest fails, they are the ones returned as bad.

        Raises:
            IntegrityError: the blob does not match its digest and neither the
                chunk digests nor the suspects can say where.
        """
        with self._turn():
            with self._cond:
                if not all(self._done):
                    raise RuntimeError("finish() before every chunk is done")
            self._advance()
            got = self._whole.digest()
            if self._whole.length == self.size and got == self.digest.raw:
                return []
            # The failure path only: read every chunk back to find the bad ones.
            bad = []
            for i, s in enumerate(self.sums):
                if s.digest is not None:
                    self.read_back_bytes += s.chunk.size
                    if hash_file_range(s.digest.algorithm, self.fd, s.chunk.start, s.chunk.size, self._read_buf()) != s.digest.raw:
                        bad.append(i)
            bad = bad or sorted(suspects)
            if not bad:
                raise IntegrityError(
                    f"blob {self.digest} failed verification: its bytes hash to sha256:{got.hex()}; "
                    "the registry's chunk list disagrees with the layer digest",
                    digest=str(self.digest), expected=str(self.digest), got=f"sha256:{got.hex()}",
                )
            self._rewind(bad[0])
            with self._cond:
                for i in bad:
                    self._done[i] = False
            return bad

    def digest_if_verified(self) -> bytes:
        """Return the whole-blob digest the hash reached (what ``Ingest.commit`` checks)."""
        with self._turn():
            return self._whole.digest() if self._whole.length == self.size else b""

    def _rewind(self, index: int) -> None:
        """Reset the whole hash to the checkpoint before chunk index; the caller holds the turn."""
        snap = self._checkpoints.get(index)
        if snap is None:
            # Resumed past this chunk without a checkpoint: start over.
            index, snap = 0, self._checkpoints[0]
        with self._cond:
            self._whole = _hashio.RunningSha256.from_snapshot(snap)
            self._checkpoints = {k: v for k, v in self._checkpoints.items() if k <= index}
            self._next = index
            self._pos = self.sums[index].chunk.start if index < len(self.sums) else self.size


def hash_file_range(algorithm: str, fd: int, offset: int, n: int, buf: memoryview) -> bytes:
    """Return the digest of n bytes of fd from offset, read through buf; b"" if the file is short."""
    h = ChunkHasher(algorithm)
    try:
        _hashio.feed_from_file(h.update, fd, offset, n, buf)
    except OSError:
        return b""
    return h.digest()


@dataclass
class PullStats:
    """What one pull's data path did with the bytes of its chunked blobs (summed when each blob ends)."""

    direct_bytes: int = 0  # written with O_DIRECT
    buffered_bytes: int = 0  # written through the page cache
    read_back_bytes: int = 0  # read back from work files to hash them (0 in the normal case)
    hedges: int = 0  # straggling chunks raced on a second connection (engine.hedge)
    hedges_won: int = 0  # of those, races the second connection won

    def add(self, assembler: BlobAssembler) -> None:
        self.direct_bytes += assembler.direct_bytes
        self.buffered_bytes += assembler.buffered_bytes
        self.read_back_bytes += assembler.read_back_bytes
