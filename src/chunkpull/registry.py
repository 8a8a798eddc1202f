"""The registry client: resolve manifests, pull blobs chunk by chunk, push, unlink.

``Registry.pull`` is the product.  It resolves the manifest, announces
every blob to the progress callback, and then, on a pool of ``max_streams``
worker threads:

- blobs below the chunking threshold come in one streamed GET, hashed as
  they are written;
- larger blobs ask the registry for their chunksums and fetch the chunks
  with Range requests, each written at its final offset in the blob's work
  file; the whole-blob SHA-256 runs in order over the written prefix while
  later chunks still arrive (``chunks.BlobAssembler``);
- a blob is committed (renamed to its digest's name) only after its bytes
  hash to its digest; the manifest is written last, once every blob is in.

Verification modes (``verify``):

``blob`` (default)
    one SHA-256 pass per byte: the whole-blob hash.  Chunk digests are
    checked only after a mismatch, to find which chunks to fetch again.
``chunks``
    two passes: every chunk's digest is checked as it streams in (a bad
    chunk is re-fetched at once, before the blob completes), and the
    whole-blob hash still decides the commit.

Memory is bounded: each worker owns one buffer of ``buffer_size`` bytes and
reads into it; nothing is allocated per read.  Open files are bounded: one
per blob in flight, closed when the blob is done.

Imports cache, chunks, transport, progress, names, digest, errors.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _env
from .cache import DiskCache, Ingest
from .chunks import BlobAssembler, ChunkHasher, ChunkSum, parse_chunksums, split
from .digest import Digest, sha256_digest
from .errors import (
    ChunkpullError,
    IncompletePullError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidDigestError,
    InvalidManifestError,
    ModelNotFoundError,
    PullCancelledError,
    RegistryError,
    TransportError,
)
from .names import DEFAULT_MASK, Name, Ref, parse_ref
from .progress import BYTES, CACHED, DONE, ERROR, RESUMED, START, VERIFYING, Progress, ProgressCallback
from .transport import Backoff, RangeIgnoredError, StreamMonitor, Transport

__all__ = [
    "Registry",
    "Manifest",
    "Layer",
    "DEFAULT_CHUNKING_THRESHOLD",
    "DEFAULT_CHUNK_SIZE",
    "VERIFY_MODES",
]

DEFAULT_CHUNKING_THRESHOLD = 64 << 20  # Ollama's: smaller layers come in one request
DEFAULT_CHUNK_SIZE = 8 << 20  # our own split when a registry has no chunksums
DEFAULT_BUFFER_SIZE = 2 << 20  # per worker; see README "Tuning"
VERIFY_MODES = ("blob", "chunks")
DEFAULT_STALL_TIMEOUT_S = 5.0
# Real manifests are a few kB; a larger answer is refused rather than buffered.
MAX_MANIFEST_BYTES = 4 << 20
# A chunk whose bytes keep failing their digest is fetched at most this often.
MAX_INTEGRITY_ATTEMPTS = 3

MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True, slots=True)
class Layer:
    digest: Digest
    size: int
    media_type: str = ""


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; ``data`` is its exact bytes and ``digest`` their sha256."""

    data: bytes
    digest: Digest
    layers: tuple[Layer, ...]
    config: Layer | None = None

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse manifest bytes.

        Raises:
            InvalidManifestError: empty, ``null``, not JSON, no layers, a null
                layer, or a layer without a valid digest and size.
        """
        try:
            doc = json.loads(data) if data.strip() else None
        except ValueError as err:
            raise InvalidManifestError(f"invalid manifest: not JSON: {err}") from None
        if not isinstance(doc, dict):
            raise InvalidManifestError("invalid manifest: empty or not a JSON object")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise InvalidManifestError("invalid manifest: no layers")
        layers = tuple(_parse_layer(x, f"layer {i}") for i, x in enumerate(raw_layers))
        config = None
        if doc.get("config") is not None:
            config = _parse_layer(doc["config"], "config")
        return cls(bytes(data), sha256_digest(data), layers, config)

    def blobs(self) -> list[Layer]:
        """Return every blob the manifest references (layers, then config), without duplicates."""
        seen: set[Digest] = set()
        out = []
        for layer in (*self.layers, *([self.config] if self.config else [])):
            if layer.digest not in seen:
                seen.add(layer.digest)
                out.append(layer)
        return out

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs())


def _parse_layer(x: object, what: str) -> Layer:
    if not isinstance(x, dict):
        raise InvalidManifestError(f"invalid manifest: {what} is null or not an object")
    try:
        digest = Digest.parse(x.get("digest"))
    except InvalidDigestError as err:
        raise InvalidManifestError(f"invalid manifest: {what}: {err}") from None
    size = x.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifestError(f"invalid manifest: {what}: size must be a non-negative integer")
    return Layer(digest, size, str(x.get("mediaType") or ""))


class Registry:
    """A client for Ollama-style registries that pulls into a DiskCache.

    Arguments default to None, meaning the documented default:

    cache
        the models directory (``DiskCache.open()``: ``$OLLAMA_MODELS`` or ``~/.ollama/models``).
    session_factory
        ``f(max_streams, verify_tls=...) -> requests.Session``; the test seam.
    max_streams
        concurrent connections per pull (``$OLLAMA_REGISTRY_MAXSTREAMS``, else 8).
    chunking_threshold
        blobs smaller than this come in one request (64 MiB).
    mask
        completes short names (``registry.ollama.ai/library/_:latest``).
    verify
        ``"blob"`` (default) or ``"chunks"``; see the module docstring.

    One Registry may serve many pulls at once from different threads; each
    pull has its own pool of workers.
    """

    def __init__(
        self,
        cache: DiskCache | None = None,
        *,
        session_factory: Callable | None = None,
        max_streams: int | None = None,
        chunking_threshold: int | None = None,
        mask: str | None = None,
        verify: str | None = None,
        buffer_size: int | None = None,
        backoff: Backoff | None = None,
        timeout_s: tuple[float, float] | None = None,
        stall_timeout_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cache = cache if cache is not None else DiskCache.open()
        self.max_streams = max_streams if max_streams is not None else _env.max_streams()
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.chunking_threshold = DEFAULT_CHUNKING_THRESHOLD if chunking_threshold is None else chunking_threshold
        self.mask = mask or DEFAULT_MASK
        self.verify = verify or "blob"
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        self.buffer_size = buffer_size or DEFAULT_BUFFER_SIZE
        # A stream with no byte for this long is cut and its range retried
        # elsewhere; the socket read timeout (timeout_s) is the hard bound.
        self.stall_timeout_s = DEFAULT_STALL_TIMEOUT_S if stall_timeout_s is None else stall_timeout_s
        self.monitor_interval_s = 0.25
        kwargs = {"timeout_s": timeout_s} if timeout_s else {}
        self.transport = Transport(max_streams=self.max_streams, session_factory=session_factory, backoff=backoff, sleep=sleep, **kwargs)

    @classmethod
    def from_env(cls, **overrides) -> Registry:
        """Return a Registry configured from the environment (``OLLAMA_MODELS``, ``OLLAMA_REGISTRY_MAXSTREAMS``)."""
        return cls(**overrides)

    def close(self) -> None:
        self.transport.close()

    # -- names and manifests -------------------------------------------------

    def parse(self, name: str) -> Ref:
        """Parse an extended name, completing it from the mask.

        Raises:
            InvalidNameError.
        """
        return parse_ref(name, self.mask)

    def resolve(self, name: str, *, cancel: threading.Event | None = None) -> Manifest:
        """Fetch and parse the named manifest from its registry (by tag or ``@digest``).

        Raises:
            InvalidNameError, ModelNotFoundError, InvalidManifestError,
            IntegrityError (manifest bytes differ from ``@digest``),
            RegistryError, TransportError.
        """
        return self._resolve(self.parse(name), name, cancel)

    def _resolve(self, ref: Ref, text: str, cancel: threading.Event | None) -> Manifest:
        if ref.digest is not None:
            url = f"{ref.base_url}/blobs/{ref.digest}"
        else:
            url = f"{ref.base_url}/manifests/{ref.name.tag}"
        headers = {"Accept": MEDIA_TYPE_MANIFEST}
        try:
            resp = self.transport.get(url, verify_tls=ref.verify_tls, headers=headers, max_bytes=MAX_MANIFEST_BYTES, cancel=cancel)
        except RegistryError as err:
            if err.code.upper() == "MANIFEST_UNKNOWN" or (ref.digest is not None and err.status == 404):
                raise ModelNotFoundError(text) from err
            raise
        m = Manifest.parse(resp.body)
        if ref.digest is not None and m.digest != ref.digest:
            raise IntegrityError(f"manifest from {url} hashes to {m.digest}, not {ref.digest}", digest=str(ref.digest), expected=str(ref.digest), got=str(m.digest))
        return m

    def resolve_local(self, name: str) -> Manifest:
        """Return the manifest of a model in the local cache.

        Raises:
            InvalidNameError, ModelNotFoundError, InvalidManifestError.
        """
        ref = self.parse(name)
        try:
            return Manifest.parse(self.cache.manifest_bytes(ref.name))
        except ModelNotFoundError:
            raise ModelNotFoundError(name) from None

    def list_local(self) -> list[tuple[Name, Manifest]]:
        """Return every local model whose manifest parses, sorted by name."""
        out = []
        for name, path in self.cache.links():
            try:
                out.append((name, Manifest.parse(path.read_bytes())))
            except (InvalidManifestError, OSError):
                continue
        return sorted(out, key=lambda x: str(x[0]).lower())

    def unlink(self, name: str) -> bool:
        """Remove the model's manifest and prune blobs no manifest references; False if absent.

        Raises:
            InvalidNameError.
        """
        ref = self.parse(name)
        removed = self.cache.unlink(ref.name)
        if removed:
            self.prune()
        return removed

    def prune(self) -> list[Digest]:
        """Remove blobs that no local manifest references (skipped while a pull runs)."""
        keep: set[Digest] = set()
        for _name, m in self.list_local():
            keep.add(m.digest)
            keep.update(b.digest for b in m.blobs())
        return self.cache.prune(keep)

    # -- pull ----------------------------------------------------------------

    def pull(self, name: str, *, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> Manifest:
        """Pull the named model into the cache and return its manifest.

        ``progress`` gets a ``start`` or ``cached`` event for every blob before
        any byte moves, then ``bytes`` deltas, ``verifying``, ``done`` (or
        ``error``); it is called from worker threads, must be thread-safe
        and must not block.  Setting ``cancel`` stops the pull soon after;
        work files are kept so the next pull resumes.

        Raises:
            InvalidNameError, ModelNotFoundError, InvalidManifestError,
            RegistryError, TransportError, IntegrityError (one blob failed),
            IncompletePullError (several failed), PullCancelledError,
            InsufficientSpaceError.
        """
        ref = self.parse(name)
        report = progress or (lambda ev: None)
        cancel = cancel or threading.Event()
        m = self._resolve(ref, name, cancel)
        with self.cache.prune_lock(exclusive=False):
            todo = []
            for b in m.blobs():
                if self.cache.get(b.digest) is not None:
                    report(Progress(str(b.digest), b.size, CACHED, b.size))
                else:
                    report(Progress(str(b.digest), b.size, START))
                    todo.append(b)
            if todo:
                _Pull(self, ref, todo, report, cancel).run()
            self.cache.put(m.digest, m.data)
            self.cache.link(ref.name, m.digest)
        return m

    # -- push ----------------------------------------------------------------

    def push(self, name: str, *, source: str | None = None) -> None:
        """Push a local model (source, else name itself) to the registry named by name.

        Raises:
            InvalidNameError, ModelNotFoundError, RegistryError, TransportError.
        """
        ref = self.parse(name)
        m = self.resolve_local(source or name)
        for b in m.blobs():
            self._push_blob(ref, b.digest, self.cache.blob_path(b.digest))
        url = f"{ref.base_url}/manifests/{ref.name.tag}"
        r = self.transport.request("PUT", url, verify_tls=ref.verify_tls, data=m.data, headers={"Content-Type": MEDIA_TYPE_MANIFEST})
        if r.status_code >= 300:
            raise _parse_error(r, url)

    def _push_blob(self, ref: Ref, d: Digest, path) -> None:
        url = f"{ref.base_url}/blobs/uploads/?digest={d}"
        r = self.transport.request("POST", url, verify_tls=ref.verify_tls)
        if r.status_code >= 300:
            raise _parse_error(r, url)
        location = r.headers.get("Location")
        if not location:
            return  # the registry has the blob already
        upload = _absolute(ref.base_url, location)
        with open(path, "rb") as f:
            r = self.transport.request("PUT", upload, verify_tls=ref.verify_tls, data=f, headers={"Content-Type": "application/octet-stream"})
        if r.status_code >= 300:
            raise _parse_error(r, upload)


def _parse_error(r, url: str) -> RegistryError:
    from .transport import parse_error

    return parse_error(r.status_code, r.content, url)


def _absolute(base_url: str, location: str) -> str:
    if location.startswith(("http://", "https://")):
        return location
    scheme, rest = base_url.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}{location if location.startswith('/') else '/' + location}"


def _aligned_buffer(size: int) -> memoryview:
    """Return a page-aligned buffer of size bytes (numpy owns the memory)."""
    raw = np.empty(size + 4096, dtype=np.uint8)
    skip = (-raw.ctypes.data) % 4096
    return memoryview(raw[skip : skip + size])


class _BlobState:
    """One chunked blob's pull: its work file, assembler, resume record, completion."""

    # Rewrite the resume record at most this often (per blob): a crash then
    # costs at most this much re-fetching, and the writes stay negligible.
    RECORD_EVERY_S = 0.5

    def __init__(self, layer: Layer, url: str, sums: list[ChunkSum], ingest: Ingest, clock: Callable[[], float] = time.monotonic) -> None:
        self.layer = layer
        self.url = url
        self.ingest = ingest
        self.chunks_id = _chunks_id(sums)
        rec = ingest.load_record(self.chunks_id)
        resumed = Ingest.record_done(rec, len(sums)) if rec else [False] * len(sums)
        state = bytes.fromhex(rec["hash_state"]) if rec and rec.get("hash_state") else None
        self.assembler = BlobAssembler(ingest.fd, layer.digest, layer.size, sums, hash_state=state, hashed=rec["hashed"] if rec else 0)
        self.assembler.mark_done(resumed)
        self.todo = [i for i, ok in enumerate(self.assembler.done_chunks()) if not ok]
        self.resumed_bytes = sum(sums[i].chunk.size for i, ok in enumerate(self.assembler.done_chunks()) if ok)
        self.reported = [0] * len(sums)  # bytes of each chunk already reported
        self.remaining = len(self.todo)
        self.repairs = 0
        self.single_stream = False  # the registry ignores Range: one stream fetches all
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


class _Pull:
    """One pull's worker pool and bookkeeping (internal to Registry.pull)."""

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

    # -- driver ---------------------------------------------------------------

    def run(self) -> None:
        try:
            for layer in self.todo:
                if self.cancel.is_set():
                    break
                self._begin()
                if layer.size < self.r.chunking_threshold or layer.size == 0:
                    self.pool.submit(self._guard, layer, self._fetch_whole, layer)
                else:
                    self.pool.submit(self._guard, layer, self._start_chunked, layer)
            with self.cond:
                while self.pending:
                    self.cond.wait(self.r.monitor_interval_s)
                    self.monitor.check()
        except BaseException:
            self.cancel.set()  # e.g. Ctrl-C in the caller's thread: stop the workers too
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.cancel.is_set() and not self.errors:
            raise PullCancelledError("pull cancelled; work in progress was kept and the next pull resumes it")
        self._raise_errors()

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
            buf = self.local.buf = _aligned_buffer(self.r.buffer_size)
        return buf

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise PullCancelledError("pull cancelled; work in progress was kept and the next pull resumes it")

    # -- small blobs: one request ---------------------------------------------

    def _fetch_whole(self, layer: Layer) -> None:
        url = f"{self.ref.base_url}/blobs/{layer.digest}"
        key = str(layer.digest)
        reported = 0  # across attempts, so re-fetched bytes are not counted twice
        ingest = self.r.cache.ingest(layer.digest, layer.size, cancel=self.cancel)
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(key, layer.size, DONE))
            return
        try:
            # A retry restarts the blob: the stream hash cannot skip bytes.
            def attempt() -> None:
                h = ChunkHasher("sha256")

                def sink(offset: int, view: memoryview) -> None:
                    nonlocal reported
                    self._check_cancel()
                    h.update_pwrite(ingest.fd, view, offset)
                    end = offset + len(view)
                    if end > reported:
                        self.report(Progress(key, layer.size, BYTES, end - reported))
                        reported = end

                if layer.size:
                    stream = self.monitor.stream(key)
                    try:
                        self.r.transport.read_range(url, 0, layer.size - 1, self._buffer(), sink, verify_tls=self.verify_tls, stream=stream)
                    finally:
                        self.monitor.done(stream)
                got = h.digest()
                if got != layer.digest.raw:
                    raise IntegrityError(f"blob {layer.digest} from {url} hashes to sha256:{got.hex()}", digest=key, expected=key, got=f"sha256:{got.hex()}")

            self._with_retries(url, attempt)
            self.report(Progress(key, layer.size, VERIFYING))
            ingest.commit()
        except BaseException:
            ingest.discard()  # a one-request blob has nothing worth resuming
            raise
        self.report(Progress(key, layer.size, DONE))

    def _with_retries(self, url: str, attempt: Callable[[], None]) -> None:
        """Retry attempt on transport faults (via Transport.retry) and on bad bytes (bounded)."""
        for n in range(MAX_INTEGRITY_ATTEMPTS):
            try:
                self.r.transport.retry(attempt, url, cancel=self.cancel)
                return
            except IntegrityError:
                if n + 1 == MAX_INTEGRITY_ATTEMPTS:
                    raise
            except TransportError:
                self._check_cancel()
                raise

    # -- large blobs: chunks ---------------------------------------------------

    def _start_chunked(self, layer: Layer) -> None:
        url, sums = self._chunksums(layer)
        key = str(layer.digest)
        ingest = self.r.cache.ingest(layer.digest, layer.size, cancel=self.cancel)
        if ingest is None:  # another process committed it while we waited
            self.report(Progress(key, layer.size, DONE))
            return
        try:
            state = _BlobState(layer, url, sums, ingest)
        except BaseException:
            ingest.close()
            raise
        if state.resumed_bytes:
            # Chunks a previous pull fetched count as done, but not as traffic.
            self.report(Progress(key, layer.size, RESUMED, state.resumed_bytes))
            for i, ok in enumerate(state.assembler.done_chunks()):
                if ok:
                    state.reported[i] = sums[i].chunk.size
        if not state.todo:
            self._begin()
            self.pool.submit(self._guard, layer, self._finish_chunked, state)
            return
        for i in state.todo:
            self._begin()
            self.pool.submit(self._guard_chunk, state, i)

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
            location = _absolute(self.ref.base_url, location)
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
        finally:
            try:
                with state.lock:
                    state.remaining -= 1
                    last = state.remaining == 0
                if last:
                    if key in self.errors:
                        state.save_record(force=True)
                        state.ingest.close()  # keep the work file: the next pull resumes it
                    else:
                        self._finish_chunked(state)
            except BaseException as err:  # noqa: BLE001 - recorded and re-raised by run()
                self._fail(state.layer, err)
            finally:
                self._end()

    def _fetch_chunk(self, state: _BlobState, i: int) -> None:
        s = state.assembler.sums[i]
        chunk = s.chunk
        key = str(state.layer.digest)
        check = self.r.verify == "chunks" and s.digest is not None
        fd = state.ingest.fd
        for n in range(MAX_INTEGRITY_ATTEMPTS):
            hasher = ChunkHasher(s.digest.algorithm) if check else None
            pos = chunk.start

            def sink(offset: int, view: memoryview) -> None:
                nonlocal pos
                self._check_cancel()
                if hasher is not None:
                    hasher.update_pwrite(fd, view, offset)
                else:
                    state.assembler.write(offset, view)
                pos = offset + len(view)
                done = pos - chunk.start
                if done > state.reported[i]:
                    self.report(Progress(key, state.layer.size, BYTES, done - state.reported[i]))
                    state.reported[i] = done

            # A retried attempt resumes where the last one stopped: the bytes
            # before pos are written (and, in chunks mode, hashed) already.
            stream = self.monitor.stream((key, i))
            try:
                self.r.transport.retry(
                    lambda: self.r.transport.read_range(state.url, pos, chunk.end, self._buffer(), sink, verify_tls=self.verify_tls, stream=stream),
                    state.url,
                    cancel=self.cancel,
                )
            finally:
                self.monitor.done(stream)
            if hasher is None or hasher.digest() == s.digest.raw:
                return
        raise IntegrityError(
            f"chunk {chunk} of blob {state.layer.digest} failed its digest {s.digest} {MAX_INTEGRITY_ATTEMPTS} times",
            digest=key, expected=str(s.digest),
        )

    def _fetch_blob_stream(self, state: _BlobState) -> None:
        """Fetch the whole blob in one stream (for registries that ignore Range)."""
        key = str(state.layer.digest)
        pos = 0

        def sink(offset: int, view: memoryview) -> None:
            nonlocal pos
            self._check_cancel()
            state.assembler.write(offset, view)
            pos = offset + len(view)
            with state.lock:
                for j, s in enumerate(state.assembler.sums):
                    if s.chunk.start >= offset + len(view):
                        break
                    covered = min(pos, s.chunk.end + 1) - s.chunk.start
                    if covered > state.reported[j]:
                        self.report(Progress(key, state.layer.size, BYTES, covered - state.reported[j]))
                        state.reported[j] = covered

        stream = self.monitor.stream(key)
        try:
            # Retries restart at 0: a server that ignores Range cannot resume.
            def attempt() -> None:
                self.r.transport.read_range(state.url, 0, state.layer.size - 1, self._buffer(), sink, verify_tls=self.verify_tls, stream=stream)

            self.r.transport.retry(attempt, state.url, cancel=self.cancel)
        finally:
            self.monitor.done(stream)
        for j in range(len(state.assembler.sums)):
            state.assembler.chunk_done(j)

    def _finish_chunked(self, state: _BlobState) -> None:
        """Finish the whole-blob hash; commit, or re-fetch the chunks that fail their digests."""
        key = str(state.layer.digest)
        self.report(Progress(key, state.layer.size, VERIFYING))
        try:
            bad = state.assembler.finish()
            if bad:
                state.repairs += 1
                if state.repairs >= MAX_INTEGRITY_ATTEMPTS:
                    raise IntegrityError(
                        f"blob {state.layer.digest}: chunks {bad[:5]} still fail their digests after {state.repairs} re-fetches",
                        digest=key,
                    )
            else:
                state.ingest.commit()
        except IntegrityError:
            state.ingest.discard()  # nothing in it can be trusted any more
            raise
        except BaseException:
            state.save_record(force=True)
            state.ingest.close()
            raise
        if not bad:
            self.report(Progress(key, state.layer.size, DONE))
            return
        with state.lock:
            state.remaining = len(bad)
        for i in bad:
            self._begin()
            self.pool.submit(self._guard_chunk, state, i)
