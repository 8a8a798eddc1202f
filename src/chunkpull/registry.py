"""The registry client: resolve manifests, pull blobs chunk by chunk, push, unlink.

``Registry.pull`` is the product.  It resolves the manifest, announces
every blob to the progress callback, and then, on a pool of ``max_streams``
worker threads:

- blobs below the chunking threshold come in one streamed GET, hashed as
  they are written;
- larger blobs ask the registry for their chunksums and fetch the chunks
  with Range requests, each written at its final offset in the blob's work
  file; the whole-blob SHA-256 runs in byte order over the pieces while
  they are still in memory, as later chunks still arrive
  (``engine.assembler.BlobAssembler``);
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

The engine itself (workers, pieces, commits) is ``engine.Puller``: the
façade hands it a ``PullConfig`` and a ``Source`` and never lends it itself.
User settings are the constructor's keywords; the engine's knobs come in
one ``Tuning``; a pull returns a ``PullResult`` (paths and byte counts).

Imports core, store, engine, ``tuning`` and ``result``; never serve, cli,
testing or bench.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _env
from .auth import RegistryAuth, find_credentials
from .core.digest import Digest, sha256_digest
from .core.index import MANIFEST_ACCEPT, MEDIA_TYPE_DOCKER_MANIFEST, Index, Platform, is_index
from .core.manifest import Layer, Manifest
from .core.names import DEFAULT_MASK, Name, Ref, parse_ref
from .core.progress import CACHED, START, Aggregator, Progress, ProgressCallback
from .engine.adaptive import ADAPTIVE, ADAPTIVE_HIGH
from .engine.config import DEFAULT_BUFFER_SIZE, DEFAULT_CHUNKING_THRESHOLD, BlobJob, PullConfig, Source
from .engine.puller import Puller
from .engine.ratelimit import RateLimiter
from .engine.sources import Mirror, Sources, SourceStats
from .engine.transport import Transport, join_url, parse_error
from .errors import ChunkpullError, IntegrityError, InvalidManifestError, ModelNotFoundError, PullCancelledError, RegistryError
from .hosts import mirrors_for, parse_mirror
from .result import PullResult
from .store.cache import DiskCache, mentioned_digests
from .tuning import IO_MODES, VERIFY_MODES, IOMode, Tuning, VerifyMode, tuning_from_legacy

if TYPE_CHECKING:
    import requests

    SessionFactory = Callable[..., requests.Session]

__all__ = [
    "Registry",
    "PullReport",
    "PullResult",
    "SourceStats",
    "Manifest",
    "Layer",
    "Tuning",
    "VerifyMode",
    "IOMode",
    "DEFAULT_CHUNKING_THRESHOLD",
    "DEFAULT_BUFFER_SIZE",
    "VERIFY_MODES",
    "IO_MODES",
]

# Real manifests are a few kB; a larger answer is refused rather than buffered.
MAX_MANIFEST_BYTES = 4 << 20


@dataclass
class PullReport:
    """What a pull's sources delivered (filled by ``Registry.pull(report=)`` / ``pull_many``, also when it fails).

    >>> report = PullReport()
    >>> registry.pull("http://127.0.0.1:5000/library/smol", report=report)  # doctest: +SKIP
    >>> [(s.name, s.bytes) for s in report.sources]                         # doctest: +SKIP
    [('127.0.0.1:5000', 8390656)]
    """

    sources: list[SourceStats] = field(default_factory=list)
    # The stream counts the pull ran at, in order (one entry when pinned; adaptive pulls list each change).
    streams: list[int] = field(default_factory=list)
    # Slow or silent connections: reads the stream monitor cut (each resumed at once elsewhere), and chunks
    # whose tail was raced on a second connection (hedges), with how many of those races the second one won.
    cuts: int = 0
    hedges: int = 0
    hedges_won: int = 0

    def to_json(self) -> list[dict[str, Any]]:
        """Return one JSON object per source (origin first), as ``chunkpull pull --json`` writes them."""
        return [s.to_json() for s in self.sources]


class Registry:
    """A client for Ollama-style and OCI registries that pulls into a models directory.

    Every argument defaults to None, meaning the documented default:

    models
        the models directory, a path or a ``DiskCache`` (``$OLLAMA_MODELS``,
        else ``~/.ollama/models``), in Ollama's layout.
    max_streams
        concurrent connections per pull: None (``$CHUNKPULL_MAX_STREAMS`` or
        ``$OLLAMA_REGISTRY_MAXSTREAMS`` if set, else adaptive), 0 (adaptive:
        starts at 8, grows while throughput rises, 2 to 64) or a fixed count.
    verify
        ``"blob"`` (one SHA-256 pass per byte) or ``"chunks"`` (every chunk
        also checked as it arrives); see the module docstring.
    mask
        completes short names (``registry.ollama.ai/library/_:latest``).
    limit_rate
        bytes per second for all of this Registry's pulls together, over
        every stream and source (None: no cap).
    mirrors
        mirror URLs for every origin, before ``$CHUNKPULL_MIRRORS`` and each
        host's ``hosts.toml`` (see ``chunkpull.hosts``): chunk bytes may come
        from them, verified against the origin's digests.
    credentials
        ``{host: (user, password)}``, before the credential files (see ``chunkpull.auth``).
    ca_cert
        CA certificates (a PEM file or a hashed directory) to verify
        registries with (``$SSL_CERT_FILE``, ``$SSL_CERT_DIR``; else the
        operating system's trust store).
    platform
        ``os/arch[/variant]`` an image index is resolved for (this machine's
        platform; an index with one entry gives that entry).
    tuning
        the engine's knobs (chunking threshold, pieces, memory, I/O mode,
        timeouts, retries) in one ``Tuning``.

    The keywords ``chunking_threshold``, ``buffer_size``, ``memory_budget``,
    ``io``, ``stall_timeout_s``, ``timeout_s`` and ``backoff`` of earlier
    versions still work, with a ``DeprecationWarning``: use ``tuning=``.

    One Registry may serve many pulls at once from different threads; each
    pull has its own pool of workers.  Close it (or use ``with``) to close
    its pooled connections:

    >>> from chunkpull import Registry
    >>> with Registry("/tmp/models", max_streams=4) as registry:           # doctest: +SKIP
    ...     result = registry.pull("http://127.0.0.1:5000/library/smol")
    ...     print(result.model_path)
    /tmp/models/blobs/sha256-0bf3622b362c...

    Raises:
        ValueError: a setting out of its range; InvalidNameError: a bad mirror URL.
    """

    def __init__(
        self,
        models: str | os.PathLike[str] | DiskCache | None = None,
        *,
        max_streams: int | None = None,
        verify: VerifyMode | None = None,
        mask: str | None = None,
        limit_rate: int | None = None,
        mirrors: Sequence[str] | None = None,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        platform: str | Platform | None = None,
        tuning: Tuning | None = None,
        # Test seams, not API: requests sessions (f(max_streams, verify_tls=)) and the backoff's sleep.
        _session_factory: SessionFactory | None = None,
        _sleep: Callable[[float], None] | None = None,
        **legacy: Any,
    ) -> None:
        if legacy:
            warnings.warn(
                f"Registry({', '.join(f'{k}=' for k in legacy)}) is deprecated: pass models= for cache=, and "
                "tuning=Tuning(...) for chunking_threshold, buffer_size, memory_budget, io, stall_timeout_s, timeout_s, backoff",
                DeprecationWarning, stacklevel=2,
            )
            models = legacy.pop("cache", models)
            _session_factory = legacy.pop("session_factory", _session_factory)
            _sleep = legacy.pop("sleep", _sleep)
        t = self.tuning = tuning_from_legacy(tuning, legacy)
        self.cache = models if isinstance(models, DiskCache) else DiskCache.open(models)
        self.mask = mask or DEFAULT_MASK
        # The entry an image index resolves to (None: this machine's platform).
        self.platform = Platform.parse(platform) if isinstance(platform, str) else platform
        # One auth hook per registry host (and TLS mode), so its tokens serve every pull.
        self.credentials = dict(credentials or {})
        self.mirrors = [parse_mirror(m).root for m in mirrors or []]  # checked now: a typo fails before any pull
        self._auths: dict[tuple[str, bool], RegistryAuth] = {}
        self._auths_lock = threading.Lock()
        # max_streams=0 (``--streams auto``, the default unless the environment pins a count): adaptive, 2 to ADAPTIVE_HIGH.
        streams = max_streams if max_streams is not None else _env.max_streams()
        self.config = PullConfig(
            max_streams=ADAPTIVE_HIGH if streams == ADAPTIVE else streams,
            adaptive=streams == ADAPTIVE,
            chunking_threshold=t.chunking_threshold,
            verify=verify or "blob",
            buffer_size=t.buffer_size,
            memory_budget=t.memory_budget,
            io=t.resolved_io(),
            # A stream with no byte for this long is cut and its range retried
            # elsewhere; the socket read timeout (timeout_s) is the hard bound.
            stall_timeout_s=t.stall_timeout_s,
        )
        seams: dict[str, Any] = {"sleep": _sleep} if _sleep is not None else {}
        self.transport = Transport(
            max_streams=self.config.max_streams, session_factory=_session_factory, backoff=t.backoff, timeout_s=t.timeout_s,
            stall_s=self.config.stall_timeout_s, ca_cert=str(ca_cert) if ca_cert else _env.ca_cert(),
            limiter=RateLimiter(limit_rate) if limit_rate else None, **seams,
        )

    @property
    def max_streams(self) -> int:
        """Return the most streams each pull may use (64 when adaptive)."""
        return self.config.max_streams

    @property
    def models(self) -> Path:
        """Return the models directory's root."""
        return self.cache.root

    def auth_for(self, ref: Ref) -> RegistryAuth:
        """Return the auth hook of ref's registry host (made, with its credentials looked up, on first use)."""
        return self._auth(ref.name.host, ref.verify_tls)

    def _auth(self, host: str, verify_tls: bool) -> RegistryAuth:
        key = (host.lower(), verify_tls)
        with self._auths_lock:
            auth = self._auths.get(key)
            if auth is None:
                creds = find_credentials(host, self.credentials)
                auth = self._auths[key] = RegistryAuth(host, creds, get=functools.partial(self.transport.get_plain, verify_tls=verify_tls))
            return auth

    def mirrors_for(self, ref: Ref) -> list[Mirror]:
        """Return the mirrors of ref's origin host, each with its own auth hook (never the origin's credentials)."""
        return [Mirror(m.root, m.verify_tls, self._auth(m.host, m.verify_tls)) for m in mirrors_for(ref.name.host, self.mirrors)]

    def close(self) -> None:
        """Close the pooled connections."""
        self.transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            data, content_type = self._fetch_manifest(ref, text, ref.digest, cancel)
        else:
            data, content_type = self._fetch_manifest(ref, text, ref.name.tag, cancel)
        if is_index(data, content_type):
            # A multi-platform (or artifact) index: pull this platform's manifest.
            entry = Index.parse(data).choose(self.platform)
            data, content_type = self._fetch_manifest(ref, text, entry.digest, cancel)
            if is_index(data, content_type):
                raise InvalidManifestError(f"invalid manifest: the index entry {entry.digest} of {text} is itself an index")
        return Manifest.parse(data)

    def _fetch_manifest(self, ref: Ref, text: str, reference: str | Digest, cancel: threading.Event | None) -> tuple[bytes, str]:
        """GET one manifest (or index) by tag or digest; return its bytes and Content-Type, their digest checked.

        A digest is asked for at ``/manifests/<digest>`` (the distribution
        spec), then at ``/blobs/<digest>`` (Ollama's registry keeps
        manifests as blobs).  The bytes must hash to the digest asked for,
        or to the registry's ``Docker-Content-Digest`` when it sends one.
        """
        pin = reference if isinstance(reference, Digest) else None
        urls = [f"{ref.base_url}/manifests/{reference}"] + ([f"{ref.base_url}/blobs/{pin}"] if pin else [])
        for n, url in enumerate(urls):
            try:
                resp = self.transport.get(
                    url, verify_tls=ref.verify_tls, auth=self.auth_for(ref), headers={"Accept": MANIFEST_ACCEPT}, max_bytes=MAX_MANIFEST_BYTES, cancel=cancel
                )
                break
            except RegistryError as err:
                if err.status in (401, 403):
                    err.hint = self.auth_for(ref).refusal_hint()
                    raise
                unknown = err.status == 404 or err.code.upper() in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN")
                if not unknown:
                    raise
                if n == len(urls) - 1:
                    raise ModelNotFoundError(text) from err
        got = sha256_digest(resp.body)
        want = pin
        if want is None:
            header = resp.headers.get("Docker-Content-Digest", "").strip()
            with contextlib.suppress(ValueError):
                want = Digest.parse(header) if header.startswith("sha256:") else None
        if want is not None and got != want:
            raise IntegrityError(f"manifest from {url} hashes to {got}, not {want}", digest=str(want), expected=str(want), got=str(got))
        return resp.body, resp.headers.get("Content-Type", "")

    def resolve_local(self, name: str) -> Manifest:
        """Return the manifest of a model in the local cache (see ``local_name``).

        Raises:
            InvalidNameError, ModelNotFoundError, InvalidManifestError.
        """
        return Manifest.parse(self.cache.manifest_bytes(self.local_name(name)))

    def local_name(self, name: str) -> Name:
        """Return the local model that name means.

        The name completed with the mask, if that model is here; otherwise
        the one local model whose trailing parts match what was written
        (``smol`` finds ``127.0.0.1:5000/library/smol:latest`` when it is
        the only ``smol:latest`` here), as people name the models they see
        in ``chunkpull ls``.

        Raises:
            InvalidNameError, ModelNotFoundError (none, or several, match).
        """
        ref = self.parse(name)
        if self.cache.has_manifest(ref.name):
            return ref.name
        text = name.split("://", 1)[-1].split("@", 1)[0]
        written = Name.parse(text)
        tag = written.tag or self.parse(name).name.tag
        matches = [
            n
            for n, _path in self.cache.links()
            if n.model.lower() == written.model.lower()
            and n.tag.lower() == tag.lower()
            and (not written.namespace or n.namespace.lower() == written.namespace.lower())
            and (not written.host or n.host.lower() == written.host.lower())
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            options = ", ".join(sorted(str(m) for m in matches))
            raise ModelNotFoundError(name, f"model {name!r} is ambiguous here: {options}")
        raise ModelNotFoundError(name)

    def pullable_name(self, name: Name) -> str:
        """Return a local model's name as ``pull`` accepts it: shortest against the mask, with its scheme when not https.

        >>> registry.pullable_name(Name.parse("127.0.0.1:5000/library/smol:latest"))  # doctest: +SKIP
        'http://127.0.0.1:5000/library/smol'
        """
        scheme = self.cache.scheme(name.host)
        short = name.display_shortest(self.mask)
        return short if scheme == "https" else f"{scheme}://{short}"

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

        The name is found as ``local_name`` finds it.

        Raises:
            InvalidNameError, ModelNotFoundError (the name is ambiguous here).
        """
        try:
            local = self.local_name(name)
            data = self.cache.manifest_bytes(local)
        except ModelNotFoundError:
            return False
        removed = self.cache.unlink(local)
        if removed:
            # Its blobs go, unless another manifest still mentions them.
            self.cache.prune(only=mentioned_digests(data))
        return removed

    def prune(self) -> list[Digest]:
        """Remove blobs that no local manifest mentions (see ``DiskCache.prune``)."""
        return self.cache.prune()

    # -- pull ----------------------------------------------------------------

    def pull(self, name: str, *, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             report: PullReport | None = None) -> PullResult:
        """Pull the named model into the models directory; return its manifest, blob paths and byte counts.

        ``progress`` gets a ``Progress`` event: ``start`` or ``cached`` for
        every blob before any byte moves, then ``bytes`` (and ``resumed``)
        deltas, ``verifying``, ``done`` (or ``error``); it is called from
        worker threads, must be thread-safe and must not block.  Setting
        ``cancel`` stops the pull soon after; work files are kept so the
        next pull resumes.  ``report``, when given, is filled with what each
        source (origin, mirrors) delivered.

        >>> with Registry("/tmp/models") as registry:                                # doctest: +SKIP
        ...     r = registry.pull("http://127.0.0.1:5000/library/smol:latest")
        >>> r.model_path, r.fetched_bytes, r.cached_bytes                           # doctest: +SKIP
        (PosixPath('/tmp/models/blobs/sha256-0bf3...'), 8389632, 0)

        Raises:
            InvalidNameError, ModelNotFoundError, InvalidManifestError,
            RegistryError, TransportError, IntegrityError (one blob failed),
            IncompletePullError (several failed), PullCancelledError,
            InsufficientSpaceError.
        """
        ref = self.parse(name)
        self.cache.check_name(ref.name)  # a name the disk cannot store fails now, not after the download
        cancel = cancel or threading.Event()
        m = self._resolve(ref, name, cancel)
        result = self._pull_models([(name, ref, m)], progress or _ignore, cancel, report, raise_first=True)[name]
        if isinstance(result, BaseException):  # raise_first: never, but the type says it may be
            raise result
        return result

    def pull_many(self, names: list[str], *, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  report: PullReport | None = None) -> dict[str, PullResult | BaseException]:
        """Pull several models under one stream budget and one memory budget; return each name's result or error.

        A blob several models share is fetched once (and counts as fetched
        in each of their results).  One model failing (not found, a bad
        blob) does not stop the others; only cancelling
        (``PullCancelledError``) ends them all.

        >>> results = registry.pull_many(["http://127.0.0.1:5000/library/a", "http://127.0.0.1:5000/library/b"])  # doctest: +SKIP
        >>> {n: type(r).__name__ for n, r in results.items()}                                                  # doctest: +SKIP
        {'http://127.0.0.1:5000/library/a': 'PullResult', 'http://127.0.0.1:5000/library/b': 'ModelNotFoundError'}
        """
        cancel = cancel or threading.Event()
        results: dict[str, PullResult | BaseException] = {}
        resolved = []
        for name in names:
            if cancel.is_set():
                raise PullCancelledError()
            try:
                ref = self.parse(name)
                self.cache.check_name(ref.name)
                resolved.append((name, ref, self._resolve(ref, name, cancel)))
            except PullCancelledError:
                raise
            except ChunkpullError as err:
                results[name] = err
        results.update(self._pull_models(resolved, progress or _ignore, cancel, report, raise_first=False))
        return {name: results[name] for name in names if name in results}

    def _pull_models(self, models: list[tuple[str, Ref, Manifest]], progress: ProgressCallback, cancel: threading.Event,
                     summary: PullReport | None, *, raise_first: bool) -> dict[str, PullResult | BaseException]:
        """Fetch every blob the models need in one Puller run, then write the manifests of the models that are complete."""
        mirrors: list[Mirror] = []
        jobs: dict[str, BlobJob] = {}
        tally = Aggregator()  # what each result's byte counts are read from

        def report(event: Progress) -> None:
            tally(event)
            progress(event)

        try:
            with self.cache.prune_lock(exclusive=False):
                for _name, ref, m in models:
                    origin = Source(ref.base_url, ref.verify_tls, self.auth_for(ref))
                    own = []
                    for mirror in self.mirrors_for(ref):
                        if mirror not in mirrors:
                            mirrors.append(mirror)
                        own.append(mirrors.index(mirror) + 1)
                    for b in m.blobs():
                        if str(b.digest) in jobs:
                            continue  # shared with a model before it: fetched once
                        info = self.cache.get(b.digest)
                        # A blob of the wrong size (truncated by some other tool) is
                        # fetched again; the commit then replaces it.
                        if info is not None and info.size == b.size:
                            report(Progress(str(b.digest), b.size, CACHED, b.size))
                            continue
                        report(Progress(str(b.digest), b.size, START))
                        jobs[str(b.digest)] = BlobJob(b, origin, tuple(own))
                sources = Sources(models[0][1].name.host if len({r.name.host for _n, r, _m in models}) == 1 else "origin", mirrors)
                puller = Puller(self.config, self.transport, self.cache, list(jobs.values()), report, cancel, sources) if jobs else None
                failed: dict[str, BaseException] = {}
                try:
                    if puller is not None:
                        puller.run()
                except (PullCancelledError, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    if raise_first or puller is None:
                        raise
                    failed = {b.key: b.error for b in puller.blobs if b.error is not None} or {"": exc}
                finally:
                    if summary is not None:
                        summary.sources = sources.snapshot()
                        summary.streams = puller.streams.counts() if puller is not None else []
                        if puller is not None:
                            summary.cuts, summary.hedges, summary.hedges_won = puller.monitor.aborted, puller.stats.hedges, puller.stats.hedges_won
                results: dict[str, PullResult | BaseException] = {}
                for name, ref, m in models:
                    err = next((failed[str(b.digest)] for b in m.blobs() if str(b.digest) in failed), failed.get(""))
                    if err is not None:
                        results[name] = err
                        continue
                    self.cache.put(m.digest, m.data)
                    self.cache.link(ref.name, m.digest)
                    self.cache.set_scheme(ref.name.host, ref.scheme)
                    counts = tally.byte_counts({str(b.digest) for b in m.blobs()})
                    results[name] = PullResult.of(name, m, self.cache.blob_path, counts)
                return results
        finally:
            # Models removed while this pull ran: their blobs go now, unless
            # another pull is still running (then the last one to end does it).
            with contextlib.suppress(OSError):
                self.cache.prune_deferred()

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
        r = self.transport.request("PUT", url, verify_tls=ref.verify_tls, auth=self.auth_for(ref), data=m.data, headers={"Content-Type": MEDIA_TYPE_DOCKER_MANIFEST})
        if r.status_code >= 300:
            raise _parse_error(r, url)

    def _push_blob(self, ref: Ref, d: Digest, path: Path) -> None:
        url = f"{ref.base_url}/blobs/uploads/?digest={d}"
        r = self.transport.request("POST", url, verify_tls=ref.verify_tls, auth=self.auth_for(ref))
        if r.status_code >= 300:
            raise _parse_error(r, url)
        location = r.headers.get("Location")
        if not location:
            return  # the registry has the blob already
        upload = join_url(ref.base_url, location)
        with open(path, "rb") as f:
            r = self.transport.request("PUT", upload, verify_tls=ref.verify_tls, auth=self.auth_for(ref), data=f, headers={"Content-Type": "application/octet-stream"})
        if r.status_code >= 300:
            raise _parse_error(r, upload)


def _parse_error(r: requests.Response, url: str) -> RegistryError:
    return parse_error(r.status_code, r.content, url)


def _ignore(event: Progress) -> None:
    """The progress callback of a pull nobody watches."""
