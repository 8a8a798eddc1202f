"""Built-in registry server for tests, demos and benchmarks.

This module owns ``TestRegistry``, a real-socket HTTP server that serves an
Ollama-layout models directory (``blobs/sha256-<hex>``,
``manifests/<host>/<namespace>/<model>/<tag>``) as a registry speaking SPEC
section 3 (manifests, blobs with ``Range``, chunksums and the push flow), with
switchable faults (``.faults``) and counters (``.stats``); ``build_model``,
which writes deterministic models into such a directory; ``serve_main`` /
``make_main``, the entries behind ``chunkpull registry serve|make``; and
``parse_size``, the size syntax (binary units) ``chunkpull bench`` shares.
It is the double the client is tested against, so it must never import
``chunkpull.registry``, ``chunkpull.api`` or ``chunkpull.cache`` (the tests
would then check the client against itself); from chunkpull it imports only
``_httpd`` (the threaded server plumbing it shares with ``api``, itself
standard library only), otherwise the standard library plus ``numpy`` and
``blake3`` when a caller needs them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import select
import socket
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from . import _httpd

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SIZE_HELP",
    "Faults",
    "Stats",
    "TestRegistry",
    "build_model",
    "make_main",
    "parse_size",
    "serve_main",
]

log = logging.getLogger("chunkpull.testregistry")

# The chunk size of the chunksums this server serves (``--chunk-size``).  It
# is the registry's choice, not the client's: chunkpull follows whatever
# chunks a registry lists, and has no chunk size constant of its own.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.ollama.image.model"
# Pushed manifests land under this host directory unless a copy exists already.
PUSH_HOST = "registry.local"

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_ROUTE_RE = re.compile(r"/v2/([^/]+)/([^/]+)/(manifests|blobs|chunksums)/([^/]+)")
_UPLOAD_RE = re.compile(r"/v2/([^/]+)/([^/]+)/blobs/uploads/([^/]*)")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
_KIND = {"manifests": "manifest", "blobs": "blob", "chunksums": "chunksums"}

# Copy-path buffer: big enough that the per-piece Python overhead is noise,
# small enough that eight connections cost a few MiB.
_COPY_BUF = 1 << 20
# Blob-random bytes are generated and written in pieces of this size so a
# 1 GiB layer never needs 1 GiB of memory.  Changing it changes the bytes.
_GEN_PIECE = 4 << 20


# --------------------------------------------------------------------------
# Faults and stats
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Faults:
    """Switches that make the server misbehave; tests change them at runtime.

    Plain attribute assignment is fine for a single switch; use ``set(**kw)``
    to change several at once atomically.  Counters named ``*_times`` (and
    the values of ``corrupt_chunk`` and ``status_times``) are decremented by
    the server each time the fault fires, so a test can check it was used.
    Only GET requests for blobs (``/v2/<ns>/<model>/blobs/<digest>``) are
    affected unless stated otherwise; when ``only_digest`` is set, only GETs of
    that blob are.

    - ``corrupt_chunk``: chunk index -> how many more times to corrupt it.
      Chunk k is bytes ``[k*chunk_size, (k+1)*chunk_size)`` of the blob; a
      response overlapping it gets the first overlapping byte inverted.
    - ``cut_after`` / ``cut_times``: close the connection after sending
      ``cut_after`` body bytes, for the next ``cut_times`` responses whose
      body is longer than that (shorter ones are sent whole and not counted).
    - ``stall_s`` / ``stall_times`` / ``stall_after``: for the next
      ``stall_times`` non-empty responses, send the headers and
      ``min(stall_after, length // 2)`` bytes, then nothing for ``stall_s``
      seconds (aborted when the server stops), then the rest.
    - ``status_times``: status -> how many of the next GETs answer with it,
      body ``{"errors":[{"code":"UNAVAILABLE","message":"try again"}]}``
      (429 also carries ``Retry-After: 0``).
    - ``ignore_range``: answer 200 with the whole blob even when asked for a
      range.
    - ``throttle_bps``: limit each blob body to this many bytes per second.
    - ``no_chunksums``: answer 404 on the chunksums route (any digest).
    - ``chunksums_override``: blob digest text -> exact chunksums body.
    - ``routes``: exact request path (without or with its query) ->
      ``(status, body)``, answered before anything else, any method.  Any
      status from 100 to 999 can be sent.
    - ``content_location``: replaces the chunksums ``Content-Location``.
    - ``only_digest``: limit the blob faults above to this blob digest.
    - ``redirect_blobs``: base URL; blob GETs and HEADs answer 307 with
      ``Location: <redirect_blobs><path>`` (a CDN redirect).
    """

    corrupt_chunk: dict[int, int] = dataclasses.field(default_factory=dict)
    cut_after: int | None = None
    cut_times: int = 1
    stall_s: float = 0.0
    stall_times: int = 1
    stall_after: int = 64 * 1024
    status_times: dict[int, int] = dataclasses.field(default_factory=dict)
    ignore_range: bool = False
    throttle_bps: int | None = None
    no_chunksums: bool = False
    chunksums_override: dict[str, str] = dataclasses.field(default_factory=dict)
    routes: dict[str, tuple[int, bytes]] = dataclasses.field(default_factory=dict)
    content_location: str | None = None
    only_digest: str | None = None
    redirect_blobs: str | None = None
    lock: threading.RLock = dataclasses.field(
        default_factory=threading.RLock, repr=False, compare=False
    )

    def set(self, **changes: Any) -> None:
        """Change several switches at once, under the lock.

        Raises:
            AttributeError: a name is not a switch.
        """
        names = {f.name for f in dataclasses.fields(self)} - {"lock"}
        with self.lock:
            for key, value in changes.items():
                if key not in names:
                    raise AttributeError(f"Faults has no switch {key!r}")
                setattr(self, key, value)

    def reset(self) -> None:
        """Turn every fault off."""
        fresh = Faults()
        with self.lock:
            for f in dataclasses.fields(self):
                if f.name != "lock":
                    setattr(self, f.name, getattr(fresh, f.name))

    # The methods below are the server's side: each takes (consumes) faults
    # under the lock so that two connections never fire one fault twice.

    def _applies(self, digest: str) -> bool:
        return self.only_digest is None or self.only_digest == digest

    def _take_status(self, digest: str) -> int | None:
        with self.lock:
            if not self._applies(digest):
                return None
            for status, times in self.status_times.items():
                if times > 0:
                    self.status_times[status] = times - 1
                    return status
            return None

    def _plan(self, digest: str, start: int, end: int, size: int, chunk_size: int) -> _Plan:
        """Decide (and consume) the faults for one body of bytes [start, end]."""
        plan = _Plan()
        length = end - start + 1
        with self.lock:
            if not self._applies(digest) or length <= 0:
                return plan
            if self.cut_after is not None and self.cut_times > 0 and self.cut_after < length:
                self.cut_times -= 1
                plan.cut_at = max(0, self.cut_after)
            if self.stall_s > 0 and self.stall_times > 0:
                self.stall_times -= 1
                plan.stall_at = max(0, min(self.stall_after, length // 2))
                plan.stall_s = self.stall_s
            for index, times in self.corrupt_chunk.items():
                if times <= 0:
                    continue
                lo = max(start, index * chunk_size)
                hi = min(end, (index + 1) * chunk_size - 1, size - 1)
                if lo <= hi:
                    self.corrupt_chunk[index] = times - 1
                    plan.flips.append(lo - start)
            plan.flips.sort()
            if self.throttle_bps:
                plan.throttle_bps = max(1, int(self.throttle_bps))
        return plan


@dataclasses.dataclass
class _Plan:
    """The faults one blob body is sent with; offsets are relative to the body."""

    cut_at: int | None = None
    stall_at: int | None = None
    stall_s: float = 0.0
    flips: list[int] = dataclasses.field(default_factory=list)
    throttle_bps: int | None = None

    def is_clean(self) -> bool:
        return (
            self.cut_at is None
            and self.stall_at is None
            and not self.flips
            and self.throttle_bps is None
        )


@dataclasses.dataclass
class Stats:
    """Counters of what the server did; thread-safe, ``reset()`` clears them.

    - ``requests``: Counter by route kind, ``"manifest"``, ``"blob"``,
      ``"chunksums"``, ``"upload"`` (every push request, manifest PUTs
      included) and ``"other"``; counted as a request arrives.
    - ``blob_bytes_sent``: body bytes of blob GETs.  A response's bytes are
      counted as it starts (so a client that has read a body always sees them
      counted); bytes a failed send never delivered are taken off afterwards.
    - ``ranges``: ``(digest, start, end)`` (inclusive end) of every blob body
      served, in order; a whole-blob answer is ``(digest, 0, size - 1)``.
    - ``log``: ``(method, path, status)`` of every response, in order.
    """

    requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    blob_bytes_sent: int = 0
    ranges: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    log: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self.lock:
            self.requests = collections.Counter()
            self.blob_bytes_sent = 0
            self.ranges = []
            self.log = []

    def _count(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1

    def _add_bytes(self, n: int) -> None:
        with self.lock:
            self.blob_bytes_sent += n

    def _add_range(self, digest: str, start: int, end: int) -> None:
        with self.lock:
            self.ranges.append((digest, start, end))

    def _add_log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) a Range header asks for, or None for all.

    Multiple ranges and malformed headers are ignored (RFC 9110 lets a server
    answer 200 with everything); a range past the end raises _Unsatisfiable.
    """
    if not header:
        return None
    m = _RANGE_RE.fullmatch(header)
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def _error_body(code: str, message: str) -> bytes:
    return json.dumps(
        {"errors": [{"code": code, "message": message}]}, separators=(",", ":")
    ).encode()


class _Server(_httpd.ThreadedServer):
    def __init__(self, registry: TestRegistry, address: tuple[str, int]) -> None:
        self.registry = registry
        super().__init__(address, _Handler, log=log)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        ctx = self.registry._ssl_context
        if ctx is not None:
            # The handshake runs in the connection's own thread (first thing
            # in _Handler.handle): a slow client must not block accept().
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class _Handler(_httpd.Handler):
    server: _Server
    server_version = "chunkpull-testregistry/1"
    # Idle keep-alive connections and unread sends give up after this long;
    # stop() does not wait for it, it shuts the sockets down.
    timeout = 60
    _responded = False
    _body_sent = 0

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        super().handle()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        # send_error() may run before the request line was parsed.
        self.server.registry.stats._add_log(
            getattr(self, "command", None) or "", getattr(self, "path", ""), code
        )
        super().send_response(code, message)

    # -- dispatch -------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        self._responded = False
        reg = self.server.registry
        try:
            self._route(reg)
        except OSError:
            raise
        except Exception as exc:  # a bug in this module: answer, log, go on
            log.exception("testregistry: %s %s failed", self.command, self.path)
            if self._responded:
                self.close_connection = True
            else:
                self._send(500, _error_body("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def _route(self, reg: TestRegistry) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query)
        route = _ROUTE_RE.fullmatch(path)
        upload = _UPLOAD_RE.fullmatch(path)
        if upload:
            kind = "upload"
        elif route:
            kind = "upload" if self.command == "PUT" else _KIND[route.group(3)]
        else:
            kind = "other"
        reg.stats._count(kind)

        with reg.faults.lock:
            canned = reg.faults.routes.get(path) or reg.faults.routes.get(self.path)
        if canned is not None:
            self._drain_body()
            self._send(canned[0], canned[1])
            return

        if upload:
            ns, model, upload_id = (unquote(g) for g in upload.groups())
            if self.command == "POST" and not upload_id:
                self._drain_body()
                self._start_upload(reg, ns, model, query)
            elif self.command == "PUT" and upload_id:
                self._finish_upload(reg, ns, model, upload_id, query)
            else:
                self._drain_body()
                self._send(405, _error_body("UNSUPPORTED", "method not allowed"))
            return

        if route is None:
            self._drain_body()
            if path in ("/v2", "/v2/") and self.command in ("GET", "HEAD"):
                self._send(200, b"{}")
            else:
                self._send(404, _error_body("NOT_FOUND", "not found"))
            return

        ns, model, section, ref = (unquote(g) for g in route.groups())
        if section == "manifests" and self.command == "PUT":
            self._put_manifest(reg, ns, model, ref)
            return
        self._drain_body()
        if self.command not in ("GET", "HEAD"):
            self._send(405, _error_body("UNSUPPORTED", "method not allowed"))
        elif section == "manifests":
            self._get_manifest(reg, ns, model, ref)
        elif section == "blobs":
            self._get_blob(reg, ref)
        else:
            self._get_chunksums(reg, ns, model, ref)

    # -- responses --------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _get_manifest(self, reg: TestRegistry, ns: str, model: str, ref: str) -> None:
        data: bytes | None = None
        if _DIGEST_RE.fullmatch(ref):
            try:
                data = reg.blob_path(ref).read_bytes()
            except FileNotFoundError:
                pass
        else:
            path = reg.find_manifest(ns, model, ref)
            if path is not None:
                data = path.read_bytes()
        if data is None:
            self._send(404, _error_body("MANIFEST_UNKNOWN", "manifest unknown"))
            return
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._send(200, data, MANIFEST_MEDIA_TYPE, [("Docker-Content-Digest", digest)])

    def _get_blob(self, reg: TestRegistry, ref: str) -> None:
        if not _DIGEST_RE.fullmatch(ref):
            self._send(400, _error_body("DIGEST_INVALID", f"invalid digest {ref!r}"))
            return
        digest = ref
        faults = reg.faults
        if self.command == "GET":
            status = faults._take_status(digest)
            if status is not None:
                extra = [("Retry-After", "0")] if status == 429 else []
                self._send(status, _error_body("UNAVAILABLE", "try again"), headers=extra)
                return
        with faults.lock:
            redirect = faults.redirect_blobs if faults._applies(digest) else None
        if redirect:
            self._send(307, b"", headers=[("Location", redirect.rstrip("/") + self.path)])
            return
        try:
            fd = os.open(reg.blob_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            self._send(404, _error_body("BLOB_UNKNOWN", "blob unknown"))
            return
        try:
            size = os.fstat(fd).st_size
            with faults.lock:
                ignore_range = faults.ignore_range and faults._applies(digest)
            try:
                wanted = None if ignore_range else _parse_range(self.headers.get("Range"), size)
            except _Unsatisfiable:
                self._send(
                    416,
                    _error_body("RANGE_INVALID", "range not satisfiable"),
                    headers=[("Content-Range", f"bytes */{size}")],
                )
                return
            start, end = wanted if wanted is not None else (0, size - 1)
            length = end - start + 1
            self.send_response(200 if wanted is None else 206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Docker-Content-Digest", digest)
            if wanted is not None:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            plan = faults._plan(digest, start, end, size, reg.chunk_size)
            planned = length if plan.cut_at is None else plan.cut_at
            reg.stats._add_range(digest, start, end)
            reg.stats._add_bytes(planned)
            self._body_sent = 0
            try:
                self._send_body(reg, fd, start, length, plan)
            finally:
                if self._body_sent < planned:
                    reg.stats._add_bytes(self._body_sent - planned)
        finally:
            os.close(fd)

    def _send_body(self, reg: TestRegistry, fd: int, offset: int, length: int, plan: _Plan) -> None:
        sock = self.connection
        if plan.is_clean() and not isinstance(sock, ssl.SSLSocket):
            self._sendfile(fd, offset, length)
            return
        self._copy(reg, fd, offset, length, plan)
        if plan.cut_at is not None:
            # The client has Content-Length bytes promised and sees EOF early.
            self.close_connection = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _sendfile(self, fd: int, offset: int, length: int) -> None:
        """Send file bytes with os.sendfile: the kernel copies, Python only loops."""
        sock = self.connection
        out = sock.fileno()
        timeout = sock.gettimeout()
        poller = None
        while self._body_sent < length:
            try:
                n = os.sendfile(out, fd, offset + self._body_sent, length - self._body_sent)
            except BlockingIOError:
                # A socket with a timeout is non-blocking underneath; wait for
                # room the way socket.sendfile does.
                if poller is None:
                    poller = select.poll()
                    poller.register(out, select.POLLOUT)
                if not poller.poll(None if timeout is None else timeout * 1000):
                    raise TimeoutError("client did not read the blob body") from None
                continue
            if n == 0:
                raise ConnectionAbortedError("blob file is shorter than its size")
            self._body_sent += n

    def _copy(self, reg: TestRegistry, fd: int, offset: int, length: int, plan: _Plan) -> None:
        """Send file bytes through a buffer, applying the plan's faults (and TLS)."""
        sock = self.connection
        limit = length if plan.cut_at is None else min(plan.cut_at, length)
        buf = bytearray(max(1, min(_COPY_BUF, limit)))
        view = memoryview(buf)
        piece = len(buf)
        if plan.throttle_bps is not None:
            # Twenty pieces a second keeps the rate smooth at any setting.
            piece = max(1, min(piece, plan.throttle_bps // 20))
        flips = list(plan.flips)
        stall_at = plan.stall_at
        started = time.monotonic()
        pos = 0
        while pos < limit:
            if stall_at is not None and pos >= stall_at:
                stall_at = None
                if reg._stop.wait(plan.stall_s):
                    raise ConnectionAbortedError("registry is stopping")
            n = min(piece, limit - pos)
            if stall_at is not None:
                n = min(n, stall_at - pos)
            got = os.preadv(fd, [view[:n]], offset + pos)
            if got == 0:
                raise ConnectionAbortedError("blob file is shorter than its size")
            while flips and flips[0] < pos + got:
                buf[flips.pop(0) - pos] ^= 0xFF
            sock.sendall(view[:got])
            pos += got
            self._body_sent = pos
            if plan.throttle_bps is not None:
                delay = started + pos / plan.throttle_bps - time.monotonic()
                if delay > 0 and reg._stop.wait(delay):
                    raise ConnectionAbortedError("registry is stopping")

    def _get_chunksums(self, reg: TestRegistry, ns: str, model: str, ref: str) -> None:
        faults = reg.faults
        with faults.lock:
            disabled = faults.no_chunksums
            override = faults.chunksums_override.get(ref)
            location = faults.content_location
        if disabled:
            self._send(404, _error_body("NOT_FOUND", "chunksums not supported"))
            return
        if override is not None:
            body = override.encode()
        elif not _DIGEST_RE.fullmatch(ref):
            self._send(400, _error_body("DIGEST_INVALID", f"invalid digest {ref!r}"))
            return
        else:
            try:
                body = reg.chunksums(ref)
            except FileNotFoundError:
                self._send(404, _error_body("BLOB_UNKNOWN", "blob unknown"))
                return
        if location is None:
            location = reg.url + f"/v2/{ns}/{model}/blobs/{ref}"
        self._send(200, body, "text/plain; charset=utf-8", [("Content-Location", location)])

    # -- pushing --------------------------------------------------------

    def _start_upload(self, reg: TestRegistry, ns: str, model: str, query: dict[str, list[str]]) -> None:
        digest = (query.get("digest") or [""])[0]
        if not _DIGEST_RE.fullmatch(digest):
            self._send(400, _error_body("DIGEST_INVALID", f"invalid digest {digest!r}"))
            return
        if reg.blob_path(digest).exists():
            self._send(202, b"", headers=[("Docker-Content-Digest", digest)])
            return
        upload_id = uuid.uuid4().hex
        with reg._lock:
            reg._uploads[upload_id] = digest
        location = f"/v2/{ns}/{model}/blobs/uploads/{upload_id}?digest={digest}"
        self._send(202, b"", headers=[("Location", location), ("Docker-Upload-UUID", upload_id)])

    def _finish_upload(
        self, reg: TestRegistry, ns: str, model: str, upload_id: str, query: dict[str, list[str]]
    ) -> None:
        with reg._lock:
            expected = reg._uploads.pop(upload_id, None)
        digest = (query.get("digest") or [expected or ""])[0]
        if expected is None:
            self._drain_body()
            self._send(404, _error_body("BLOB_UPLOAD_UNKNOWN", "blob upload unknown"))
            return
        if digest != expected or not _DIGEST_RE.fullmatch(digest):
            self._drain_body()
            self._send(400, _error_body("DIGEST_INVALID", f"digest {digest!r} does not match the upload"))
            return
        got = _write_blob(reg.root / "blobs", self._body_pieces(), want=digest)
        if got != digest:
            message = f"provided digest did not match uploaded content: got {got}"
            self._send(400, _error_body("DIGEST_INVALID", message))
            return
        self._send(
            201,
            b"",
            headers=[("Location", f"/v2/{ns}/{model}/blobs/{digest}"), ("Docker-Content-Digest", digest)],
        )

    def _put_manifest(self, reg: TestRegistry, ns: str, model: str, ref: str) -> None:
        data = b"".join(self._body_pieces())
        try:
            manifest = json.loads(data)
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._send(400, _error_body("MANIFEST_INVALID", f"manifest invalid: {exc}"))
            return
        # Like a real registry: every referenced blob must have been pushed
        # first, which catches a client that sends the manifest too early.
        refs = list(manifest.get("layers") or [])
        if isinstance(manifest.get("config"), dict):
            refs.append(manifest["config"])
        for item in refs:
            d = item.get("digest", "") if isinstance(item, dict) else ""
            if not _DIGEST_RE.fullmatch(str(d)) or not reg.blob_path(d).exists():
                self._send(400, _error_body("MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {d}"))
                return
        digest = _write_blob(reg.root / "blobs", [data])
        if not _DIGEST_RE.fullmatch(ref):
            path = reg.find_manifest(ns, model, ref)
            if path is None:
                path = reg.root / "manifests" / PUSH_HOST / ns / model / ref
            _write_atomic(path, data)
        self._send(
            201,
            b"",
            headers=[("Location", f"/v2/{ns}/{model}/manifests/{digest}"), ("Docker-Content-Digest", digest)],
        )

    # -- request bodies -------------------------------------------------

    def _body_pieces(self) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked) in pieces."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    piece = self.rfile.read(min(size, _COPY_BUF))
                    if not piece:
                        raise ConnectionAbortedError("request body ended early")
                    size -= len(piece)
                    yield piece
                self.rfile.readline(1024)
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            piece = self.rfile.read(min(left, _COPY_BUF))
            if not piece:
                raise ConnectionAbortedError("request body ended early")
            left -= len(piece)
            yield piece

    def _drain_body(self) -> None:
        # Unread body bytes would be parsed as the next request on this
        # keep-alive connection.
        for _ in self._body_pieces():
            pass


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    TLS.  Use it as a context manager, or call ``start()`` and ``stop()``;
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
        self._port = port
        self._ssl_context: ssl.SSLContext | None = None
        if certfile is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self._ssl_context = ctx
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # The running server's open connections (handler -> [thread, busy]).
        self._conns: dict[_Handler, list] = {}
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
        server = _Server(self, (self.host, self._port))
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


# --------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str, str, str]:
    """Split ``[host/][namespace/]model[:tag]``; missing parts get defaults."""
    rest, tag = name, "latest"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        rest, tag = name[:colon], name[colon + 1 :]
    parts = rest.split("/")
    if len(parts) == 1:
        parts = [PUSH_HOST, "library", parts[0]]
    elif len(parts) == 2:
        parts = [PUSH_HOST, *parts]
    elif len(parts) > 3:
        parts = ["/".join(parts[:-2]), parts[-2], parts[-1]]
    host, namespace, model = parts
    if not all((host, namespace, model, tag)):
        raise ValueError(f"invalid model name {name!r}")
    return host, namespace, model, tag


def _random_pieces(size: int, seed: int, index: int) -> Iterator[bytes]:
    import numpy as np

    # One generator per layer, seeded by (seed, index): equal-sized layers of
    # one model differ, and the bytes never depend on the other layers.
    rng = np.random.default_rng([seed, index])
    left = size
    while left > 0:
        n = min(left, _GEN_PIECE)
        yield rng.bytes(n)
        left -= n


def _write_blob(blobs: Path, pieces: Iterable[bytes], *, want: str | None = None) -> str:
    """Write pieces as a blob in the directory blobs; return their digest, ``sha256:<hex>``.

    The bytes go to a temporary file that is renamed into place only when
    complete, so a reader never sees half a blob; with ``want`` they are
    kept only if they hash to it (a pushed blob's digest check).
    """
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".write-{uuid.uuid4().hex}.tmp"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:
                h.update(piece)
                f.write(piece)
        digest = "sha256:" + h.hexdigest()
        if want is None or digest == want:
            os.replace(tmp, blobs / digest.replace(":", "-", 1))
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def build_model(
    root: str | os.PathLike[str],
    name: str,
    sizes: Iterable[int],
    *,
    seed: int = 0,
    config: bool = True,
) -> str:
    """Write a model into the models directory ``root``; return its manifest digest.

    ``name`` is ``host/namespace/model:tag`` (``namespace/model`` and ``model``
    get host ``registry.local``, namespace ``library``, tag ``latest``).  One
    layer blob per entry of ``sizes`` (bytes) is filled with pseudo-random
    bytes determined by ``seed`` and the layer's index, generated and written
    piecewise so size costs no memory.  With ``config`` a small JSON config
    blob is added.  The manifest (SPEC section 3 shape) is stored as a blob and
    as ``manifests/<host>/<namespace>/<model>/<tag>``.  Same arguments, same
    bytes, same digest.

    Raises:
        ValueError: a bad name or a negative size.
    """
    host, namespace, model, tag = _split_name(name)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"layer sizes must not be negative: {sizes}")
    root = Path(root)
    blobs = root / "blobs"
    layers = []
    for index, size in enumerate(sizes):
        digest = _write_blob(blobs, _random_pieces(size, seed, index))
        layers.append({"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size})
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE}
    if config:
        cfg = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "chunkpull-test",
                "model_families": ["chunkpull-test"],
                "model_type": "random",
                "file_type": "random",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            },
            separators=(",", ":"),
        ).encode()
        manifest["config"] = {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": _write_blob(blobs, [cfg]),
            "size": len(cfg),
        }
    manifest["layers"] = layers
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = _write_blob(blobs, [data])
    _write_atomic(root / "manifests" / host / namespace / model / tag, data)
    return digest


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"\s*(\d+)\s*(?:([kmgt])(i?b)?|(b))?\s*", re.IGNORECASE)
SIZE_HELP = "sizes are a byte count or binary units: K or KiB = 2^10, M or MiB = 2^20, G or GiB = 2^30, T or TiB = 2^40"


def parse_size(text: str) -> int:
    """Return the byte count of a size such as ``4096``, ``256K``, ``8MiB`` or ``1G`` (binary units: 1G = 2**30).

    The one size syntax of ``chunkpull registry`` and ``chunkpull bench``.
    ``1GB`` is refused rather than guessed at: decimal or binary.

    Raises:
        ValueError: not a whole number with an optional K/M/G/T or KiB/MiB/GiB/TiB suffix.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None or (m.group(3) or "").lower() == "b":
        raise ValueError(f"invalid size {text!r} (want a byte count or binary units, e.g. 4096, 256K, 8MiB, 1G)")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _sizes(text: str) -> list[int]:
    return [_size(part) for part in text.split(",") if part.strip()]


def _with_times(kind: Any) -> Any:
    def parse(text: str) -> tuple[Any, int]:
        value, _, times = text.partition(":")
        try:
            return kind(value), int(times) if times else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} (want VALUE[:TIMES])") from None

    return parse


def serve_main(argv: list[str] | None = None) -> int:
    """Serve a models directory until SIGINT or SIGTERM (``chunkpull registry serve``).

    Prints the URL on the first line of stdout, then serves; returns 0 after
    a clean stop.  Signal handlers are installed only when called from the
    main thread (and restored afterwards).
    """
    p = argparse.ArgumentParser(
        prog="chunkpull registry serve",
        description="Serve an Ollama-layout models directory as a registry (for tests and demos).",
        epilog=SIZE_HELP + ".",
    )
    p.add_argument("dir", help="models directory (blobs/, manifests/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: any free one)")
    p.add_argument("--chunk-size", type=_size, default=DEFAULT_CHUNK_SIZE, help="chunksums chunk size (default 8M)")
    p.add_argument("--chunk-digest", choices=("sha256", "blake3"), default="sha256")
    p.add_argument("--certfile", help="serve TLS with this certificate (PEM)")
    p.add_argument("--keyfile", help="private key for --certfile (PEM)")
    p.add_argument("--corrupt-chunk", type=_with_times(int), action="append", default=[],
                   metavar="K[:TIMES]", help="serve chunk K corrupted TIMES times (repeatable)")
    p.add_argument("--cut-after", type=_with_times(int), metavar="N[:TIMES]",
                   help="close blob connections after N body bytes")
    p.add_argument("--stall", type=_with_times(float), metavar="S[:TIMES]",
                   help="stall blob bodies for S seconds")
    p.add_argument("--status", type=_with_times(int), action="append", default=[],
                   metavar="CODE[:TIMES]", help="answer blob GETs with CODE (repeatable)")
    p.add_argument("--ignore-range", action="store_true", help="answer ranged GETs with the whole blob")
    p.add_argument("--throttle", type=_size, metavar="BPS", help="per-connection bytes per second")
    p.add_argument("--no-chunksums", action="store_true", help="404 on the chunksums route")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")

    registry = TestRegistry(
        args.dir,
        host=args.host,
        port=args.port,
        chunk_size=args.chunk_size,
        chunk_digest=args.chunk_digest,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    f = registry.faults
    f.corrupt_chunk = dict(args.corrupt_chunk)
    if args.cut_after:
        f.cut_after, f.cut_times = args.cut_after
    if args.stall:
        f.stall_s, f.stall_times = args.stall
    f.status_times = dict(args.status)
    f.ignore_range = args.ignore_range
    f.throttle_bps = args.throttle
    f.no_chunksums = args.no_chunksums

    try:
        _httpd.run_until_signalled(lambda: print(registry.start().url, flush=True))
    finally:
        registry.stop()
    return 0


def make_main(argv: list[str] | None = None) -> int:
    """Write a model into a models directory (``chunkpull registry make``).

    Prints the manifest digest and returns 0.
    """
    p = argparse.ArgumentParser(
        prog="chunkpull registry make",
        description="Write a model of pseudo-random layers into an Ollama-layout models directory.",
        epilog=SIZE_HELP + ".",
    )
    p.add_argument("dir", help="models directory (created if missing)")
    p.add_argument("name", help="model name, e.g. registry.local/library/smol:latest")
    p.add_argument("--size", type=_sizes, required=True, metavar="SIZE[,SIZE...]",
                   help="layer sizes, e.g. 512M or 1K,2KiB,3 (binary units: 1G = 2^30 bytes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layer bytes (default 0)")
    p.add_argument("--no-config", action="store_true", help="write no config blob")
    args = p.parse_args(argv)
    try:
        digest = build_model(args.dir, args.name, args.size, seed=args.seed, config=not args.no_config)
    except ValueError as exc:
        p.error(str(exc))
    print(digest)
    return 0


if __name__ == "__main__":  # python -m chunkpull.testregistry DIR ...
    sys.exit(serve_main())
