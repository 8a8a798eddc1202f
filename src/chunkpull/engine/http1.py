"""A small HTTP/1.1 client of our own, for the ranged blob GETs of the data path.

Why it exists: a blob body must be read straight into our aligned pieces
(no copy), and the stall monitor must read ``TCP_INFO`` from, and shut
down, the very socket a worker is blocked on.  requests, urllib3 and
http.client offer neither except through private attributes
(``r.raw._fp``, ``connection.sock``) that move between versions.  Owning the
connection makes both ordinary: the socket is ours.

Kept small on purpose.  GET only; a bounded, thread-safe keep-alive pool
per (scheme, host, port, TLS trust, proxy); TLS with SNI; proxies as curl
picks them (``engine.proxy``): absolute-form requests for http targets, a
CONNECT tunnel for https ones; redirects (at most ``MAX_REDIRECTS``, the
``Authorization`` header only to the origin it was made for).  A body is
read with ``readinto`` when it has a Content-Length; error bodies may also
be chunked or close-delimited (bounded).  The control plane, push and the
401 handshake stay on requests (``engine.transport``).

Every wait is bounded: the connect timeout, the read timeout (per wait, as
the socket timeout), ``MAX_HEAD_BYTES`` of status line and headers,
``MAX_REDIRECTS``.  A connection is reused only when its last body was read
to its end without an error.

Imports errors, ``engine.proxy`` and ``_hashio`` (the receive loop).
"""

from __future__ import annotations

import base64
import os
import re
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlsplit

import truststore

from .. import _hashio
from ..errors import ChunkpullError, RegistryError
from .proxy import proxy_for, redact_userinfo

__all__ = [
    "Answer", "Connection", "ConnectFailed", "HTTP1Client", "HTTPFatalError", "MAX_HEAD_BYTES", "MAX_REDIRECTS",
    "ProtocolError", "ShortReadError", "check_content_range", "join_url", "retry_after_s",
]

# Status line and headers of one answer: more than this is not a registry.
MAX_HEAD_BYTES = 64 << 10
MAX_REDIRECTS = 5
REDIRECTS = frozenset((301, 302, 303, 307, 308))
# A redirect's or a discarded answer's body is drained up to this to keep its connection; longer, it is closed.
_DRAIN_BYTES = 64 << 10
_PORTS = {"http": 80, "https": 443}


class ShortReadError(Exception):
    """A body ended (or stalled) before the promised bytes; ``got`` bytes arrived."""

    def __init__(self, message: str, got: int) -> None:
        super().__init__(message)
        self.got = got


class ConnectFailed(ConnectionError):
    """The connection (or the proxy's tunnel) could not be made; the text is a sentence for users.  Retried."""


class ProtocolError(ConnectionError):
    """The peer's answer is not HTTP/1.1 that we can read (a garbled status line, too many headers).  Retried."""


class _Stale(Exception):
    """A reused connection failed before any byte of its answer."""


class HTTPFatalError(ChunkpullError):
    """Asking again cannot help: TLS verification failed, a redirect loop, a redirect to a non-http(s) URL."""


def join_url(base_url: str, location: str) -> str:
    """Return location made absolute against base_url's scheme and host (a Location header)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", location):  # absolute (a non-http one is refused by the caller)
        return location
    scheme, rest = base_url.split("://", 1)
    if location.startswith("//"):  # scheme-relative: another host
        return f"{scheme}:{location}"
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}{location if location.startswith('/') else '/' + location}"


def _reason(err: OSError) -> str:
    text = err.strerror or str(err) or type(err).__name__
    return text[0].lower() + text[1:]


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _PORTS.get(scheme, 0)


def _check_header(name: str, value: str) -> None:
    if any(c in name + value for c in "\r\n\0"):
        raise HTTPFatalError(f"refusing a header with a line break ({name})")


class Connection:
    """One socket and its receive buffer: headers are parsed from the buffer, bodies read past it into the caller's."""

    __slots__ = ("key", "sock", "tls", "used", "_buf", "_view", "_pos", "_end")

    def __init__(self, key: tuple[object, ...], sock: socket.socket) -> None:
        self.key = key
        self.sock = sock
        self.tls = False
        self.used = 0  # answers read on this connection
        self._buf = bytearray(MAX_HEAD_BYTES)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0  # unread bytes are _buf[_pos:_end]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_head(self) -> bytes:
        """Return the next status line and headers (without the blank line); bytes after them stay buffered.

        Raises:
            ProtocolError: the peer closed first, or sent more than MAX_HEAD_BYTES of headers.
            OSError, TimeoutError: the socket's own failures.
        """
        scanned = self._pos
        while True:
            i = self._buf.find(b"\r\n\r\n", max(self._pos, scanned - 3), self._end)
            if i >= 0:
                head = bytes(self._view[self._pos : i])
                self._pos = i + 4
                return head
            scanned = self._end
            if self._pos:  # room for more: move what is left to the front
                n = self._end - self._pos
                self._buf[:n] = self._view[self._pos : self._end]
                self._pos, self._end, scanned = 0, n, max(0, scanned - self._pos)
            if self._end == len(self._buf):
                raise ProtocolError(f"the answer's headers are longer than {MAX_HEAD_BYTES} bytes")
            n = self.sock.recv_into(self._view[self._end :])
            if not n:
                raise ProtocolError("the server closed the connection before answering" if self._end == 0 else "the connection closed inside the answer's headers")
            self._end += n

    def buffered(self) -> int:
        return self._end - self._pos

    def rewind(self) -> None:
        """Before a request: an empty buffer starts at 0, so received() can say whether the answer began."""
        if self._pos == self._end:
            self._pos = self._end = 0

    def received(self) -> bool:
        return self._end > 0

    def readinto(self, view: memoryview) -> int:
        """Read into view: first what came with the headers, then from the socket until view is full or the stream ends.

        A plain socket is read by ``_hashio.recv_full`` (natively: one loop
        without the GIL, zero-copy into view); TLS by recv_into.  Bytes that
        arrived before a failure are returned; the failure repeats on the
        next call.
        """
        have = self._end - self._pos
        if have:
            n = min(have, len(view))
            view[:n] = self._view[self._pos : self._pos + n]
            self._pos += n
            return n
        if not self.tls:
            timeout = self.sock.gettimeout()
            return _hashio.recv_full(self.sock.fileno(), view, len(view), -1.0 if timeout is None else timeout)
        got, want = 0, len(view)
        while got < want:
            try:
                n = self.sock.recv_into(view[got:], want - got)
            except OSError:
                if got:
                    return got
                raise
            if not n:
                break
            got += n
        return got

    def idle_ok(self) -> bool:
        """Say whether an idle connection may carry another request: nothing unread, and the peer has not closed it."""
        if self._end != self._pos:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable  # an idle peer that sends anything (its FIN, a TLS alert) is done with us

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Answer:
    """One response: status, headers (lower-case names), the URL that answered, and its body.

    ``sock`` is the socket the body comes from (the stream monitor reads its
    TCP_INFO and shuts it down to cut a read).  ``finish(reuse)`` hands the
    connection back to the pool when the body was read to its end, else
    closes it.
    """

    def __init__(self, pool: _Pool, conn: Connection, url: str, status: int, reason: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.url = url
        self._pool = pool
        self._conn: Connection | None = conn
        self._keep = keep_alive
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "").strip()
        if status in (204, 304):
            self.length: int | None = 0
        elif self.chunked:
            self.length = None
        elif length:
            if not length.isdigit() or len({v.strip() for v in length.split(",")}) > 1:
                raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
            self.length = int(length)
        else:
            self.length = None  # close-delimited
        self.sock = conn.sock

    @property
    def done(self) -> bool:
        return self.length == 0

    def readinto(self, view: memoryview) -> int:
        """Read up to len(view) bytes of a Content-Length body into view; 0 at its end (or when the peer closed early)."""
        conn = self._conn
        if conn is None or self.length is None:
            raise ProtocolError("the answer's body has no Content-Length")
        n = min(len(view), self.length)
        if n <= 0:
            return 0
        got = conn.readinto(view[:n])
        self.length -= got
        if not got:
            self._keep = False
        return got

    def read_body(self, limit: int) -> bytes:
        """Return up to limit bytes of the body, whatever its framing (error bodies, redirects)."""
        out = bytearray()
        scratch = memoryview(bytearray(64 << 10))
        conn = self._conn
        if conn is None:
            return b""
        if self.chunked:
            return self._read_chunked(conn, limit)
        while len(out) < limit and self.length != 0:
            room = min(len(scratch), limit - len(out), self.length if self.length is not None else len(scratch))
            n = conn.readinto(scratch[:room])
            if not n:
                if self.length is None:
                    self.length = 0  # close-delimited: the end
                self._keep = False
                break
            out += scratch[:n]
            if self.length is not None:
                self.length -= n
        if self.length is None:
            self._keep = False  # a close-delimited body never leaves a reusable connection
        return bytes(out)

    def _read_chunked(self, conn: Connection, limit: int) -> bytes:
        out = bytearray()
        one = memoryview(bytearray(1))

        def line() -> bytes:
            got = bytearray()
            while not got.endswith(b"\r\n"):
                if len(got) > 4096 or not conn.readinto(one):
                    raise ProtocolError("a malformed chunked body")
                got += one
            return bytes(got[:-2])

        while True:
            size_text = line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("a malformed chunked body") from None
            if size == 0:
                while line():  # trailers, up to the blank line
                    pass
                self.length = 0
                return bytes(out)
            if len(out) + size > limit:
                self._keep = False
                return bytes(out)
            part = memoryview(bytearray(size))
            got = 0
            while got < size:
                n = conn.readinto(part[got:])
                if not n:
                    raise ProtocolError("the chunked body ended early")
                got += n
            out += part
            line()

    def finish(self, reuse: bool = True) -> None:
        """Give the connection back when its body was read to its end (and reuse is allowed), else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if reuse and self._keep and self.length == 0:
            self._pool.put(conn)
        else:
            conn.close()

    def discard(self) -> None:
        """Drain a small body so the connection can be reused, then finish."""
        try:
            if self.length is None or self.length <= _DRAIN_BYTES:
                self.read_body(_DRAIN_BYTES)
        except (OSError, ProtocolError):
            self._keep = False
        self.finish()


class _Pool:
    """Idle keep-alive connections, at most max_idle per key; thread-safe."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[object, ...], list[Connection]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[object, ...]) -> Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or conn.idle_ok():
                return conn
            conn.close()

    def put(self, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()


def _parse_head(head: bytes) -> tuple[str, int, str, dict[str, str]]:
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].decode("latin-1").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"a malformed header line: {raw[:80]!r}")
        key, text = name.decode("latin-1").lower(), value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return version, int(code), reason, headers


def _keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


class HTTP1Client:
    """GETs over owned keep-alive connections (see the module docstring); thread-safe."""

    def __init__(self, *, max_idle: int, timeout_s: tuple[float, float], ca_cert: str | None, user_agent: str) -> None:
        self.timeout_s = timeout_s
        self.ca_cert = ca_cert
        self.user_agent = user_agent
        self._pool = _Pool(max(1, max_idle))
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.close()

    @staticmethod
    def supports(url: str) -> bool:
        """Say whether this client can fetch url: http(s), direct or through an http:// proxy (others stay on requests)."""
        scheme = urlsplit(url).scheme.lower()
        proxy = proxy_for(url)
        return scheme in _PORTS and (proxy is None or urlsplit(proxy).scheme.lower() == "http")

    def get(self, url: str, headers: Mapping[str, str], *, verify_tls: bool = True, authorization: str | None = None) -> Answer:
        """GET url following redirects; return the final answer with its body unread.

        ``authorization`` goes only to url's own scheme, host and port: a
        redirect elsewhere (a CDN) never sees it.

        Raises:
            ConnectFailed, ProtocolError, OSError, TimeoutError: worth retrying.
            HTTPFatalError: TLS verification, a redirect loop or an unusable redirect.
        """
        home = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            if not url.lower().startswith(("http://", "https://")):
                raise HTTPFatalError(f"the registry redirected to a URL that is not http(s): {redact_userinfo(url)[:200]}")
            extra = dict(headers)
            if authorization and _origin(url) == home:
                extra["Authorization"] = authorization
            answer = self._get_once(url, extra, verify_tls)
            location = answer.headers.get("location")
            if answer.status not in REDIRECTS or not location:
                return answer
            answer.discard()
            url = join_url(url, location)
        raise HTTPFatalError(f"the registry redirects in a loop (more than {MAX_REDIRECTS} redirects)")

    def _get_once(self, url: str, headers: Mapping[str, str], verify_tls: bool) -> Answer:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        port = parts.port or _PORTS[scheme]
        proxy = proxy_for(url)
        key = (scheme, host.lower(), port, verify_tls, self.ca_cert, proxy)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {f'http://{netloc}{path}' if proxy and scheme == 'http' else path} HTTP/1.1", f"Host: {netloc}",
                 f"User-Agent: {self.user_agent}", "Accept-Encoding: identity", "Connection: keep-alive"]
        if proxy and scheme == "http" and (auth := _proxy_authorization(proxy)):
            lines.append(f"Proxy-Authorization: {auth}")
        for name, value in headers.items():
            _check_header(name, value)
            if name.lower() not in ("host", "user-agent", "accept-encoding", "connection"):
                lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = self._pool.take(key)
        if conn is not None:
            try:
                return self._exchange(conn, request, url, reused=True)
            except _Stale:
                pass  # a kept-alive connection the server had closed: once more on a fresh one (a GET is idempotent)
        return self._exchange(self._connect(key, scheme, host, port, verify_tls, proxy), request, url, reused=False)

    def _exchange(self, conn: Connection, request: bytes, url: str, *, reused: bool) -> Answer:
        conn.rewind()
        try:
            conn.send(request)
            while True:
                version, status, reason, headers = _parse_head(conn.read_head())
                if not 100 <= status < 200 or status == 101:
                    break  # informational answers (100 Continue) precede the real one
            conn.used += 1
            return Answer(self._pool, conn, url, status, reason, headers, _keep_alive(version, headers))
        except BaseException as err:
            conn.close()
            if reused and isinstance(err, ConnectionError) and not conn.received():
                raise _Stale() from err
            raise

    def _context(self, verify_tls: bool) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(verify_tls)
            if ctx is None:
                if not verify_tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                elif self.ca_cert:
                    isdir = os.path.isdir(self.ca_cert)  # SSL_CERT_DIR: a hashed directory
                    ctx = ssl.create_default_context(capath=self.ca_cert) if isdir else ssl.create_default_context(cafile=self.ca_cert)
                else:
                    # The operating system's trust store, as the requests sessions use (a CA installed on the machine).
                    ctx = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.set_alpn_protocols(["http/1.1"])
                self._contexts[verify_tls] = ctx
            return ctx

    def _connect(self, key: tuple[object, ...], scheme: str, host: str, port: int, verify_tls: bool, proxy: str | None) -> Connection:
        connect_s, read_s = self.timeout_s
        where = urlsplit(proxy) if proxy else None
        target = (where.hostname or "", where.port or 80) if where else (host, port)
        via = f" through the proxy {redact_userinfo(proxy)}" if proxy else ""
        try:
            sock = socket.create_connection(target, timeout=connect_s)
        except TimeoutError:
            raise ConnectFailed(f"cannot connect{via}: connection timed out") from None
        except OSError as err:
            hint = "; check HTTPS_PROXY / HTTP_PROXY, or list this registry in NO_PROXY to connect directly" if proxy else ""
            raise ConnectFailed(f"cannot connect{via}: {_reason(err)}{hint}") from None
        conn = Connection(key, sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(read_s)
            if scheme == "https":
                if proxy:
                    self._tunnel(conn, host, port, proxy)
                sock.settimeout(connect_s)  # the handshake is part of connecting
                try:
                    conn.sock = self._context(verify_tls).wrap_socket(sock, server_hostname=host)
                except ssl.SSLCertVerificationError as err:
                    raise HTTPFatalError(
                        f"TLS handshake failed ({err.verify_message or err.reason}: certificate verify failed); if the registry's certificate "
                        "comes from a private CA, give that CA with --ca-cert FILE (or SSL_CERT_FILE / SSL_CERT_DIR), or install it in the "
                        "system's trust store") from None
                except ssl.SSLError as err:
                    raise HTTPFatalError(f"TLS handshake failed ({err.reason or err}); if the registry speaks plain HTTP, use an http:// name") from None
                conn.tls = True
                conn.sock.settimeout(read_s)
        except BaseException:
            conn.close()
            raise
        return conn

    def _tunnel(self, conn: Connection, host: str, port: int, proxy: str) -> None:
        """Ask the proxy for a CONNECT tunnel to host:port; its credentials go to it alone."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {self.user_agent}"]
        if auth := _proxy_authorization(proxy):
            lines.append(f"Proxy-Authorization: {auth}")
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            _version, status, reason, _headers = _parse_head(conn.read_head())
        except ProtocolError as err:
            raise ConnectFailed(f"cannot connect through the proxy {redact_userinfo(proxy)}: {err}") from None
        if status != 200 or conn.buffered():
            raise ConnectFailed(f"cannot connect through the proxy {redact_userinfo(proxy)}: it answered CONNECT with {status} {reason[:80]}")


def _proxy_authorization(proxy: str) -> str | None:
    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def check_content_range(value: str, start: int, end: int, url: str) -> int:
    """Return how many bytes a 206 answer carries, checking it starts where asked.

    Raises:
        RegistryError: a missing or mismatched Content-Range (bytes at the
            wrong offset must never be written).
    """
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if m is None or int(m.group(1)) != start or not start <= int(m.group(2)) <= end:
        raise RegistryError(206, "", f"Content-Range {value[:80]!r} does not match the requested bytes {start}-{end}", url)
    return int(m.group(2)) - start + 1


def retry_after_s(value: str | None) -> float | None:
    """Return a Retry-After header's seconds (None when absent or a date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
