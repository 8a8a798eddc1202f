"""The pull engine: one pull's worker pool, its blobs, chunks and commits.

``Registry.pull`` resolves the manifest and hands the blobs that are not
cached to a ``Puller``, which runs them on ``max_streams`` worker threads:

- a blob below the chunking threshold comes in one streamed GET, hashed as
  it is written;
- a larger blob's chunk list comes from the chunksums endpoint (or, when the
  registry has none, from splitting it ourselves); each chunk is a Range GET
  streamed into pieces of a bounded, page-aligned ``PiecePool``; each piece
  is written at its final offset in the blob's work file (``O_DIRECT`` when
  the file system allows it) and handed to the blob's in-order SHA-256
  (``chunks.BlobAssembler``), which releases it once hashed;
- the blob is committed only when it hashes to its digest.

Verification modes: ``blob`` hashes each byte once (the whole-blob digest;
chunk digests only locate a failure), ``chunks`` also checks every chunk's
digest as it arrives, re-fetching a bad chunk at once.

Bounded: threads (``max_streams``), memory (the piece pool plus one buffer
per worker for small blobs), open files (one work file per blob in flight,
closed when that blob is done), retries (``Backoff`` and
``MAX_INTEGRITY_ATTEMPTS``), waits (the read timeout and the stall monitor).

Imports manifest, cache, chunks, buffers, transport, progress, errors.
"""

from __future__ import annotations

import errno
import math
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ._hashio import RunningSha256
from .buffers import ALIGN, PiecePool, aligned_buffer
from .cache import Ingest
from .chunks import BlobAssembler, ChunkHasher, ChunkSum, parse_chunksums, split
from .digest import sha256_digest
from .errors import (
    ChunkpullError,
    IncompletePullError,
    InsufficientSpaceError,
    IntegrityError,
    PullCancelledError,
)
from .manifest import Layer
from .names import Ref
from .progress import BYTES, DONE, ERROR, RESUMED, VERIFYING, Progress, ProgressCallback
from .transport import RangeIgnoredError, ShortReadError, StreamMonitor, join_url

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Puller", "DEFAULT_CHUNK_SIZE", "MAX_INTEGRITY_ATTEMPTS"]

DEFAULT_CHUNK_SIZE = 8 << 20  # our own split when a registry has no chunksums
# A chunk whose bytes keep failing their digest is fetched at most this often,
# and a blob whose chunks fail after it completed is repaired at most this often.
MAX_INTEGRITY_ATTEMPTS = 3
MAX_REPAIRS = 2


class _BlobState:
    """One chunked blob's pull: its work file, assembler, resume record, completion."""

    # Rewrite the resume record at most this often (per blob): a crash then
    # costs at most this much re-fetching, and the writes stay negligible.
    RECORD_EVERY_S = 0.5

    def __init__(
        self,
        layer: Layer,
        url: str,
        sums: list[ChunkSum],
        ingest: Ingest,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layer = layer
        self.url = url
        self.ingest = ingest
        self.chunks_id = _chunks_id(sums)
        rec = ingest.load_record(self.chunks_id)
        resumed = Ingest.record_done(rec, len(sums)) if rec else [False] * len(sums)
        state = bytes.fromhex(rec["hash_state"]) if rec and rec.get("hash_state") else None
        self.assembler = BlobAssembler(
            ingest.fd, layer.digest, layer.size, sums, direct_fd=ingest.direct_fd, hash_state=state, hashed=rec["hashed"] if rec else 0, wake=wake
        )
        self.assembler.mark_done(resumed)
        self.todo = [i for i, ok in enumerate(self.assembler.done_chunks()) if not ok]
        self.resumed_bytes = sum(sums[i].chunk.size for i, ok in enumerate(self.assembler.done_chunks()) if ok)
        self.reported = [0] * len(sums)  # bytes of each chunk already reported
        self.remaining = len(self.todo)
        self.repairs = 0
        self.single_stream = False  # the registry ignores Range: one stream fetches all
        self.ended = False  # _end_blob ran: no pieces, hash or files of this blob remain in use
        self.lock = threading.Lock()
        self._clock = clock
        self._saved_at = clock()

    def save_record(self, *, force: bool = False) -> None:
        now = self._clock()
        with self.lock:
            if not force and now - self._saved_at < self.RECORD_EVERY_S:
                return
            self._saved_at = now
            hashed, hash_state = self.assembler.hashed_prefix()
            self.ingest.save_record(self.chunks_id, self.assembler.done_chunks(), hashed, hash_state)


def _chunks_id(sums: list[ChunkSum]) -> str:
    """Fingerprint a chunk list, so a record is only reused for the same tiling."""
    text = "\n".join(f"{s.digest or '-'} {s.chunk}" for s in sums)
    return str(sha256_digest(text.encode()))


class Puller:
    """One pull's worker pool and bookkeeping (used by Registry.pull)."""

    def __init__(self, registry: Registry, ref: Ref, todo: list[Layer], report: ProgressCallback, cancel: threading.Event) -> None:
        self.r = registry
        self.ref = ref
        self.todo = todo
        self.report = report
        self.cancel = cancel
        self.verify_tls = ref.verify_tls
        self.errors: dict[str, BaseException] = {}
        self.pending = 0
        self.cond = threading.Condition()
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=registry.max_streams, thread_name_prefix="chunkpull")
        self.monitor = StreamMonitor(stall_s=registry.stall_timeout_s)
        self.pieces: PiecePool | None = None  # made for the first chunked blob
        self.active_chunked = 0
        # One thread advances every chunked blob's in-order hash, so workers
        # never stop reading their sockets to hash other chunks' pieces.
        self.hashing: list[_BlobState] = []
        self.hash_wakeup = threading.Event()
        self.hasher: threading.Thread | None = None
        # Blobs in flight are capped at max_streams, so open files (two
        # descriptors per work file) and reserved pieces stay bounded however
        # many layers a model has.
        self.blobs_in_flight = 0
        self.ended_blobs: set[str] = set()
        self.open_states: set[_BlobState] = set()

    # -- driver ---------------------------------------------------------------

    def run(self) -> None:
        queue = deque(self.todo)
        try:
            while True:
                with self.cond:
                    while queue and self.blobs_in_flight < self.r.max_streams and not self.cancel.is_set():
                        layer = queue.popleft()
                        self.blobs_in_flight += 1
                        self.pending += 1
                        if layer.size < self.r.chunking_threshold or layer.size == 0:
                            self.pool.submit(self._guard, layer, self._fetch_whole, layer)
                        else:
                            self.pool.submit(self._guard, layer, self._start_chunked, layer)
                    if self.cancel.is_set():
                        queue.clear()
                    if not self.pending and not queue:
                        break
                    self.cond.wait(self.r.monitor_interval_s)
                self.monitor.check()  # outside the lock: it may shut sockets down
        except BaseException:
            self.cancel.set()  # e.g. Ctrl-C in the caller's thread: stop the workers too
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._stop_hasher()
            for state in list(self.open_states):  # blobs whose queued chunks were cancelled
                self._end_blob(state, keep=True)
            if self.pieces is not None:
                self.pieces.close()  # free the pool now, not at the next gc
                self.pieces = None
        # One directory fsync for every blob committed, before the manifest
        # (written by the caller) can name them.
        self.r.cache.sync_blobs_dir()
        if self.cancel.is_set() and not self.errors:
            raise PullCancelledError()
        self._raise_errors()

    def _blob_ended(self, layer: Layer) -> None:
        """Count a blob out of flight (once), so the driver can start the next."""
        with self.cond:
            key = str(layer.digest)
            if key in self.ended_blobs:
                return
            self.ended_blobs.add(key)
            self.blobs_in_flight -= 1
            self.cond.notify_all()

    def _hash_loop(self) -> None:
        """The hasher thread: drain every active blob's in-order hash as pieces arrive."""
        while True:
            self.hash_wakeup.wait(0.05)
            self.hash_wakeup.clear()
            with self.cond:
                blobs = list(self.hashing)
                if self.hasher is None:
                    return
            for state in blobs:
                try:
                    state.assembler.drain()
                except BaseException as err:  # noqa: BLE001 - fails that blob only
                    self._fail(state.layer, err)
                    with self.cond:
                        if state in self.hashing:
                            self.hashing.remove(state)
                    state.assembler.release_all()

    def _stop_hasher(self) -> None:
        with self.cond:
            t, self.hasher = self.hasher, None
        if t is not None:
            self.hash_wakeup.set()
            t.join()

    def _begin(self) -> None:
        with self.cond:
            self.pending += 1

    def _end(self) -> None:
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()

    def _guard(self, layer: Layer, fn, *args) -> None:
        """Run one unit of a blob's work; a failure fails that blob only."""
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
            self._fail(layer, err)
        finally:
            self._end()

    def _fail(self, layer: Layer, err: BaseException) -> None:
        key = str(layer.digest)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, InsufficientSpaceError):
            # A file system without fallocate ran out mid-write.
            free = shutil.disk_usage(self.r.cache.root).free
            err = InsufficientSpaceError(errno.ENOSPC, f"disk full in {self.r.cache.root} while writing {layer.digest.short()} ({free} bytes free)")
        with self.cond:
            first = key not in self.errors
            self.errors.setdefault(key, err)
        if first:
            self.report(Progress(key, layer.size, ERROR, error=err))

    def _raise_errors(self) -> None:
        if not self.errors:
            return
        errs = list(self.errors.values())
        real = [e for e in errs if not isinstance(e, PullCancelledError)]
        if not real:
            raise errs[0]
        if len(real) == 1:
            raise real[0]
        first = real[0]
        raise IncompletePullError(f"{len(real)} of {len(self.todo)} blobs failed; first: {first}", errors=self.errors) from first

    def _buffer(self) -> memoryview:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = aligned_buffer(self.r.buffer_size)
        return buf

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise PullCancelledError()

    # -- small blobs: one request ---------------------------------------------

    def _fetch_whole(self, layer: Layer) -> None:
        """Fetch a small blob in one streamed GET, hashing as it is written."""
        url = f"{self.ref.base_url}/blobs/{layer.digest}"
        key = str(layer.digest)
        try:
            self._fetch_whole_into(layer, url, key)
        finally:
            self._blob_ended(layer)

    def _fetch_whole_into(self, layer: Layer, url: str, key: str) -> None:
        reported = 0  # across attempts, so re-fetched bytes are not counted twice
        ingest = self.r.cache.ingest(layer.digest, layer.size, cancel=self.cancel)
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(key, layer.size, DONE))
            return
        try:
            for _ in range(MAX_INTEGRITY_ATTEMPTS):
                h = RunningSha256()  # hashes as it writes, in one pass over the bytes
                pos = 0

                def sink(offset: int, view: memoryview) -> None:
                    nonlocal reported, pos
                    self._check_cancel()
                    h.update_pwrite(ingest.fd, view, offset)
                    pos = offset + len(view)
                    if pos > reported:
                        self.report(Progress(key, layer.size, BYTES, pos - reported))
                        reported = pos

                def attempt() -> None:
                    nonlocal h, pos
                    if pos >= layer.size:
                        return
                    stream = self.monitor.stream(key)
                    try:
                        self.r.transport.read_range(url, pos, layer.size - 1, self._buffer(), sink, verify_tls=self.verify_tls, stream=stream)
                    except RangeIgnoredError:
                        # Cannot resume from a server that ignores Range: start over.
                        h, pos = RunningSha256(), 0
                        raise ShortReadError(f"{url}: cannot resume (Range ignored)", 0) from None
                    finally:
                        self.monitor.done(stream)

                # A cut connection resumes at pos: the stream hash has every byte before it.
                self.r.transport.retry(attempt, url, cancel=self.cancel, position=lambda: pos)
                got = h.digest()
                if got == layer.digest.raw and pos == layer.size:
                    break
            else:
                raise IntegrityError(
                    f"blob {layer.digest} from {url} hashes to sha256:{got.hex()} ({MAX_INTEGRITY_ATTEMPTS} attempts)",
                    digest=key, expected=key, got=f"sha256:{got.hex()}",
                )
            self.report(Progress(key, layer.size, VERIFYING))
            ingest.commit(got, sync_dir=False)  # run() syncs blobs/ once
        except BaseException:
            ingest.discard()  # a one-request blob has nothing worth resuming
            raise
        self.report(Progress(key, layer.size, DONE))

    # -- large blobs: chunks ---------------------------------------------------

    def _start_chunked(self, layer: Layer) -> None:
        try:
            started = self._open_chunked(layer)
        except BaseException:
            self._blob_ended(layer)
            raise
        if not started:
            self._blob_ended(layer)

    def _open_chunked(self, layer: Layer) -> bool:
        """Open a chunked blob's work file and queue its chunks; False if nothing is left to do."""
        url, sums = self._chunksums(layer)
        key = str(layer.digest)
        ingest = self.r.cache.ingest(layer.digest, layer.size, cancel=self.cancel, direct=self.r.io != "buffered")
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(key, layer.size, DONE))
            return False
        if self.r.io == "direct" and ingest.direct_fd < 0:
            ingest.close()
            raise ChunkpullError(f"io=direct, but {self.r.cache.root} does not support O_DIRECT; use io=auto or buffered")
        try:
            state = _BlobState(layer, url, sums, ingest, wake=self.hash_wakeup.set)
        except BaseException:
            ingest.close()
            raise
        self._hold_reserve(state, sums)
        if state.resumed_bytes:
            # Chunks a previous pull fetched count as done, but not as traffic.
            self.report(Progress(key, layer.size, RESUMED, state.resumed_bytes))
            for i, ok in enumerate(state.assembler.done_chunks()):
                if ok:
                    state.reported[i] = sums[i].chunk.size
        if not state.todo:
            self._begin()
            self.pool.submit(self._guard, layer, self._finish_chunked, state)
            return True
        for i in state.todo:
            self._begin()
            self.pool.submit(self._guard_chunk, state, i)
        return True

    def _chunksums(self, layer: Layer) -> tuple[str, list[ChunkSum]]:
        blob_url = f"{self.ref.base_url}/blobs/{layer.digest}"
        url = f"{self.ref.base_url}/chunksums/{layer.digest}"
        resp = self.r.transport.get(url, verify_tls=self.verify_tls, ok=(200, 404), cancel=self.cancel)
        if resp.status == 404:
            # No chunksums endpoint: split the blob ourselves; only the
            # whole-blob digest can verify it.
            return blob_url, [ChunkSum(c, None) for c in split(layer.size, DEFAULT_CHUNK_SIZE)]
        location = resp.headers.get("Content-Location", "").strip()
        if not location:
            location = blob_url
        elif location.startswith("/"):
            location = join_url(self.ref.base_url, location)
        elif not location.startswith(("http://", "https://")):
            raise ChunkpullError(f"registry sent an unusable Content-Location {location[:200]!r} for {layer.digest}: want an http(s) URL")
        # The bytes may come from another host (a CDN); no credentials are
        # ever sent, and requests drops auth headers on cross-host redirects.
        return location, parse_chunksums(resp.body, layer.size)

    def _guard_chunk(self, state: _BlobState, i: int) -> None:
        """Fetch chunk i; whoever finishes a blob's last chunk verifies and commits it."""
        key = str(state.layer.digest)
        try:
            if key not in self.errors and not state.single_stream:
                self._check_cancel()
                try:
                    self._fetch_chunk(state, i)
                    state.assembler.chunk_done(i)
                except RangeIgnoredError:
                    with state.lock:
                        first, state.single_stream = not state.single_stream, True
                    if first:
                        self._fetch_blob_stream(state)
                state.save_record()
        except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
            self._fail(state.layer, err)
            # Free the pieces parked behind the failed chunk: workers still
            # streaming this blob's chunks may be waiting for one.
            state.assembler.release_all()
        finally:
            try:
                with state.lock:
                    state.remaining -= 1
                    last = state.remaining == 0
                if last:
                    if key in self.errors:
                        self._end_blob(state, keep=True)  # the next pull resumes it
                    else:
                        self._finish_chunked(state)
            except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
                self._fail(state.layer, err)
            finally:
                self._end()

    def _fetch_chunk(self, state: _BlobState, i: int) -> None:
        """Stream chunk i through pool pieces into the assembler (retrying, resuming mid-chunk)."""
        s = state.assembler.sums[i]
        chunk = s.chunk
        key = str(state.layer.digest)
        check = self.r.verify == "chunks" and s.digest is not None
        # Pieces go out with O_DIRECT only if every one starts on a page.
        aligned = chunk.start % ALIGN == 0
        for _ in range(MAX_INTEGRITY_ATTEMPTS):
            hasher = ChunkHasher(s.digest.algorithm) if check else None
            pos = chunk.start
            held = None  # the piece being filled, until the assembler owns it

            def acquire() -> memoryview:
                nonlocal held
                held = self.pieces.acquire(priority=lambda: state.assembler.is_next(i), cancel=self.cancel)
                return held.view

            def sink(offset: int, view: memoryview) -> None:
                nonlocal pos, held
                piece, held = held, None
                if self.cancel.is_set():
                    piece.release()
                    raise PullCancelledError()
                if key in self.errors:
                    # The blob failed: its pieces would park for a hash that
                    # never comes and starve the pool (a deadlock).  Stop.
                    piece.release()
                    raise ChunkpullError(f"blob {key} failed; chunk {chunk} dropped")
                if hasher is not None:
                    hasher.update(view)  # before deliver: the hash may release the piece
                state.assembler.deliver(i, offset, view, piece.release, aligned=aligned)
                pos = offset + len(view)
                done = pos - chunk.start
                if done > state.reported[i]:
                    self.report(Progress(key, state.layer.size, BYTES, done - state.reported[i]))
                    state.reported[i] = done

            def attempt() -> None:
                try:
                    self.r.transport.read_range(state.url, pos, chunk.end, acquire, sink, verify_tls=self.verify_tls, stream=stream)
                finally:
                    if held is not None:
                        held.release()

            # A retried attempt resumes where the last one stopped: the bytes
            # before pos are written (and, in chunks mode, hashed) already.
            stream = self.monitor.stream((key, i))
            try:
                self.r.transport.retry(attempt, state.url, cancel=self.cancel, position=lambda: pos)
            finally:
                self.monitor.done(stream)
            if hasher is None or hasher.digest() == s.digest.raw:
                return
            state.assembler.reset_chunk(i)  # unhash the bad bytes before fetching again
        raise IntegrityError(
            f"chunk {chunk} of blob {state.layer.digest} failed its digest {s.digest} {MAX_INTEGRITY_ATTEMPTS} times",
            digest=key, expected=str(s.digest),
        )

    def _hold_reserve(self, state: _BlobState, sums: list[ChunkSum]) -> None:
        """Size the piece pool on first use and keep one reserve piece per blob in flight."""
        with self.cond:
            if self.pieces is None:
                piece = self.r.buffer_size
                chunk = max(s.chunk.size for s in sums)
                # Enough for every stream to park a whole chunk, within the budget.
                want = self.r.max_streams * (math.ceil(chunk / piece) + 1)
                budget = max(self.r.max_streams + 2, self.r.memory_budget // piece)
                self.pieces = PiecePool(max(4, min(want, budget)), piece)
            self.active_chunked += 1
            self.pieces.set_reserve(self.active_chunked)
            self.hashing.append(state)
            self.open_states.add(state)
            if self.hasher is None:
                self.hasher = threading.Thread(target=self._hash_loop, name="chunkpull-hash", daemon=True)
                self.hasher.start()
        state.assembler.on_advance = self.pieces.wake

    def _end_blob(self, state: _BlobState, *, keep: bool = False) -> None:
        """Retire a chunked blob once: stop its hash, free its pieces, count it out.

        With keep, also save its resume record and close its work file (the
        next pull resumes it); otherwise the caller commits or discards it.
        """
        with state.lock:
            if state.ended:
                return
            state.ended = True
        # close() waits for the hashing turn: nobody reads the work file
        # through the assembler once it returns, so the fd may be closed.
        state.assembler.close()
        with self.cond:
            if state in self.hashing:
                self.hashing.remove(state)
            self.open_states.discard(state)
            self.active_chunked -= 1
            if self.pieces is not None:
                self.pieces.set_reserve(max(1, self.active_chunked))
        if keep:
            try:
                state.save_record(force=True)
            finally:
                state.ingest.close()
        self._blob_ended(state.layer)

    def _fetch_blob_stream(self, state: _BlobState) -> None:
        """Fetch the whole blob in one stream (for registries that ignore Range)."""
        key = str(state.layer.digest)
        sums = state.assembler.sums
        j = 0  # first chunk not yet wholly reported

        def sink(offset: int, view: memoryview) -> None:
            nonlocal j
            self._check_cancel()
            state.assembler.write(offset, view)
            end = offset + len(view)
            with state.lock:
                while j < len(sums) and sums[j].chunk.start < end:
                    covered = min(end, sums[j].chunk.end + 1) - sums[j].chunk.start
                    if covered > state.reported[j]:
                        self.report(Progress(key, state.layer.size, BYTES, covered - state.reported[j]))
                        state.reported[j] = covered
                    if end <= sums[j].chunk.end:
                        break
                    j += 1

        stream = self.monitor.stream(key)
        try:
            # Retries restart at 0: a server that ignores Range cannot resume.
            def attempt() -> None:
                self.r.transport.read_range(state.url, 0, state.layer.size - 1, self._buffer(), sink, verify_tls=self.verify_tls, stream=stream)

            self.r.transport.retry(attempt, state.url, cancel=self.cancel)
        finally:
            self.monitor.done(stream)
        for i in range(len(sums)):
            state.assembler.chunk_done(i)

    def _finish_chunked(self, state: _BlobState) -> None:
        """Finish the whole-blob hash; commit, or re-fetch the chunks that fail their digests."""
        key = str(state.layer.digest)
        self.report(Progress(key, state.layer.size, VERIFYING))
        try:
            bad = state.assembler.finish()
            if bad and state.repairs == MAX_REPAIRS:
                raise IntegrityError(
                    f"blob {state.layer.digest}: chunks {bad[:5]} still fail their digests after {state.repairs} re-fetches",
                    digest=key,
                )
        except IntegrityError:
            self._end_blob(state)
            state.ingest.discard()  # nothing in it can be trusted any more
            raise
        except BaseException:
            self._end_blob(state, keep=True)
            raise
        if bad:
            state.repairs += 1
            with state.lock:
                state.remaining = len(bad)
                # Re-fetch with ranges again; a registry that ignores them
                # sends us back to one stream.
                state.single_stream = False
            for i in bad:
                self._begin()
                self.pool.submit(self._guard_chunk, state, i)
            return
        self._end_blob(state)
        try:
            state.ingest.commit(state.assembler.digest_if_verified(), sync_dir=False)  # run() syncs blobs/ once
        except BaseException:
            state.ingest.close()
            raise
        self.report(Progress(key, state.layer.size, DONE))
