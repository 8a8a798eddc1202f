"""``TestRegistry``: the built-in registry server for tests, demos and benchmarks.

It serves an Ollama-layout models directory (``blobs/sha256-<hex>``,
``manifests/<host>/<namespace>/<model>/<tag>``) as a registry speaking SPEC
section 3 (manifests, blobs with ``Range``, chunksums and the push flow),
with switchable faults (``.faults``) and counters (``.stats``).  It is the
double the client is tested against, so the ``testing`` package never
imports the client (``registry``, ``store``, ``engine``, ``serve``): the
tests would then check the client against itself.  From chunkpull it
imports only ``_httpd`` (server plumbing, standard library only) and its
own modules; ``blake3`` when chunk digests are BLAKE3.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from .. import _httpd
from .faults import Faults, Stats
from .auth import RegistryAuthMode
from .handler import RegistryServer

__all__ = ["DEFAULT_CHUNK_SIZE", "RegistryAuthMode", "TestRegistry"]

# The chunk size of the chunksums this server serves (``--chunk-size``).  It
# is the registry's choice, not the client's: chunkpull follows whatever
# chunks a registry lists.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


class TestRegistry:
    """Serve an Ollama-layout models directory as a registry over real sockets.

    ``models_dir`` holds ``blobs/sha256-<hex>`` and
    ``manifests/<host>/<namespace>/<model>/<tag>`` (created if missing).  Any
    host directory matches; namespace, model and tag match case-insensitively.
    Blobs are served with ``os.sendfile`` (a buffered copy under TLS or while a
    fault is active); chunksums are computed on first request, ``chunk_size``
    bytes per chunk, digested with ``chunk_digest`` (``"sha256"`` or
    ``"blake3"``) and memoized, for blobs of any size.

    Binds ``host:port`` (port 0 picks a free one) when started; with
    ``certfile`` (and ``keyfile`` unless the cert file holds the key) it speaks
    TLS.  With ``stats_route``, ``GET /_testregistry/stats`` answers the
    counters as JSON (``Stats.snapshot``, and ``open``: the connections open;
    ``?reset=1`` clears the counters too), for a benchmark driving the
    server from another process.  Use it as a context manager, or call ``start()`` and ``stop()``;
    ``stop()`` closes the listening socket and every open connection and waits
    for the server's threads, so it never hangs.  ``.faults`` and ``.stats``
    may be used from any thread.

    Raises:
        ValueError: a bad ``chunk_size`` or ``chunk_digest``.
    """

    __test__ = False  # "Test" prefix: keep pytest from collecting this class

    def __init__(
        self,
        models_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_digest: str = "sha256",
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        auth: RegistryAuthMode | None = None,
        stats_route: bool = False,
    ) -> None:
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if chunk_digest not in ("sha256", "blake3"):
            raise ValueError(f"chunk_digest must be 'sha256' or 'blake3', got {chunk_digest!r}")
        if keyfile is not None and certfile is None:
            raise ValueError("keyfile given without certfile")
        self.root = Path(models_dir)
        self.host = host
        self.chunk_size = int(chunk_size)
        self.chunk_digest = chunk_digest
        self.faults = Faults()
        self.stats = Stats()
        self.auth = auth  # None: no auth at all
        self.stats_route = stats_route
        self._port = port
        self._ssl_context: ssl.SSLContext | None = None
        if certfile is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self._ssl_context = ctx
        self._server: RegistryServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # The running server's open connections (handler -> [thread, busy]).
        self._conns: dict[object, list] = {}
        self._uploads: dict[str, str] = {}
        self._chunksums: dict[str, bytes] = {}
        self._chunksums_locks: dict[str, threading.Lock] = {}

    # -- life cycle -----------------------------------------------------

    def start(self) -> TestRegistry:
        """Bind the socket and serve from a daemon thread; return self.

        Raises:
            RuntimeError: already started.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("TestRegistry already started")
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        server = RegistryServer(self, (self.host, self._port))
        self._server, self._conns = server, server.connections
        self._thread = server.start(f"testregistry:{self.port}", poll_s=0.05)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and every connection; idempotent.

        Waits at most ``timeout`` seconds for the threads to finish; stalls
        and throttled sends abort at once.
        """
        if self._server is None:
            return
        self._stop.set()  # stalls and throttled sends see it at once
        self._server.stop(timeout_s=timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> TestRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread running the accept loop while started, else None."""
        return self._thread

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: not started.
        """
        if self._server is None:
            raise RuntimeError("TestRegistry not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (``https`` with a certificate).

        Raises:
            RuntimeError: not started.
        """
        scheme = "https" if self._ssl_context is not None else "http"
        return _httpd.base_url(scheme, self.host, self.port)

    # -- the models directory ---------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Return the path of the blob named by ``sha256:<hex>`` (may not exist)."""
        return self.root / "blobs" / digest.replace(":", "-", 1)

    def find_manifest(self, namespace: str, model: str, tag: str) -> Path | None:
        """Return the manifest file for namespace/model:tag under any host, or None.

        Matching is case-insensitive; host directories are tried in sorted
        order so the answer is stable.
        """
        want = [namespace.lower(), model.lower(), tag.lower()]

        def child(parent: Path, name: str) -> Iterator[Path]:
            try:
                entries = sorted(os.scandir(parent), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                if entry.name.lower() == name:
                    yield Path(entry.path)

        try:
            hosts = sorted(e.path for e in os.scandir(self.root / "manifests") if e.is_dir())
        except FileNotFoundError:
            return None
        for host in hosts:
            for ns_dir in child(Path(host), want[0]):
                for model_dir in child(ns_dir, want[1]):
                    for tag_file in child(model_dir, want[2]):
                        if tag_file.is_file():
                            return tag_file
        return None

    def chunksums(self, digest: str) -> bytes:
        """Return the chunksums body for a blob, computing it once.

        One line ``<chunk digest> <start>-<end>`` per ``chunk_size`` piece,
        the last one shorter; an empty blob has an empty body.  Concurrent
        callers for one blob wait for a single computation.

        Raises:
            FileNotFoundError: no such blob.
        """
        with self._lock:
            body = self._chunksums.get(digest)
            if body is not None:
                return body
            lock = self._chunksums_locks.setdefault(digest, threading.Lock())
        with lock:
            body = self._chunksums.get(digest)
            if body is None:
                body = self._compute_chunksums(digest)
                with self._lock:
                    self._chunksums[digest] = body
        return body

    def _compute_chunksums(self, digest: str) -> bytes:
        if self.chunk_digest == "blake3":
            from blake3 import blake3 as hasher
        else:
            hasher = hashlib.sha256
        lines = []
        with open(self.blob_path(digest), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(min(self.chunk_size, max(size, 1)))
            view = memoryview(buf)
            start = 0
            while start < size:
                n = min(self.chunk_size, size - start)
                got = 0
                while got < n:
                    k = f.readinto(view[got:n])
                    if not k:
                        raise OSError(f"blob {digest} shrank while hashing")
                    got += k
                lines.append(f"{self.chunk_digest}:{hasher(view[:n]).hexdigest()} {start}-{start + n - 1}\n")
                start += n
        return "".join(lines).encode()
