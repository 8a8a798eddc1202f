"""``BlobPull``: everything one pull knows about one blob while it is in flight.

A blob comes either as one stream (below the chunking threshold: hashed as
it is written, in byte order) or as chunks (a ``BlobAssembler`` puts them
together and keeps the in-order hash).  Either way its state lives here:
the chunk list, the work file, which bytes were already reported to the
progress callback (so re-fetched bytes never count twice), which chunks are
left, the resume record, and the blob's first error.

Imports core, store (the work file) and ``engine.assembler``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable

from .. import _hashio
from ..core.chunks import Chunk, ChunkSum
from ..core.digest import sha256_digest
from ..core.manifest import Layer
from ..errors import IncompletePullError, PullCancelledError
from ..store.ingest import Ingest
from .assembler import BlobAssembler
from .config import Source

__all__ = ["BlobPull", "chunks_id", "raise_failures"]


def chunks_id(sums: list[ChunkSum]) -> str:
    """Fingerprint a chunk list, so a resume record is only reused for the same tiling."""
    text = "\n".join(f"{s.digest or '-'} {s.chunk}" for s in sums)
    return str(sha256_digest(text.encode()))


class BlobPull:
    """One blob's pull state; its lock guards the counters, the assembler has its own.

    ``url`` is where the bytes come from (the registry's blob URL, or the
    chunksums' ``Content-Location``); ``chunk_url(i)`` is the URL for chunk
    i, the one place a chunk's source is chosen.
    """

    # How often the resume record is rewritten (per blob): a crash (not
    # Ctrl-C or SIGTERM, which write a last record) costs at most this much
    # re-fetching.  A record's fdatasync is also the pull's write-behind:
    # on a disk with a write-back cache (a VM's disk on its host's page
    # cache) the commit's fsync otherwise writes out all that is left, and
    # a pull at WAN speed waits for it (WAN S1, 8 streams: 9.2-9.35 s with a
    # record every 0.5 s, 9.4-10.4 s every 5 s).  Where the disk is the
    # limit, though, frequent syncs take its time from the pull's own writes
    # (4 GiB over loopback: 0.37-0.46 GB/s every 0.5 s, 0.47-0.57 every 5 s).
    # So records come every RECORD_EVERY_S while one takes at most
    # 1/RECORD_HEADROOM of the time since the last (the disk keeps up with
    # room to spare), else every RECORD_SLOW_S.  (A pace proportional to the
    # sync's duration would run away: a longer wait leaves more to sync.)
    RECORD_EVERY_S = 0.5
    RECORD_SLOW_S = 5.0
    RECORD_HEADROOM = 4.0

    def __init__(self, layer: Layer, source: Source, sums: list[ChunkSum], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.layer = layer
        self.key = str(layer.digest)
        self.source = source  # the origin: manifest, chunk list and digests come from it
        self.set_chunks(source.blob_url(layer.digest), sums)
        # Chunks a mirror sent without a chunk digest to check them by: the
        # whole-blob digest vouches for them, or they are fetched again from
        # the origin (then origin_only).
        self.unchecked: set[int] = set()
        self.origin_only = False
        self.mirrors: tuple[int, ...] = ()  # the pull's mirrors that may serve this blob (see engine.sources)
        # Where ``url`` redirected (a CDN's signed URL), learnt from the first
        # range and dropped when it refuses; None when it does not redirect.
        self.target: str | None = None
        # Whether the route is known: None (ask), "probing" (one range is
        # asking; the rest wait on _routed), "direct" or "redirected".
        self._route: str | None = None
        self._routed = threading.Event()
        self.ingest: Ingest | None = None
        self.assembler: BlobAssembler | None = None
        # One-stream blobs only: the running hash of the bytes before the stream's position.
        self.stream_hash: _hashio.RunningSha256 | None = None
        self.todo: list[int] = []  # chunks to fetch
        self.remaining = 0  # chunks queued and not yet finished
        self.resumed_bytes = 0
        self.repairs = 0
        self.single_stream = False  # the registry ignores Range: one stream fetches all
        self.ended = False  # retired: no pieces, hash or files of this blob remain in use
        self.counted_out = False  # no longer counted in flight by the driver
        self.error: BaseException | None = None  # the first failure; the blob is done for
        self.lock = threading.Lock()
        self._record_lock = threading.Lock()  # one resume-record writer at a time
        self._clock = clock
        self._saved_at = float("-inf")  # the first record is written as soon as a chunk is done
        self._records_slow = False  # the last record took too long for the fast pace (see RECORD_EVERY_S)

    @classmethod
    def one_stream(cls, layer: Layer, source: Source) -> BlobPull:
        """Return the state of a blob fetched in one GET from its origin, as one chunk without a digest."""
        return cls(layer, source, [ChunkSum(Chunk(0, layer.size - 1), None)] if layer.size else [])

    def from_mirror_unchecked(self, index: int) -> None:
        with self.lock:
            self.unchecked.add(index)

    def set_chunks(self, url: str, sums: list[ChunkSum]) -> None:
        """Set where the bytes come from and the chunk list (known once the chunksums answered)."""
        self.url = url
        self.sums = sums
        self._starts = [s.chunk.start for s in sums]
        self.reported = [0] * len(sums)  # bytes of each chunk already reported
        self.chunks_id = chunks_id(sums)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def chunk_url(self, index: int) -> str:
        """Return the URL chunk index is fetched from: the redirect target when there is one (a CDN), else the registry's."""
        return self.target or self.url

    # -- where the bytes come from: the registry, or where it redirects ---------

    def claim_route(self) -> bool:
        """Return True when the caller's range is to find out the route (it must call ``route_probe_ended``)."""
        with self.lock:
            if self._route is None:
                self._route = "probing"
                self._routed.clear()
                return True
            return False

    def wait_route(self, cancel: threading.Event | None) -> None:
        """Wait while another range finds out the route (bounded by its own timeouts); return early on cancel."""
        while not self._routed.wait(0.05):
            if cancel is not None and cancel.is_set():
                return

    def learn_route(self, asked: str, answered: str) -> None:
        """Record where a request for ``asked`` was answered (the headers are in) and release the waiting ranges."""
        with self.lock:
            if answered != asked:
                self.target, self._route = answered, "redirected"
            else:
                self._route = "direct"
        self._routed.set()

    def route_probe_ended(self) -> None:
        """The probing range ended: without an answer, the next range asks again."""
        with self.lock:
            if self._route == "probing":
                self._route = None
        self._routed.set()

    def forget_target(self, stale: str) -> None:
        """Drop a redirect target that refused (a signed URL expired): the next range asks the registry again."""
        with self.lock:
            if self.target == stale:
                self.target, self._route = None, None

    def open_chunks(self, ingest: Ingest, wake: Callable[[], None] | None) -> None:
        """Take the work file, resume from its record, and work out which chunks are left."""
        self.ingest = ingest
        rec = ingest.load_record(self.chunks_id, _hashio.SHA256_STATE_FORMAT)
        resumed = Ingest.record_done(rec, len(self.sums)) if rec else [False] * len(self.sums)
        state = bytes.fromhex(rec["hash_state"]) if rec and rec.get("hash_state") else None
        self.assembler = BlobAssembler(
            ingest.fd, self.layer.digest, self.layer.size, self.sums,
            direct_fd=ingest.direct_fd, hash_state=state, hashed=rec["hashed"] if rec else 0, wake=wake,
        )
        self.assembler.mark_done(resumed)
        done = self.assembler.done_chunks()
        self.todo = [i for i, ok in enumerate(done) if not ok]
        self.remaining = len(self.todo)
        for i, ok in enumerate(done):
            if ok:
                # Chunks a previous pull fetched count as done, but not as traffic.
                self.reported[i] = self.sums[i].chunk.size
        self.resumed_bytes = sum(self.reported)

    def credit(self, offset: int, n: int) -> int:
        """Count bytes [offset, offset + n) as arrived; return how many of them are new.

        Bytes fetched again (a retry, a repair, a restart) were counted the
        first time, so the sum of what this returns never exceeds the blob.
        """
        end = offset + n
        new = 0
        with self.lock:
            i = max(0, bisect.bisect_right(self._starts, offset) - 1)
            while i < len(self.sums) and self.sums[i].chunk.start < end:
                chunk = self.sums[i].chunk
                covered = min(end, chunk.end + 1) - chunk.start
                if covered > self.reported[i]:
                    new += covered - self.reported[i]
                    self.reported[i] = covered
                i += 1
        return new

    def finish_chunk(self) -> bool:
        """Count one queued chunk finished; return True for the blob's last one."""
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0

    def requeue(self, bad: list[int]) -> None:
        """Queue the chunks a repair fetches again; ranges again (a registry that ignores them sends us back to one stream)."""
        with self.lock:
            self.repairs += 1
            self.remaining = len(bad)
            self.single_stream = False

    def switch_to_one_stream(self) -> bool:
        """Mark the blob as fetched in one stream; return True for the caller that switched it."""
        with self.lock:
            first, self.single_stream = not self.single_stream, True
            return first

    def retire(self) -> bool:
        """Mark the blob ended; return True once, for the caller that must release its resources."""
        with self.lock:
            if self.ended:
                return False
            self.ended = True
            return True

    def save_record(self, *, force: bool = False) -> None:
        """Write the resume record (at most every ``RECORD_EVERY_S``, or ``RECORD_SLOW_S`` while records are slow, unless forced).

        The record's contents are taken under the blob's lock, but written
        (an fdatasync of the work file, then the record) outside it: every
        stream credits its bytes under that lock, and a sync that takes a
        while must not stop them all reading.  One writer at a time; a
        periodic save finding another under way skips.
        """
        if self.assembler is None or self.ingest is None:
            return
        if not self._record_lock.acquire(blocking=force):
            return
        try:
            now = self._clock()
            with self.lock:
                if not force and now - self._saved_at < (self.RECORD_SLOW_S if self._records_slow else self.RECORD_EVERY_S):
                    return
                since, self._saved_at = now - self._saved_at, now
            hashed, hash_state = self.assembler.hashed_prefix()
            self.ingest.save_record(self.chunks_id, self.assembler.done_chunks(), hashed, hash_state, _hashio.SHA256_STATE_FORMAT)
            took = self._clock() - now
            self._records_slow = took * self.RECORD_HEADROOM > min(since, self.RECORD_SLOW_S)
        finally:
            self._record_lock.release()


def raise_failures(blobs: list[BlobPull], total: int, *, cancelled: bool) -> None:
    """Raise what a pull's blobs ended with: the one failure, IncompletePullError for several, or PullCancelledError."""
    errors = {b.key: b.error for b in blobs if b.error is not None}
    if cancelled and not errors:
        raise PullCancelledError()
    real = [e for e in errors.values() if not isinstance(e, PullCancelledError)]
    if errors and not real:
        raise next(iter(errors.values()))
    if len(real) == 1:
        raise real[0]
    if real:
        raise IncompletePullError(f"{len(real)} of {total} blobs failed; first: {real[0]}", errors=errors) from real[0]
