"""HTTP transport: sessions, retries with backoff, and ranged reads into caller buffers.

Everything that touches ``requests`` lives here, and every ``requests``
exception is translated here into ``RegistryError`` (the registry answered
with an error) or ``TransportError`` (the network failed and retries ran out).

Only idempotent GETs are retried: on connection errors, timeouts, short
bodies, 5xx and 429 (honouring ``Retry-After``), never on other 4xx.  The
backoff is n² × 10 ms, capped, with 0.5–1.5× jitter; ``sleep`` and ``rng``
are injectable so tests never wait.

Ranged blob GETs go over connections of our own (``engine.http1``): the
body is read with ``readinto`` straight into the caller's buffer, and the
stream monitor watches and cuts the socket it is read from, with no private
attribute of requests, urllib3 or http.client.  Two cases stay on requests,
read through public urllib3 API only: a ``session_factory`` given by a test
(the fault-injecting seam), and one attempt after a 401 on an owned
connection, so the auth hook (``auth.RegistryAuth``) answers the challenge
and caches the new token that later ranges carry.

Imports errors, ``engine.monitor`` (the streams it reports bytes to) and ``engine.http1``.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
import requests.adapters
import requests.auth
import truststore
import urllib3

from ..errors import PullCancelledError, RegistryError, TransportError
from .monitor import Stream, StreamMonitor
from .diagnose import describe
from .http1 import Answer, HTTP1Client, HTTPFatalError, ShortReadError, check_content_range, join_url, retry_after_s
from .observe import RequestTiming
from .proxy import proxy_for
from .ratelimit import RateLimiter

__all__ = ["Transport", "Backoff", "Response", "RangeIgnoredError", "ShortReadError", "join_url", "parse_error", "new_session"]

USER_AGENT = "chunkpull/0.1"
# (connect, read) seconds.  The read timeout bounds every wait for bytes: a
# connection that stops sending for this long fails and is retried.
DEFAULT_TIMEOUT_S = (10.0, 30.0)
# Bodies are read in slices of at most this size (the stream monitor sees
# bytes move once per slice).  Measured (1 GiB, 8 streams): 256 KiB slices
# cost 0.25 CPU-s/GiB and ~10% throughput against 4 MiB, so slices are a
# whole default piece and the monitor allows for a slice in flight instead.
READ_SLICE = 4 << 20
# Control-plane bodies (manifests, chunksums, errors) are buffered: cap them.
MAX_BODY_BYTES = 16 << 20
# Control-plane bodies are read in pieces of this size, and their monitor is checked this often.
_CONTROL_PIECE = 64 << 10
_CONTROL_TICK_S = 0.1
# However much each attempt moves a transfer forward, it gets at most this
# many times the backoff's attempts in all.
MAX_ATTEMPTS_FACTOR = 3


class _SystemTrustAdapter(requests.adapters.HTTPAdapter):
    """An adapter that verifies certificates against the operating system's trust store (truststore)."""

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return super().init_poolmanager(*args, **kwargs)


def new_session(max_streams: int, *, verify_tls: bool = True, ca_cert: str | None = None) -> requests.Session:
    """Return a Session whose connection pools hold max_streams keep-alive connections.

    Certificates are checked against ``ca_cert`` (a PEM file, or a directory
    of hashed certificates) when given, else against the operating system's
    trust store, where a private CA installed on the machine is found.
    """
    s = requests.Session()
    # requests' default pool keeps 10 connections per host; more streams than
    # that would open and drop connections on every chunk.  Room for four
    # pulls at once, as `chunkpull serve` may run (one Session per Registry).
    kind = _SystemTrustAdapter if verify_tls and not ca_cert else requests.adapters.HTTPAdapter
    adapter = kind(pool_connections=4, pool_maxsize=4 * max(max_streams, 4) + 2, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.verify = (ca_cert or True) if verify_tls else False
    s.headers["User-Agent"] = USER_AGENT
    if not verify_tls:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return s


@dataclass(frozen=True)
class Backoff:
    """Bounded retries: ``attempts`` tries in all, waits of n² × base_s (capped) with jitter."""

    attempts: int = 6
    base_s: float = 0.010
    cap_s: float = 2.0

    def delay_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return min(self.cap_s, attempt * attempt * self.base_s) * (0.5 + rng())


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]
    url: str


class RangeIgnoredError(Exception):
    """The server answered a ranged GET with the whole body (200)."""


def parse_error(status: int, body: bytes, url: str) -> RegistryError:
    """Turn an error response into a RegistryError.

    Bodies come as ``{"code": …, "error": …}`` or ``{"errors": [{"code", "message"}]}``
    (the first entry counts); anything else is kept as raw text.
    """
    text = body.decode("utf-8", "replace").strip()
    code, message = "", text
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = str(errors[0].get("code") or ""), str(errors[0].get("message") or "")
        elif "error" in doc or "code" in doc:
            code, message = str(doc.get("code") or ""), str(doc.get("error") or "")
    return RegistryError(status, code, message[:1000], url)


_RETRYABLE_EXC = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    socket.timeout,
    ConnectionError,
    ShortReadError,
)


class Transport:
    """GETs with bounded retries over one pooled Session per TLS mode.

    Thread-safe: the sessions' pools are shared by all worker threads.
    """

    def __init__(
        self,
        *,
        max_streams: int,
        session_factory: Callable[..., requests.Session] | None = None,
        backoff: Backoff | None = None,
        timeout_s: tuple[float, float] = DEFAULT_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        stall_s: float = 5.0,
        ca_cert: str | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.max_streams = max_streams
        self.limiter = limiter  # the process-wide bandwidth cap, shared by every stream
        self._factory = session_factory or new_session
        self.ca_cert = ca_cert
        self.backoff = backoff or Backoff()
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.rng = rng
        self._sessions: dict[bool, requests.Session] = {}
        self._lock = threading.Lock()
        # Control-plane bodies (manifests, chunksums) are watched like chunks
        # by a monitor of their own, ticked by a thread that runs only while
        # one is in flight: none may hang on a registry that drips or stalls.
        self._control = StreamMonitor(stall_s=stall_s, max_aborts=0)
        self._ticker: threading.Thread | None = None
        # Blob ranges go over our own connections, unless a test injected sessions (then those carry them).
        self._http = HTTP1Client(max_idle=max_streams, timeout_s=timeout_s, ca_cert=ca_cert, user_agent=USER_AGENT)
        self._owned = session_factory is None
        self.observer: Callable[[RequestTiming], None] | None = None  # told every request's timing (benchmarks)

    def request_args(self, url: str, verify_tls: bool) -> dict:
        """Per-request TLS and proxy arguments for requests.

        TLS: ``verify=False`` for https+insecure, the chosen CA, or nothing.
        Explicit per request because requests replaces an unset per-request
        verify with REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when set
        (psf/requests#3829): Session.verify alone would neither turn
        verification off nor keep a chosen CA.  With no CA chosen, verifying
        requests pass nothing, so a session_factory's own settings apply.
        Proxy: decided by ``engine.proxy`` (curl's rules, NO_PROXY with
        host:port); ``None`` values make requests go direct.
        """
        proxy = proxy_for(url)
        args: dict = {"proxies": {"http": proxy, "https": proxy, "all": proxy}}
        if not verify_tls:
            args["verify"] = False
        elif self.ca_cert:
            args["verify"] = self.ca_cert
        return args

    def session(self, verify_tls: bool = True) -> requests.Session:
        with self._lock:
            s = self._sessions.get(verify_tls)
            if s is None:
                # A custom factory (a test seam) gets the CA per request only (see request_args).
                kwargs = {"ca_cert": self.ca_cert} if self.ca_cert and verify_tls and self._factory is new_session else {}
                s = self._sessions[verify_tls] = self._factory(self.max_streams, verify_tls=verify_tls, **kwargs)
            return s

    def get_plain(self, url: str, *, verify_tls: bool = True, **kwargs) -> requests.Response:
        """One GET with this transport's TLS trust and proxy choice and no retries (token realms)."""
        return self.session(verify_tls).get(url, **self.request_args(url, verify_tls), **kwargs)

    def close(self) -> None:
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()
        self._http.close()

    # -- control plane -------------------------------------------------------

    def get(
        self,
        url: str,
        *,
        verify_tls: bool = True,
        auth: requests.auth.AuthBase | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        max_bytes: int = MAX_BODY_BYTES,
        cancel: threading.Event | None = None,
    ) -> Response:
        """GET url and return the whole (capped) body; retry what is worth retrying.

        A status outside ``ok`` raises RegistryError (after retries for
        retryable ones); a status listed in ``ok`` is returned as is.

        Raises:
            RegistryError, TransportError.
        """
        return self.retry(lambda: self._get_once(url, verify_tls, auth, headers, ok, max_bytes, cancel), url, cancel=cancel)

    def _get_once(
        self, url: str, verify_tls: bool, auth, headers: dict[str, str] | None, ok: tuple[int, ...], max_bytes: int, cancel: threading.Event | None
    ) -> Response:
        sent = time.perf_counter()
        with self.session(verify_tls).get(url, headers=headers, auth=auth, timeout=self.timeout_s, stream=True, **self.request_args(url, verify_tls)) as r:
            first = time.perf_counter()
            stream = self._control.stream(url, cancel)
            stream.attach(_SessionBody(r))
            self._tick()
            try:
                body = self._read_body(r, max_bytes + 1, stream, url)
            finally:
                stream.detach()
                self._control.done(stream)
                if self.observer is not None:
                    self.observer(RequestTiming(url, r.url or url, r.status_code, False, sent, first, time.perf_counter()))
            if len(body) > max_bytes:
                raise RegistryError(r.status_code, "", f"response body is larger than the {max_bytes}-byte limit", url)
            if r.status_code not in ok:
                err = parse_error(r.status_code, body, url)
                err.retry_after_s = retry_after_s(r.headers.get("Retry-After"))
                raise err
            return Response(r.status_code, body, dict(r.headers), r.url)

    @staticmethod
    def _read_body(r: requests.Response, limit: int, stream: Stream, url: str) -> bytes:
        """Read up to limit bytes of a (small) body in pieces, so a cut by the monitor ends it at once."""
        parts, n = [], 0
        try:
            while n < limit:
                piece = r.raw.read(min(_CONTROL_PIECE, limit - n), decode_content=True)
                if not piece:
                    break
                parts.append(piece)
                n += len(piece)
                stream.advance(len(piece))
        except (OSError, urllib3.exceptions.HTTPError) as err:
            if stream.aborted:
                raise _aborted(stream, url, n) from err
            raise
        if stream.aborted:
            raise _aborted(stream, url, n)
        return b"".join(parts)

    def _tick(self) -> None:
        """Make sure the control-plane monitor is being checked (one thread, only while a body is in flight)."""
        with self._lock:
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick_loop, name="chunkpull-control-monitor", daemon=True)
                self._ticker.start()

    def _tick_loop(self) -> None:
        while True:
            with self._lock:
                if not len(self._control):
                    self._ticker = None
                    return
            self._control.check()
            time.sleep(_CONTROL_TICK_S)

    def request(
        self, method: str, url: str, *, verify_tls: bool = True, auth: requests.auth.AuthBase | None = None, data=None, headers: dict[str, str] | None = None
    ) -> requests.Response:
        """Send one non-idempotent request (push); no retries.

        Raises:
            TransportError.
        """
        try:
            return self.session(verify_tls).request(method, url, data=data, headers=headers, auth=auth, timeout=self.timeout_s, **self.request_args(url, verify_tls))
        except requests.RequestException as err:
            raise TransportError(f"request error {url}: {err}") from err

    def retry(
        self,
        attempt: Callable[[], object],
        url: str,
        *,
        cancel: threading.Event | None = None,
        position: Callable[[], int] | None = None,
        attempts: int | None = None,
    ):
        """Call attempt() until it succeeds or a non-retryable error; bounded by ``backoff`` (or ``attempts``).

        ``position()``, when given, says how far the work has got (bytes):
        a failed attempt that moved it forward does not use up an attempt
        (a long chunk over a flaky link keeps going), within a hard cap of
        ``MAX_ATTEMPTS_FACTOR`` times the attempts.

        Raises:
            RegistryError: a non-retryable status, or retries exhausted on one.
            TransportError: the network failed on every attempt (or TLS
                verification failed, which is not retried).
            PullCancelledError: cancel was set.
        """
        last: BaseException | None = None
        n = 0  # failures without progress
        where = position() if position else 0
        limit = attempts or self.backoff.attempts
        for total in range(limit * MAX_ATTEMPTS_FACTOR):
            if n >= limit:
                break
            if total:
                self._pause(self.backoff.delay_s(n, self.rng), last, cancel)
            if cancel is not None and cancel.is_set():
                raise PullCancelledError()
            try:
                return attempt()
            except RegistryError as err:
                if not err.retryable:
                    raise
                last = err
            except requests.exceptions.SSLError as err:
                raise TransportError(f"request error {url}: {describe(err)}") from err  # retrying cannot help
            except HTTPFatalError as err:
                raise TransportError(f"request error {url}: {err}") from err  # TLS verification, a redirect loop: retrying cannot help
            except (requests.exceptions.TooManyRedirects, requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                    requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader) as err:
                # The registry (or a redirect it sent) is unusable as it is: say so, do not retry.
                raise TransportError(f"request error {url}: {describe(err)}") from err
            except _RETRYABLE_EXC as err:
                last = err
            now = position() if position else 0
            if now > where:
                where, n = now, 0
            n += 1
        if isinstance(last, RegistryError):
            raise last
        raise TransportError(f"request error {url}: {describe(last, proxy=proxy_for(url))} (after {limit} attempts)") from last

    def _pause(self, delay: float, last: BaseException | None, cancel: threading.Event | None) -> None:
        hint = getattr(last, "retry_after_s", None)
        if hint is not None:
            delay = min(max(delay, hint), 60.0)
        if cancel is not None and self.sleep is time.sleep:
            cancel.wait(delay)  # wakes at once on cancel
        else:
            self.sleep(delay)  # injected (tests): cancel is checked right after

    # -- data plane ----------------------------------------------------------

    def read_range(
        self,
        url: str,
        start: int,
        end: int,
        buf: memoryview | Callable[[], memoryview],
        sink: Callable[[int, memoryview], None],
        *,
        verify_tls: bool = True,
        auth: requests.auth.AuthBase | None = None,
        stream: Stream | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> str:
        """GET bytes start..end (inclusive) of url once, handing each piece to sink(offset, view); return the URL that answered.

        The URL that answered differs from url when the registry redirected
        (a CDN): the caller may send the next ranges there directly.
        ``on_answer(url that answered)`` is called as soon as a usable answer's
        headers are in, before its body, so other ranges need not wait for it.

        Pieces are read into buf: one buffer reused for every piece (sink
        must be done with a piece when it returns), or a callable returning
        a fresh buffer per piece (sink then owns each piece it is handed).  One attempt: the caller retries, resuming from
        where the last attempt stopped.

        Raises:
            RegistryError: an error status.
            ShortReadError: the body ended early, stalled past the read timeout, or came without a Content-Length.
            ConnectionError, OSError (http1.ConnectFailed, ProtocolError), requests exceptions: network
                failures, which the caller's retry catches; http1.HTTPFatalError: retrying cannot help.
        """
        want = end - start + 1
        offered = want  # bytes this answer carries (a 206 may carry fewer)
        sent = time.perf_counter()
        body = self._open_range(url, {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}, verify_tls, auth)
        first, got = time.perf_counter(), 0
        if stream is not None:
            stream.attach(body)
        try:
            if body.status not in (200, 206):
                # Named by the URL that answered: after a redirect, that is the target's.
                err = parse_error(body.status, body.read_body(MAX_BODY_BYTES), body.url or url)
                err.retry_after_s = retry_after_s(body.headers.get("retry-after"))
                raise err
            if body.status == 200 and start:
                # The server ignored Range and is sending the whole blob.
                # Skipping to our offset on every chunk would move O(n²)
                # bytes; tell the caller to switch to one stream instead.
                raise RangeIgnoredError(f"{url}: the registry ignored the Range header (answered 200)")
            encoding = body.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("identity", ""):
                # We asked for identity: encoded bytes would be written as
                # they are and only caught by the digest.  Refuse them here.
                raise ShortReadError(f"{url}: the registry sent a {encoding[:40]}-encoded body despite Accept-Encoding: identity", 0)
            if body.length is None:
                # Without a Content-Length a cut body cannot be told from a whole one: ask again (another connection may say).
                raise ShortReadError(f"{url}: the registry answered {body.status} without a Content-Length", 0)
            if body.status == 206:
                # A shorter answer than asked is read, then reported short:
                # the caller resumes after it (or learns the blob is short).
                offered = check_content_range(body.headers.get("content-range", ""), start, end, url)
            if on_answer is not None:
                on_answer(body.url or url)
            next_buf = buf if callable(buf) else lambda: buf
            while got < offered:
                if stream is not None:
                    stream.pause()
                piece = next_buf()  # may wait for the pool: not the network's fault
                if stream is not None:
                    stream.resume()
                room = min(offered - got, len(piece))
                filled, short = self._fill(body, piece, room, stream, url, got, want)
                if filled:
                    sink(start + got, piece[:filled])  # what arrived is kept, even before a fault
                    got += filled
                if short is not None:
                    raise short
            if got < want:
                raise ShortReadError(f"{url}: the registry sent bytes {start}-{start + got - 1} of {start}-{end}", got)
            return body.url or url
        finally:
            if stream is not None:
                stream.detach()
            # Reused only when read to its last byte, uncut: a connection the monitor shut down never goes back to the pool.
            body.finish(got == offered and body.status == 206 and not (stream is not None and stream.aborted))
            if self.observer is not None:
                self.observer(RequestTiming(url, body.url or url, body.status, True, sent, first, time.perf_counter()))

    def _open_range(self, url: str, headers: dict[str, str], verify_tls: bool, auth: requests.auth.AuthBase | None) -> _Body:
        """Send a ranged GET; return the answer with its headers read and its body not."""
        if self._owned and HTTP1Client.supports(url):
            answer = self._http.get(url, headers, verify_tls=verify_tls, authorization=_authorization(auth, url) if auth is not None else None)
            if answer.status != 401 or auth is None:
                return answer
            # The token expired or was revoked: this one attempt goes through requests, whose
            # response hook (the auth object) answers the challenge and caches the new token.
            answer.discard()
        r = self.session(verify_tls).get(url, headers=headers, auth=auth, timeout=self.timeout_s, stream=True, **self.request_args(url, verify_tls))
        return _SessionBody(r)

    def _throttle(self, n: int, stream: Stream | None) -> None:
        """Wait for the bandwidth cap; the wait is ours, not the network's, so the monitor does not count it."""
        if stream is not None:
            stream.pause()
        try:
            self.limiter.take(n, stream.cancel if stream is not None else None)
        finally:
            if stream is not None:
                stream.resume()

    def _fill(self, fp: _Body, piece: memoryview, room: int, stream: Stream | None, url: str, got: int, want: int) -> tuple[int, ShortReadError | None]:
        """Read up to room bytes into piece, in slices so the monitor sees bytes move."""
        filled = 0
        try:
            while filled < room:
                if stream is not None:
                    stream.window = min(READ_SLICE, room - filled)
                n = fp.readinto(piece[filled : filled + min(READ_SLICE, room - filled)])
                if not n:
                    if stream is not None and stream.aborted:
                        return filled, _aborted(stream, url, got + filled, want)
                    return filled, ShortReadError(f"{url}: body ended after {got + filled} of {want} bytes", got + filled)
                filled += n
                if stream is not None:
                    stream.advance(n)
                if self.limiter is not None:
                    self._throttle(n, stream)
        except (socket.timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError) as err:
            short = ShortReadError(f"{url}: no bytes for {self.timeout_s[1]:g} s after {got + filled} of {want}", got + filled)
            short.__cause__ = err
            return filled, short
        except (OSError, urllib3.exceptions.HTTPError) as err:  # the latter: a session's body (urllib3 wraps resets)
            if stream is not None and stream.aborted:
                short = _aborted(stream, url, got + filled, want)
            else:
                short = ShortReadError(f"{url}: connection lost after {got + filled} of {want} bytes: {err}", got + filled)
            short.__cause__ = err
            return filled, short
        return filled, None


def _aborted(stream: Stream, url: str, got: int, want: int | None = None) -> ShortReadError:
    """Return the error a read ends with when the monitor cut its connection (it says why)."""
    of = f" of {want}" if want is not None else ""
    return ShortReadError(f"{url}: cut, {stream.aborted}, after {got}{of} bytes", got)


def _authorization(auth: requests.auth.AuthBase, url: str) -> str | None:
    """Return the Authorization header auth would put on a GET of url (None: it adds none), through requests' public API."""
    prepared = auth(requests.Request("GET", url).prepare())
    return prepared.headers.get("Authorization")


class _SessionCut:
    """How the monitor cuts a requests response: urllib3's public ``HTTPResponse.shutdown()`` (2.3+), under the reader."""

    __slots__ = ("_raw",)

    def __init__(self, raw: urllib3.HTTPResponse) -> None:
        self._raw = raw

    def shutdown(self, how: int) -> None:
        try:
            self._raw.shutdown()
        except (ValueError, RuntimeError) as err:  # no socket to shut, or already back in the pool
            raise OSError(str(err)) from err


class _SessionBody:
    """A requests response behind the same face as an ``http1.Answer``, read through public urllib3 API only.

    Its ``sock`` lets the monitor cut it but says nothing of TCP_INFO, so
    the monitor judges it by the bytes the reader reports.
    """

    def __init__(self, r: requests.Response) -> None:
        self.r = r
        self.status = r.status_code
        self.headers = r.headers
        self.url = r.url
        raw = r.raw
        self.sock = _SessionCut(raw) if hasattr(raw, "shutdown") else None
        # urllib3 decodes what we did not ask for (a gzip body is refused at its headers): its length is not the body's.
        self.length: int | None = getattr(raw, "length_remaining", None)
        if self.length is None and r.headers.get("Content-Length", "").strip().isdigit():
            self.length = int(r.headers["Content-Length"])

    def readinto(self, view: memoryview) -> int:
        return int(self.r.raw.readinto(view))

    def read_body(self, limit: int) -> bytes:
        return bytes(self.r.raw.read(limit, decode_content=True))

    def finish(self, reuse: bool = True) -> None:
        if reuse and getattr(self.r.raw, "length_remaining", None) == 0:
            self.r.raw.release_conn()  # body read to its last byte: keep the connection alive
        else:
            self.r.close()


_Body = Answer | _SessionBody
