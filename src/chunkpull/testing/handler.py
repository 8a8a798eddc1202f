"""The built-in registry's request handler: SPEC section 3 over real sockets, faults included.

Routes ``/v2/<ns>/<model>/{manifests,blobs,chunksums}/<ref>`` and the push
flow (``blobs/uploads``), answers ``Range`` (one range; anything else gets
the whole body, as RFC 9110 allows), sends blobs with ``os.sendfile`` or,
while a fault applies or under TLS, a buffered copy that applies it.
Accepted sockets are numbered (``Stats.connections``) and paced by serial
number; with ``stats_route`` it answers ``GET /_testregistry/stats``.

The handler reaches its ``TestRegistry`` as ``self.server.registry``
(registry.py imports this module, never the reverse).  Imports ``_httpd``,
``faults`` and ``models``: standard library otherwise.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import select
import socket
import ssl
import struct
import termios
import time
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

from .. import _httpd
from .faults import Plan
from .models import MANIFEST_MEDIA_TYPE
from .push import PushHandlers
from .push import error_body as _error_body

__all__ = ["RegistryServer"]

log = logging.getLogger("chunkpull.testregistry")

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_ROUTE_RE = re.compile(r"/v2/([^/]+)/([^/]+)/(manifests|blobs|chunksums)/([^/]+)")
_UPLOAD_RE = re.compile(r"/v2/([^/]+)/([^/]+)/blobs/uploads/([^/]*)")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
_KIND = {"manifests": "manifest", "blobs": "blob", "chunksums": "chunksums"}
# The counters as JSON (``?reset=1``: and cleared), when the registry has ``stats_route``.
STATS_PATH = "/_testregistry/stats"
# Linux's socket option for a per-socket TCP pacing cap (not in Python's socket module).
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)

# Copy-path buffer: big enough that the per-piece Python overhead is noise,
# small enough that eight connections cost a few MiB.
_COPY_BUF = 1 << 20

# A TestRegistry (typed loosely: registry.py imports this module, not the reverse).
_Registry = Any


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


class RegistryServer(_httpd.ThreadedServer):
    def __init__(self, registry: _Registry, address: tuple[str, int]) -> None:
        self.registry = registry
        self.serials: dict[socket.socket, int] = {}  # accepted, handler not started yet
        self.resetting: set[socket.socket] = set()  # SO_LINGER 0 set: close with an RST
        super().__init__(address, _Handler, log=log)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        reg = self.registry
        serial = reg.stats._accept()
        rate = reg.faults._pacing(serial)
        if rate:
            sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
        ctx = reg._ssl_context
        if ctx is not None:
            # The handshake runs in the connection's own thread (first thing
            # in _Handler.handle): a slow client must not block accept().
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.serials[sock] = serial
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        if request in self.resetting:
            # No shutdown(SHUT_WR): its FIN would tell the client the body
            # ended; close() alone sends the RST.
            self.resetting.discard(request)
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _Handler(PushHandlers, _httpd.Handler):
    server: RegistryServer
    server_version = "chunkpull-testregistry/1"
    # Idle keep-alive connections and unread sends give up after this long;
    # stop() does not wait for it, it shuts the sockets down.
    timeout = 60
    _responded = False
    _body_sent = 0  # of the current blob body
    _conn_sent = 0  # blob body bytes of this connection (the reset_after switch)
    serial = 0  # the connection's number, 1, 2, ... in accept order

    def setup(self) -> None:
        self.serial = self.server.serials.pop(self.request, 0)
        super().setup()

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

    def _authorized(self, reg: _Registry) -> bool:
        """Check the request's credentials against the registry's auth mode; answer 401 if they fail."""
        mode = reg.auth
        header = self.headers.get("Authorization", "")
        reg.stats._add_auth(self.path, header)
        if mode is None:
            return True
        if self.path.startswith("/token"):
            return True  # the token realm checks its own credentials
        if mode.scheme == "basic":
            if mode.accepts_basic(header):
                return True
            challenge = 'Basic realm="chunkpull-test"'
        else:
            if header.startswith("Bearer ") and mode.accepts_token(header[7:]):
                return True
            m = _ROUTE_RE.match(urlsplit(self.path).path)
            scope = f"repository:{m.group(1)}/{m.group(2)}:pull" if m else ""
            challenge = f'Bearer realm="{reg.url}/token",service="chunkpull-test"' + (f',scope="{scope}"' if scope else "")
        self._send(401, _error_body("UNAUTHORIZED", "authentication required"), headers=[("WWW-Authenticate", challenge)])
        return False

    def _token(self, reg: _Registry) -> None:
        mode = reg.auth
        if mode is None or mode.scheme != "bearer":
            self._send(404, _error_body("NOT_FOUND", "no token realm here"))
            return
        token = mode.issue(self.headers.get("Authorization", ""))
        if token is None:
            self._send(401, _error_body("UNAUTHORIZED", "bad credentials"))
            return
        self._send(200, json.dumps({"token": token, "expires_in": mode.ttl_s}).encode())

    def _route(self, reg: _Registry) -> None:
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
        if path == "/token":
            self._drain_body()
            self._token(reg)
            return
        if path == STATS_PATH and reg.stats_route:
            self._drain_body()
            doc = reg.stats.snapshot(reset=query.get("reset") == ["1"])
            with self.server._changed:
                doc["open"] = len(self.server.connections)  # this one included
            self._send(200, json.dumps(doc).encode())
            return
        if not self._authorized(reg):
            self._drain_body()
            return

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
        drip_bps: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self._write_dripping(body, drip_bps if drip_bps is not None else None)

    def _write_dripping(self, body: bytes, bps: int | None) -> None:
        """Write body, at bps bytes per second when given (the ``drip_control_bps`` fault)."""
        if not bps:
            self.wfile.write(body)
            return
        reg = self.server.registry
        step = max(1, bps // 20)
        started = time.monotonic()
        for pos in range(0, len(body), step):
            self.wfile.write(body[pos : pos + step])
            self.wfile.flush()
            delay = started + (pos + step) / bps - time.monotonic()
            if delay > 0 and reg._stop.wait(delay):
                raise ConnectionAbortedError("registry is stopping")

    def _get_manifest(self, reg: _Registry, ns: str, model: str, ref: str) -> None:
        location = reg.faults.manifest_location
        if location is not None:
            self._send(307, b"", headers=[("Location", location.replace("{path}", self.path))])
            return
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
        digest = reg.faults.manifest_digest_header or "sha256:" + hashlib.sha256(data).hexdigest()
        self._send(200, data, MANIFEST_MEDIA_TYPE, [("Docker-Content-Digest", digest)], drip_bps=reg.faults.drip_control_bps)

    def _get_blob(self, reg: _Registry, ref: str) -> None:
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
            plan = faults.plan(digest, start, end, size, reg.chunk_size) if self.command == "GET" else Plan()
            if self.command == "GET":
                plan.reset_at = faults._reset_at(self._conn_sent, length)
            if plan.gzip:
                self._send_gzip(fd, start, length, wanted is not None, size, digest)
                return
            self.send_response(200 if wanted is None else 206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Docker-Content-Digest", digest)
            if wanted is not None:
                shift = faults._take_content_range_shift(digest) if self.command == "GET" else 0
                self.send_header("Content-Range", f"bytes {start + shift}-{end + shift}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            planned = min(n for n in (length, plan.cut_at, plan.reset_at) if n is not None)
            reg.stats._add_range(digest, start, end)
            reg.stats._add_bytes(planned)
            self._body_sent = 0
            try:
                self._send_body(reg, fd, start, length, plan)
            finally:
                self._conn_sent += self._body_sent
                if self._body_sent < planned:
                    reg.stats._add_bytes(self._body_sent - planned)
        finally:
            os.close(fd)

    def _send_gzip(self, fd: int, start: int, length: int, ranged: bool, size: int, digest: str) -> None:
        """Send bytes start..start+length-1 gzip-encoded (the ``gzip_times`` fault)."""
        data = gzip.compress(os.pread(fd, length, start), compresslevel=1)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Content-Digest", digest)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        self.end_headers()
        self.wfile.write(data)

    def _send_body(self, reg: _Registry, fd: int, offset: int, length: int, plan: Plan) -> None:
        sock = self.connection
        if plan.reset_at is not None:
            length = min(length, plan.reset_at)
        if plan.is_clean() and not isinstance(sock, ssl.SSLSocket):
            self._sendfile(fd, offset, length)
        else:
            self._copy(reg, fd, offset, length, plan)
        if plan.reset_at is not None:
            self._reset(reg)
        elif plan.cut_at is not None:
            # The client has Content-Length bytes promised and sees EOF early.
            self.close_connection = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _reset(self, reg: _Registry) -> None:
        """Reset the connection (the ``reset_after`` switch): SO_LINGER 0, closed by shutdown_request.

        Bytes the kernel still holds for the peer are dropped by the RST, so
        they are taken off the bytes sent.
        """
        sock = self.connection
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reg.stats._add_reset(min(queued, self._body_sent))
        self.server.resetting.add(sock)
        self.close_connection = True

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

    def _copy(self, reg: _Registry, fd: int, offset: int, length: int, plan: Plan) -> None:
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

    def _get_chunksums(self, reg: _Registry, ns: str, model: str, ref: str) -> None:
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
        self._send(200, body, "text/plain; charset=utf-8", [("Content-Location", location)], drip_bps=faults.drip_control_bps)
