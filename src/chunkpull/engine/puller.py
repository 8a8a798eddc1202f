"""The pull engine: one pull's worker pool, its blobs, chunks and commits.

``Registry.pull`` resolves the manifests and hands the blobs that are not
cached to a ``Puller`` as ``BlobJob``s (layer, origin, mirrors) with a
``PullConfig`` and the pull's ``Sources``; it runs them on ``max_streams``
worker threads:

- a blob below the chunking threshold comes in one GET, hashed as written;
- a larger blob's chunk list comes from the chunksums endpoint (or our own
  split); each chunk is a Range GET streamed into pieces of a bounded,
  page-aligned ``PiecePool``, written at its final offset in the work file
  (``O_DIRECT`` where allowed) and handed to the blob's in-order SHA-256
  (``BlobAssembler``), which releases it once hashed;
- a chunk comes from the origin or a mirror (``engine.sources``); mirror
  bytes are checked against the origin's digests, and a mirror that fails
  is demoted and the chunk fetched elsewhere;
- the blob is committed only when it hashes to its digest.

Every byte (a small blob, a chunk, a whole blob from a registry that
ignores Range) moves through one loop, ``RangeStreamer.stream``
(``engine.ranges``): it streams a range into a sink, credits new bytes to
progress once, and retries from where it was.  When the pull's end waits on
a chunk from the origin that arrives a few times slower than its peers, the
rest of that chunk is also asked for on another connection and the two race
(``engine.hedge``: every byte is taken once, in order, from whichever brings
it first; the loser is cut).

Bounded: threads (``max_streams`` and a quarter more), streams at once
(``engine.adaptive``, plus ``MAX_HEDGES`` hedges),
memory (the piece pool plus one buffer per worker for one-stream blobs),
open files (one work file per blob in flight, at most ``max_streams``),
retries (``Backoff``, ``MAX_INTEGRITY_ATTEMPTS``), waits (the read timeout
and the stall monitor).  Imports core, store, the backend and the engine.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .._hashio import RunningSha256
from ..core.progress import DONE, ERROR, RESUMED, VERIFYING, Progress, ProgressCallback
from ..errors import ChunkpullError, IntegrityError, PullCancelledError, RegistryError, TransportError
from ..store.cache import DiskCache
from ..store.ingest import as_disk_full
from .adaptive import Streams
from .assembler import ChunkHasher, PullStats
from .blob import BlobPull, raise_failures
from .chunklist import fetch_chunk_list
from .config import BlobJob, PullConfig, Source
from .hashing import HashThread
from .hedge import RangeRace
from .monitor import StreamMonitor
from .pieces import ALIGN, PiecePool, PoolPieces, ReusedBuffer, aligned_buffer
from .ranges import RangeStreamer
from .sources import Sources, why_demoted
from .transport import RangeIgnoredError, ShortReadError, Transport

__all__ = ["MAX_INTEGRITY_ATTEMPTS", "MAX_REPAIRS", "PullStats", "Puller"]

# A chunk whose bytes keep failing their digest is fetched at most this often,
# and a blob whose chunks fail after it completed is repaired at most this often.
MAX_INTEGRITY_ATTEMPTS = 3
MAX_REPAIRS = 2
MAX_RESOLVES = 4  # a chunk whose redirect target refuses it asks the registry again at most this often
MAX_HEDGES, HEDGE_ATTEMPTS = 2, 2  # hedges running at once (on top of the stream count); attempts per hedge
SMALL_BUFFER = 1 << 20  # a blob this small reads into a small buffer: a big one sits on huge pages (2 MiB resident per worker)


class Puller:
    """One pull's worker pool and bookkeeping: ``Puller(...).run()`` fetches, verifies and commits every blob."""

    def __init__(
        self,
        config: PullConfig,
        transport: Transport,
        cache: DiskCache,
        todo: list[BlobJob],
        report: ProgressCallback,
        cancel: threading.Event,
        sources: Sources | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.cache = cache
        self.todo = todo  # each blob with its origin (a bulk pull mixes repositories)
        self.sources = sources or Sources("origin", [])  # origin and mirrors, with what each delivered
        self.report = report
        self.cancel = cancel
        self.blobs: list[BlobPull] = []
        self.pending = 0  # units of work submitted and not finished
        self.cond = threading.Condition()
        self.local = threading.local()
        # More workers than streams (the gate bounds those): bookkeeping after a chunk never idles a stream.
        self.pool = ThreadPoolExecutor(max_workers=config.max_streams + max(2, config.max_streams // 4), thread_name_prefix="chunkpull")
        self.monitor = StreamMonitor(stall_s=config.stall_timeout_s, min_rate_bps=config.min_rate_bps)
        self.streams = Streams(config.max_streams, adaptive=config.adaptive, memory_budget=config.memory_budget, clock=time.monotonic, on_grow=self.monitor.settle)
        self.ranges = RangeStreamer(transport, self.monitor, self.streams, report, cancel)
        self.hedging = 0  # hedges running (at most MAX_HEDGES, on top of the stream count)
        self.pieces: PiecePool | None = None  # made for the first chunked blob
        # One thread advances every blob's in-order hash: workers never stop reading to hash.
        self.hasher = HashThread(self._hash_failed)
        # Blobs in flight are capped at max_streams: open files (two per work
        # file) and reserved pieces stay bounded however many layers there are.
        self.blobs_in_flight = 0
        self.open_chunked: set[BlobPull] = set()
        self.stats = PullStats()

    # -- driver ---------------------------------------------------------------

    def run(self) -> None:
        """Pull every blob; raise the failure(s) after every worker has stopped.

        Raises:
            IntegrityError, RegistryError, TransportError, ... (one blob
            failed), IncompletePullError (several failed),
            PullCancelledError, InsufficientSpaceError.
        """
        queue = deque(self.todo)
        # The monitor has a thread of its own: it must go on cutting stalled
        # (and, once cancelled, all) reads while this thread waits for the
        # workers, also when Ctrl-C has broken it out of the loop below.
        watching = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(watching,), name="chunkpull-monitor", daemon=True)
        watcher.start()
        try:
            while True:
                with self.cond:
                    while queue and self.blobs_in_flight < self.config.max_streams and not self.cancel.is_set():
                        self._start(queue.popleft())
                    if self.cancel.is_set():
                        queue.clear()
                    if not self.pending and not queue:
                        break
                    self.cond.wait(self.config.monitor_interval_s)
        except BaseException:
            self.cancel.set()  # e.g. Ctrl-C in the caller's thread: stop the workers too
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            watching.set()
            watcher.join()
            self.hasher.stop()
            for blob in list(self.open_chunked):  # blobs whose queued chunks were cancelled
                self._end_blob(blob, keep=True)
            if self.pieces is not None:
                self.pieces.close()  # free the pool now, not at the next gc
                self.pieces = None
        # One directory fsync for every blob committed, before the manifest
        # (written by the caller) can name them.
        self.cache.sync_blobs_dir()
        raise_failures(self.blobs, len(self.todo), cancelled=self.cancel.is_set())

    def _watch(self, stop: threading.Event) -> None:
        """The monitor thread: a few times a second, cut streams that must not go on and let the stream count adapt."""
        while not stop.wait(self.config.monitor_interval_s):
            self.monitor.tail = not self.streams.gate.waiting  # the end waits on the streams in flight
            if self.cancel.is_set():
                self.streams.gate.wake_all()  # chunks waiting for a stream leave now, not at their next poll
            self.monitor.check()
            self.streams.tick()

    def _start(self, job: BlobJob) -> None:
        """Count a blob in flight and queue its first unit of work; called with the lock held."""
        layer, source = job.layer, job.source
        self.blobs_in_flight += 1
        if layer.size < self.config.chunking_threshold or layer.size == 0:
            blob = BlobPull.one_stream(layer, source)
            work = self._fetch_one_stream
        else:
            blob = BlobPull(layer, source, [])
            work = self._open_chunked
        blob.mirrors = job.mirrors
        self.blobs.append(blob)
        self._submit(blob, work, blob)

    def _submit(self, blob: BlobPull, fn: Callable, *args) -> None:
        with self.cond:
            self.pending += 1
        self.pool.submit(self._guard, blob, fn, *args)

    def _guard(self, blob: BlobPull, fn: Callable, *args) -> None:
        """Run one unit of a blob's work; a failure fails that blob only."""
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
            self._fail(blob, err)
        finally:
            with self.cond:
                self.pending -= 1
                self.cond.notify_all()

    def _count_out(self, blob: BlobPull) -> None:
        """Count a blob out of flight (once), so the driver can start the next."""
        with self.cond:
            if blob.counted_out:
                return
            blob.counted_out = True
            self.blobs_in_flight -= 1
            self.cond.notify_all()

    def _fail(self, blob: BlobPull, err: BaseException) -> None:
        err = as_disk_full(err, self.cache.root, blob.layer.digest.short())
        with self.cond:
            first = blob.error is None
            if first:
                blob.error = err
        if first:
            self.report(Progress(blob.key, blob.layer.size, ERROR, error=err))

    def _check(self, blob: BlobPull) -> None:
        if self.cancel.is_set():
            raise PullCancelledError()
        if blob.failed:
            # Pieces of a failed blob would park for a hash that never comes
            # and starve the pool: stop streaming it.
            raise ChunkpullError(f"blob {blob.key} failed; stream dropped")

    def _buffer(self, need: int | None = None) -> ReusedBuffer:
        small = need is not None and need <= SMALL_BUFFER
        if (buf := getattr(self.local, "small" if small else "buf", None)) is None:
            setattr(self.local, "small" if small else "buf", buf := ReusedBuffer(aligned_buffer(SMALL_BUFFER if small else self.config.buffer_size)))
        return buf

    # -- one-stream blobs -------------------------------------------------------

    def _fetch_one_stream(self, blob: BlobPull) -> None:
        """Fetch a small blob in one streamed GET, hashing as it is written; commit it."""
        try:
            self._fetch_one_stream_into(blob)
        finally:
            self._count_out(blob)

    def _fetch_one_stream_into(self, blob: BlobPull) -> None:
        layer = blob.layer
        ingest = self.cache.ingest(layer.digest, layer.size, cancel=self.cancel)
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(blob.key, layer.size, DONE))
            return
        blob.ingest = ingest

        def restart() -> None:
            blob.stream_hash = RunningSha256()

        def sink(offset: int, view: memoryview) -> None:
            self._check(blob)
            blob.stream_hash.update_pwrite(ingest.fd, view, offset)  # hash and write in one pass

        self.sources.choose()  # small blobs come from the origin; counted in its figures
        started, ok = time.monotonic(), False
        try:
            for _ in range(MAX_INTEGRITY_ATTEMPTS):
                restart()
                with self.streams.slot(self.cancel):
                    self.ranges.stream(blob, blob.url, 0, layer.size - 1, self._buffer(layer.size), sink, label=blob.key, restart=restart)
                got = blob.stream_hash.digest()
                if got == layer.digest.raw and blob.stream_hash.length == layer.size:
                    break
            else:
                raise IntegrityError(
                    f"blob {layer.digest} from {blob.url} hashes to sha256:{got.hex()} ({MAX_INTEGRITY_ATTEMPTS} attempts)",
                    digest=blob.key, expected=blob.key, got=f"sha256:{got.hex()}",
                )
            self.report(Progress(blob.key, layer.size, VERIFYING))
            ingest.commit(got, sync_dir=False)  # run() syncs blobs/ once
            ok = True
        except BaseException:
            ingest.discard()  # a one-request blob has nothing worth resuming
            raise
        finally:
            self.sources.finished(0, busy_s=time.monotonic() - started, nbytes=layer.size if ok else 0, ok=ok)
        self.report(Progress(blob.key, layer.size, DONE))

    # -- chunked blobs ------------------------------------------------------------

    def _open_chunked(self, blob: BlobPull) -> None:
        """Fetch the chunk list, open the work file (resuming) and queue the chunks left."""
        started = False
        try:
            started = self._open_chunked_work(blob)
        finally:
            if not started:  # failed, or nothing left to fetch here
                self._count_out(blob)

    def _open_chunked_work(self, blob: BlobPull) -> bool:
        layer = blob.layer
        blob.set_chunks(*fetch_chunk_list(self.transport, blob.source, layer, self.config.split_chunk_size, self.cancel))
        ingest = self.cache.ingest(layer.digest, layer.size, cancel=self.cancel, direct=self.config.io != "buffered")
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(blob.key, layer.size, DONE))
            return False
        if self.config.io == "direct" and ingest.direct_fd < 0:
            ingest.close()
            raise ChunkpullError(f"io=direct, but {self.cache.root} does not support O_DIRECT; use io=auto or buffered")
        try:
            blob.open_chunks(ingest, wake=self.hasher.wakeup.set)
        except BaseException:
            ingest.close()
            raise
        self._hold_reserve(blob)
        if blob.resumed_bytes:
            self.report(Progress(blob.key, layer.size, RESUMED, blob.resumed_bytes))
        if not blob.todo:
            self._submit(blob, self._finish_chunked, blob)
        for i in blob.todo:
            self._submit(blob, self._run_chunk, blob, i)
        return True

    def _run_chunk(self, blob: BlobPull, i: int) -> None:
        """Fetch chunk i; whoever finishes a blob's last chunk verifies and commits it."""
        try:
            if not blob.failed and not blob.single_stream:
                self._check(blob)
                try:
                    with self.streams.slot(self.cancel):
                        self._check(blob)  # it may have failed while this waited for a stream
                        self._fetch_chunk(blob, i)
                    blob.assembler.chunk_done(i)
                except RangeIgnoredError:
                    if blob.switch_to_one_stream():
                        self._fetch_whole_chunked(blob)
                blob.save_record()
        except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
            self._fail(blob, err)
            # Free the pieces parked behind the failed chunk: workers still
            # streaming this blob's chunks may be waiting for one.
            blob.assembler.release_all()
        finally:
            try:
                if blob.finish_chunk():
                    if blob.failed:
                        self._end_blob(blob, keep=True)  # the next pull resumes it
                    else:
                        self._finish_chunked(blob)
            except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
                self._fail(blob, err)

    def _fetch_chunk(self, blob: BlobPull, i: int) -> None:
        """Stream chunk i through pool pieces into the assembler from the origin or a mirror, checking digests as needed.

        Bytes from a mirror are always checked against the origin's chunk
        digest (or, without one, marked for the whole-blob check); a mirror
        that fails in any way is demoted and the chunk fetched again elsewhere.
        """
        s = blob.sums[i]
        chunk = s.chunk
        # Pieces go out with O_DIRECT only if every one starts on a page.
        aligned = chunk.start % ALIGN == 0
        pieces = PoolPieces(self.pieces, lambda: blob.assembler.is_next(i), self.cancel)
        failures = 0
        while True:
            src = self.sources.choose(() if blob.origin_only else blob.mirrors)
            check = s.digest is not None and (src or self.config.verify == "chunks")
            hasher = ChunkHasher(s.digest.algorithm) if check else None
            got = 0

            def accept(offset: int, view: memoryview, release: Callable[[], None], piece_aligned: bool) -> None:
                nonlocal got
                try:
                    self._check(blob)
                except BaseException:
                    release()
                    raise
                if hasher is not None:
                    hasher.update(view)  # before deliver: the hash may release the piece
                got += len(view)
                blob.assembler.deliver(i, offset, view, release, aligned=piece_aligned)

            def sink(offset: int, view: memoryview) -> None:
                accept(offset, view, pieces.take().release, aligned)

            active: list[float] = []  # reading time per attempt: the source's rate is measured on it
            try:
                if src:
                    mirror = self.sources.source_for(src, blob.source)
                    # One attempt: a mirror that fails is dropped, not retried.
                    self.ranges.stream(blob, mirror.blob_url(blob.layer.digest), chunk.start, chunk.end, pieces, sink,
                                 label=(blob.key, i), source=mirror, attempts=1, active=active)
                else:
                    self._fetch_from_origin(blob, i, pieces, RangeRace(chunk.start, chunk.end, accept), active)
            except (RegistryError, TransportError, RangeIgnoredError, ShortReadError) as err:
                self.sources.finished(src, busy_s=sum(active), nbytes=0, ok=False)
                if not src:
                    raise
                self.sources.demote(src, why_demoted(err))
                blob.assembler.reset_chunk(i)
                continue
            except BaseException:
                self.sources.finished(src, busy_s=sum(active), nbytes=0, ok=False)
                raise
            if hasher is None or hasher.digest() == s.digest.raw:
                self.sources.finished(src, busy_s=sum(active), nbytes=got, ok=True)
                if src and s.digest is None:
                    blob.from_mirror_unchecked(i)
                return
            self.sources.finished(src, busy_s=sum(active), nbytes=0, ok=False)
            blob.assembler.reset_chunk(i)  # unhash the bad bytes before fetching again
            if src:
                self.sources.demote(src, "sent bytes that fail the origin's chunk digest", refused=True)
                continue
            failures += 1
            if failures >= MAX_INTEGRITY_ATTEMPTS:
                raise IntegrityError(
                    f"chunk {chunk} of blob {blob.layer.digest} failed its digest {s.digest} {MAX_INTEGRITY_ATTEMPTS} times",
                    digest=blob.key, expected=str(s.digest),
                )

    def _fetch_from_origin(self, blob: BlobPull, i: int, pieces: PoolPieces, race: RangeRace, active: list[float]) -> None:
        """Stream chunk i from the origin, or from where it redirects (a CDN), asking again when the target refuses.

        The stream owns ``race``: a hedge the monitor starts races it, and
        the race closes when this returns or raises.
        """
        try:
            self._fetch_from_origin_racing(blob, i, pieces, race, active)
        finally:
            race.close()

    def _fetch_from_origin_racing(self, blob: BlobPull, i: int, pieces: PoolPieces, race: RangeRace, active: list[float]) -> None:
        chunk = blob.sums[i].chunk
        me = race.racer()
        sink = race.sink_for(me, pieces, aligned=chunk.start % ALIGN == 0)
        refusals = 0
        while True:
            # One range finds out whether the registry redirects (a CDN);
            # the blob's other ranges wait for its answer, then go there.
            probing = blob.claim_route()
            if not probing:
                blob.wait_route(self.cancel)
            url = blob.chunk_url(i)
            try:
                self.ranges.stream(blob, url, chunk.start, chunk.end, pieces, sink, label=(blob.key, i), active=active,
                                   on_answer=(lambda where, asked=url: blob.learn_route(asked, where)) if probing else None,
                                   race=(race, me), hedge=lambda: self._start_hedge(blob, i, race))
                return
            except RegistryError as err:
                # A redirect target (a CDN's signed URL) refused: it expired
                # or was revoked, so ask the registry again, a few times.
                if err.status not in (401, 403, 410) or (url != blob.target and err.url == url):
                    raise
                refusals += 1
                if refusals >= MAX_RESOLVES:
                    raise TransportError(f"request error {blob.url}: the redirect target keeps refusing chunk {i} ({refusals} times)") from err
                blob.forget_target(url)
            except TransportError as err:
                # Say which bytes of which blob could not be had; the cause names the registry.
                raise TransportError(f"chunk {i} (bytes {chunk}) of blob {blob.key}: {err}") from err
            finally:
                if probing:
                    blob.route_probe_ended()

    def _start_hedge(self, blob: BlobPull, i: int, race: RangeRace) -> bool:
        """Race the rest of chunk i on another connection (called by the monitor); False if no hedge may start now."""
        with self.cond:
            if race.done or blob.failed or self.cancel.is_set() or self.hedging >= MAX_HEDGES:
                return False
            self.hedging += 1
            self.stats.hedges += 1
        try:
            self._submit(blob, self._hedge, blob, i, race)
        except RuntimeError:  # the worker pool is shutting down: the pull is ending anyway
            with self.cond:
                self.hedging -= 1
                self.stats.hedges -= 1
                self.pending -= 1
            return False
        return True

    def _hedge(self, blob: BlobPull, i: int, race: RangeRace) -> None:
        """Stream chunk i from the race's cursor to its end into the race, until one racer has brought it all."""
        assert self.pieces is not None
        me = race.racer()
        # race.over, not the pull's cancel: a hedge waiting for a piece gives up when the race ends.
        pieces = PoolPieces(self.pieces, lambda: blob.assembler.is_next(i), race.over)
        sink = race.sink_for(me, pieces, aligned=blob.sums[i].chunk.start % ALIGN == 0)
        try:
            self.ranges.stream(blob, blob.chunk_url(i), race.cursor, race.end, pieces, sink, label=(blob.key, i, "hedge"),
                               race=(race, me), attempts=HEDGE_ATTEMPTS)
        except Exception:  # noqa: BLE001 - the owner still streams the range and reports what fails
            pass  # a hedge that fails costs its bytes only
        finally:
            with self.cond:
                self.hedging -= 1
                self.stats.hedges_won += race.winner is me

    def _fetch_whole_chunked(self, blob: BlobPull) -> None:
        """Fetch a chunked blob in one stream (for registries that ignore Range)."""

        def sink(offset: int, view: memoryview) -> None:
            self._check(blob)
            blob.assembler.write(offset, view)

        self.ranges.stream(blob, blob.url, 0, blob.layer.size - 1, self._buffer(), sink, label=blob.key, resume=False)
        for i in range(len(blob.sums)):
            blob.assembler.chunk_done(i)

    def _hold_reserve(self, blob: BlobPull) -> None:
        """Size the piece pool on first use and keep one reserve piece per chunked blob in flight."""
        with self.cond:
            if self.pieces is None:
                chunk = max(s.chunk.size for s in blob.sums)
                self.pieces = PiecePool.sized_for(self.config.max_streams, chunk, self.config.buffer_size, self.config.memory_budget)
                self.streams.attach(self.pieces, chunk)
                self.pieces.reclaim = self.hasher.spill
            self.open_chunked.add(blob)
            self.pieces.set_reserve(len(self.open_chunked))
        self.hasher.add(blob)
        blob.assembler.on_advance, blob.assembler.park_ahead = self.pieces.wake, self.pieces.chunks_ahead

    def _hash_failed(self, blob: BlobPull, err: BaseException) -> None:
        self._fail(blob, err)
        blob.assembler.release_all()

    def _end_blob(self, blob: BlobPull, *, keep: bool = False) -> None:
        """Retire a chunked blob once: stop its hash, free its pieces, count it out.

        With keep, also save its resume record and close its work file (the
        next pull resumes it); otherwise the caller commits or discards it.
        """
        if not blob.retire():
            return
        # close() waits for the hashing turn: nobody reads the work file
        # through the assembler once it returns, so the fd may be closed.
        blob.assembler.close()
        self.hasher.remove(blob)
        with self.cond:
            self.stats.add(blob.assembler)
            self.open_chunked.discard(blob)
            if self.pieces is not None:
                self.pieces.set_reserve(max(1, len(self.open_chunked)))
        if keep:
            try:
                blob.save_record(force=True)
            finally:
                blob.ingest.close()
        self._count_out(blob)

    def _finish_chunked(self, blob: BlobPull) -> None:
        """Finish the whole-blob hash; commit, or re-fetch the chunks that fail their digests."""
        layer = blob.layer
        self.report(Progress(blob.key, layer.size, VERIFYING))
        try:
            bad = blob.assembler.finish(suspects=blob.unchecked if not blob.origin_only else ())
        except IntegrityError:
            # The chunk digests agree with the bytes but not with the layer
            # digest: nothing in the work file can be trusted any more.
            self._end_blob(blob)
            blob.ingest.discard()
            raise
        except BaseException:
            self._end_blob(blob, keep=True)
            raise
        if bad and blob.unchecked and not blob.origin_only:
            # Mirror bytes nothing could check per chunk failed the blob's
            # digest: fetch them again from the origin, the trust anchor.
            for src in blob.mirrors:
                self.sources.demote(src, "sent bytes that fail the origin's blob digest", refused=True)
            blob.origin_only = True
        if bad and blob.repairs == MAX_REPAIRS:
            # The other chunks verified: keep them (the record no longer
            # marks the bad ones done), so a later pull fetches only these.
            self._end_blob(blob, keep=True)
            raise IntegrityError(
                f"blob {layer.digest}: chunks {bad[:5]} still fail their digests after {blob.repairs} re-fetches from {blob.url}",
                digest=blob.key,
            )
        if bad:
            blob.requeue(bad)
            for i in bad:
                self._submit(blob, self._run_chunk, blob, i)
            return
        self._end_blob(blob)
        try:
            blob.ingest.commit(blob.assembler.digest_if_verified(), sync_dir=False)  # run() syncs blobs/ once
        except BaseException:
            blob.ingest.close()
            raise
        self.report(Progress(blob.key, layer.size, DONE))
