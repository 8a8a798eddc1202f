"""The Ollama-compatible local HTTP API (SPEC section 5) and the server that runs it.

This module owns ``Local``, the WSGI application behind ``chunkpull serve``
(``POST /api/pull``, ``DELETE /api/delete``, ``GET /api/tags``,
``GET /api/version`` and ``GET|HEAD /``); the one table that maps exceptions
to HTTP statuses and error codes; the table of pulls in flight, so that
clients asking for the same model at once share one download; the NDJSON
progress stream; and ``Server`` / ``serve``, which run a WSGI application on
``_httpd``'s threaded server, sending every progress line as it is made.
It is a thin handler: every byte is moved, checked and committed by
``Registry.pull``; this module only starts pulls, shares them and reports
on them.  It imports ``registry``, ``progress``, ``names``, ``errors`` and
``_httpd``; it must not import ``cache``, ``chunks``, ``transport``,
``testregistry`` or ``cli``.  Within chunkpull only ``cli`` (for ``serve``)
and the package's lazy ``chunkpull.Local`` import it, so ``import chunkpull``
does not load the HTTP server.
"""

from __future__ import annotations

import http
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from . import _httpd
from .errors import (
    ChunkpullError,
    IncompletePullError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidDigestError,
    InvalidManifestError,
    InvalidNameError,
    ModelNotFoundError,
    PullCancelledError,
    RegistryError,
    TransportError,
)
from .names import Name, Ref
from .progress import CACHED, START, Aggregator, Progress
from .registry import Registry

__all__ = ["Local", "PullInFlight", "Server", "serve", "PROGRESS_INTERVAL_S"]

log = logging.getLogger("chunkpull.api")
# Wire-level events of the embedded server (debug only); the per-request
# records come from Local's logger.
_wire_log = logging.getLogger("chunkpull.api.server")

# SPEC section 5: progress lines at most every ~100 ms.
PROGRESS_INTERVAL_S = 0.1
# API request bodies are a few dozen bytes of JSON; refuse anything absurd
# before reading it into memory.
MAX_BODY_BYTES = 1 << 20
NDJSON = "application/x-ndjson"
JSON = "application/json"
RUNNING_TEXT = b"chunkpull is running"


# --------------------------------------------------------------------------
# Errors and the one table that maps them to statuses
# --------------------------------------------------------------------------


class _HTTPError(Exception):
    """An error of the request itself (not of a pull), with its status, code and extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = list(headers)


# (exception class, HTTP status, error code, fixed message).  The first row
# whose class matches wins, so subclasses come before their bases.  A fixed
# message of None sends the error's own text when it is written for users
# (see _is_public); anything not in the table is a 500.
_ERROR_TABLE: tuple[tuple[type[BaseException], int, str, str | None], ...] = (
    (InvalidNameError, 400, "bad_request", None),
    (InvalidDigestError, 400, "bad_request", None),
    # SPEC section 5: the answer says "model not found"; a stream's error
    # line keeps the name (model "x" not found).
    (ModelNotFoundError, 404, "not_found", "model not found"),
    (InsufficientSpaceError, 507, "insufficient_storage", None),
    (PullCancelledError, 503, "unavailable", None),
    # The upstream registry failed or sent bad data: not our fault, and the
    # message (URL, upstream status and text) is what the user needs.
    (RegistryError, 502, "bad_gateway", None),
    (TransportError, 502, "bad_gateway", None),
    (InvalidManifestError, 502, "bad_gateway", None),
    (IntegrityError, 502, "bad_gateway", None),
    (IncompletePullError, 502, "bad_gateway", None),
)
_INTERNAL_MESSAGE = "internal server error"


def _is_public(err: BaseException) -> bool:
    """Return whether err's text is written for users and may be sent to clients.

    chunkpull's own errors are (``model "x" not found``, the upstream URL and
    status); anything else is internal: it goes to the log, never to a client.
    """
    return isinstance(err, (ChunkpullError, _HTTPError))


def _public_message(err: BaseException) -> str:
    return str(err) if _is_public(err) else _INTERNAL_MESSAGE


def _describe(err: BaseException) -> tuple[int, str, str]:
    """Return (status, code, client-safe message) for err, from the one table."""
    if isinstance(err, _HTTPError):
        return err.status, err.code, str(err)
    for cls, status, code, message in _ERROR_TABLE:
        if isinstance(err, cls):
            return status, code, message or _public_message(err)
    return 500, "internal_error", _INTERNAL_MESSAGE


def _json_bytes(obj: object) -> bytes:
    # Compact and newline-terminated, byte for byte what Go's json.Encoder
    # writes, so that clients (and the seed's substring checks) see Ollama's
    # exact lines.
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------
# Pulls in flight
# --------------------------------------------------------------------------


class PullInFlight:
    """One running pull, shared by every request that asked for its model.

    ``name`` is the text of the first request, ``progress`` the Aggregator
    that every listening stream reads and waits on (``progress.wait``; it is
    also woken when the pull ends), ``cancel`` is set when the last listener
    leaves (or the server shuts down), ``done`` when ``Registry.pull`` has
    returned, with ``error`` set if it raised.  ``listeners`` counts the
    requests still waiting on it.  Attributes are for reading; only
    ``Local`` changes them.
    """

    def __init__(self, ref: Ref, name: str) -> None:
        self.ref = ref
        self.name = name
        self.progress = Aggregator()
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.listeners = 0
        self.thread: threading.Thread | None = None
        # True once every layer has been announced: Registry.pull reports a
        # start/cached event for every blob before any other event, so the
        # first other event (or the end of the pull) proves the list is whole.
        self.announced = False

    def report(self, event: Progress) -> None:
        """The progress callback handed to Registry.pull (worker threads; never blocks long)."""
        # Before the event is folded in: a stream woken by it must see the flag.
        if event.state not in (START, CACHED):
            self.announced = True
        self.progress(event)

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.announced = True
        self.done.set()
        self.progress.touch()


# --------------------------------------------------------------------------
# The WSGI application
# --------------------------------------------------------------------------

# path -> (methods, the Local method that answers); HEAD is answered wherever GET is.
_ROUTES: dict[str, tuple[tuple[str, ...], str]] = {
    "/": (("GET", "HEAD"), "_root"),
    "/api/version": (("GET", "HEAD"), "_version"),
    "/api/tags": (("GET", "HEAD"), "_tags"),
    "/api/pull": (("POST",), "_pull"),
    "/api/delete": (("DELETE",), "_delete"),
}


@dataclass
class _Reply:
    """A complete (non-streaming) answer."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: Iterable[tuple[str, str]] = ()


class Local:
    """The Ollama-compatible local API as a WSGI application (SPEC section 5).

    ``registry`` does the pulls, deletes and listings; names are completed
    with its mask.  ``fallback``, if given, is a WSGI application that gets
    every request for a path this API does not know (it may be set or
    changed later, as an attribute); otherwise such requests get a 404.
    ``logger`` (default ``logging.getLogger("chunkpull.api")``) gets one
    record per request this app answers, none for those passed to the
    fallback: ERROR for 5xx, WARNING for 4xx, INFO otherwise, reading
    ``error="…" status=N method=M path=P content_length=L remote=ADDR``.
    For a 500 the error is the internal one the client never sees, with
    the traceback attached; a streamed pull is logged when its stream ends,
    with the error that ended it (``client disconnected`` when the client
    left first).

    The endpoints, the NDJSON progress stream and the error answers
    (``{"code": …, "error": …}``, statuses from ``_ERROR_TABLE``) are those
    of SPEC section 5.  Two choices the SPEC leaves open: a failed stream
    ends with ``{"status":"error: <message>"}`` (the older form Ollama's seed
    test expects) and then ``{"error":"<message>"}``; and ``/api/tags``
    shortens names against the mask as Ollama shows them (``smol:latest``).

    Pulls run on their own threads, one per model in flight, keyed by the
    canonical name: a second request for a model being pulled listens to
    the same pull instead of starting another.  When the last listener
    leaves (its client disconnected, and the WSGI server called ``close()``
    on the response) the pull is cancelled; work files are kept for the
    next pull to resume.  Thread-safe: one ``Local`` serves any number of
    concurrent requests.
    """

    progress_interval_s = PROGRESS_INTERVAL_S
    # How often a request that is only waiting (a stalled pull, a
    # non-streaming pull) checks whether its client is still there, when the
    # server offers a way to check ("chunkpull.peer_closed" in the environ).
    poll_s = 0.5

    def __init__(self, registry: Registry, *, fallback: Callable | None = None, logger: logging.Logger | None = None) -> None:
        self.registry = registry
        self.fallback = fallback
        self.logger = logger if logger is not None else log
        self._lock = threading.Lock()
        self._flights: dict[Ref, PullInFlight] = {}
        self._closed = False

    # -- WSGI entry ------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Answer one request (WSGI); a streaming pull returns an iterable whose close() must be called.

        Raises:
            Nothing of its own: every failure becomes an error answer (or a
            stream's error line) through the error table.  Requests passed to
            the fallback raise whatever the fallback raises.
        """
        path = environ.get("PATH_INFO") or "/"
        method = (environ.get("REQUEST_METHOD") or "GET").upper()
        route = _ROUTES.get(path)
        if route is None and self.fallback is not None:
            return self.fallback(environ, start_response)
        try:
            if route is None:
                raise _HTTPError(404, "not_found", "not found")
            methods, endpoint = route
            if method not in methods:
                raise _HTTPError(405, "method_not_allowed", "method not allowed", [("Allow", ", ".join(sorted(methods)))])
            result = getattr(self, endpoint)(environ)
        except Exception as err:  # noqa: BLE001 - every failure becomes an answer via the table
            status, code, message = _describe(err)
            self._log(environ, status, err)
            headers = err.headers if isinstance(err, _HTTPError) else ()
            result = _Reply(status, _json_bytes({"code": code, "error": message}), JSON, headers)
        else:
            if isinstance(result, _Reply):
                self._log(environ, result.status, None)
        if isinstance(result, _PullStream):
            start_response("200 OK", [("Content-Type", NDJSON), ("Cache-Control", "no-store")])
            return result
        headers = [("Content-Type", result.content_type), ("Content-Length", str(len(result.body))), *result.headers]
        start_response(f"{result.status} {_reason(result.status)}", headers)
        return [b""] if method == "HEAD" else [result.body]

    def _log(self, environ: dict, status: int, error: BaseException | str | None) -> None:
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        exc_info = None
        if isinstance(error, BaseException) and not _is_public(error):
            # Unexpected: the client saw a generic message, so the log must
            # carry everything, traceback included.
            exc_info = (type(error), error, error.__traceback__)
        remote = environ.get("REMOTE_ADDR") or "-"
        if environ.get("REMOTE_PORT"):
            remote = f"{remote}:{environ['REMOTE_PORT']}"
        self.logger.log(
            level,
            "error=%s status=%d method=%s path=%s content_length=%s remote=%s",
            json.dumps("" if error is None else str(error), ensure_ascii=False),
            status,
            environ.get("REQUEST_METHOD") or "-",
            environ.get("PATH_INFO") or "/",
            environ.get("CONTENT_LENGTH") or "0",
            remote,
            exc_info=exc_info,
        )

    # -- endpoints -------------------------------------------------------------

    def _pull(self, environ: dict) -> _Reply | _PullStream:
        params = _read_params(environ)
        stream = True if params.get("stream") is None else params["stream"]
        if not isinstance(stream, bool):
            raise _HTTPError(400, "bad_request", f'invalid request: "stream" must be true or false, not {json.dumps(stream)}')
        model = _model_param(params)
        if stream:
            # Even an invalid name is reported inside the stream (status 200),
            # as Ollama does: its clients expect the stream to start first.
            return _PullStream(self, environ, model)
        ref = self.registry.parse(model)
        flight = self._join(ref, model)
        try:
            while not flight.done.wait(self.poll_s):
                if _peer_closed(environ):
                    raise _HTTPError(499, "client_closed_request", "client disconnected")
        finally:
            self._leave(flight)
        if flight.error is not None:
            raise flight.error
        return _Reply(200, _json_bytes({"status": "success"}))

    def _delete(self, environ: dict) -> _Reply:
        model = _model_param(_read_params(environ))
        if not self.registry.unlink(model):
            raise ModelNotFoundError(model)
        return _Reply(200)

    def _root(self, environ: dict) -> _Reply:
        return _Reply(200, RUNNING_TEXT, "text/plain; charset=utf-8")

    def _tags(self, environ: dict) -> _Reply:
        mask = Name.parse(self.registry.mask)
        paths = dict(self.registry.cache.links())
        rows = []
        for name, m in self.registry.list_local():
            try:
                mtime = paths[name].stat().st_mtime
            except (KeyError, OSError):
                continue  # removed while we listed
            # Ollama shows the tag always, host and namespace only where
            # they differ from the mask: "smol:latest", "me/smol:q4".
            short = Name(name.host, name.namespace, name.model).display_shortest(mask) + ":" + name.tag
            rows.append((mtime, short, m))
        rows.sort(key=lambda r: (-r[0], r[1].lower()))
        models = [
            {
                "name": short,
                "model": short,
                "modified_at": datetime.fromtimestamp(mtime).astimezone().isoformat(),
                "size": m.size,
                "digest": m.digest.hex,
                "details": self._details(m),
            }
            for mtime, short, m in rows
        ]
        return _Reply(200, _json_bytes({"models": models}))

    def _details(self, m) -> dict:
        """Return Ollama's ``details`` object, read from the model's config blob when present."""
        details = {"parent_model": "", "format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""}
        if m.config is None or m.config.size > MAX_BODY_BYTES:
            return details
        try:
            cfg = json.loads(self.registry.cache.blob_path(m.config.digest).read_bytes())
        except (OSError, ValueError):
            return details
        if not isinstance(cfg, dict):
            return details
        for key, source in (("format", "model_format"), ("family", "model_family"), ("parameter_size", "model_type"), ("quantization_level", "file_type")):
            if isinstance(cfg.get(source), str):
                details[key] = cfg[source]
        families = cfg.get("model_families")
        if isinstance(families, list) and all(isinstance(f, str) for f in families):
            details["families"] = families
        return details

    def _version(self, environ: dict) -> _Reply:
        from . import __version__  # at call time: the package may be importing this module

        return _Reply(200, _json_bytes({"version": __version__}))

    # -- the in-flight table ---------------------------------------------------

    def in_flight(self) -> list[PullInFlight]:
        """Return the pulls running now (a snapshot, for status pages and tests)."""
        with self._lock:
            return list(self._flights.values())

    def _join(self, ref: Ref, model: str) -> PullInFlight:
        """Listen to the pull of ref, starting it if none is running.

        Raises:
            _HTTPError: 503, close() was called.
        """
        with self._lock:
            if self._closed:
                raise _HTTPError(503, "unavailable", "server is shutting down")
            flight = self._flights.get(ref)
            if flight is None:
                flight = self._flights[ref] = PullInFlight(ref, model)
                flight.thread = threading.Thread(target=self._run, args=(flight,), name=f"chunkpull-api-pull {ref.name}", daemon=True)
                flight.thread.start()
            flight.listeners += 1
            return flight

    def _leave(self, flight: PullInFlight) -> None:
        with self._lock:
            flight.listeners -= 1
            if flight.listeners > 0 or flight.done.is_set():
                return
            # Nobody is listening any more: stop the download, and take the
            # flight out of the table now so that a new request starts a
            # fresh pull instead of joining one that is winding down.
            flight.cancel.set()
            if self._flights.get(flight.ref) is flight:
                del self._flights[flight.ref]

    def _run(self, flight: PullInFlight) -> None:
        error: BaseException | None = None
        try:
            self.registry.pull(flight.name, progress=flight.report, cancel=flight.cancel)
        except BaseException as err:  # noqa: BLE001 - handed to every listener, never lost
            error = err
        finally:
            with self._lock:
                if self._flights.get(flight.ref) is flight:
                    del self._flights[flight.ref]
            flight.finish(error)

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel every pull in flight and wait (at most timeout_s) for them to stop.

        Work in progress is kept for a later pull to resume; streams end with
        an error line.  New pull requests are refused with 503 afterwards.
        """
        with self._lock:
            self._closed = True
            flights = list(self._flights.values())
        for f in flights:
            f.cancel.set()
        deadline = time.monotonic() + timeout_s
        for f in flights:
            if f.thread is not None:
                f.thread.join(max(0.0, deadline - time.monotonic()))


class _PullStream:
    """The NDJSON body of one streaming pull: a WSGI iterable whose close() leaves the pull.

    The first ``next()`` joins (or starts) the pull before it returns the
    first line, so a client that has read ``pulling manifest`` is known to
    be listening.  ``close()`` is called by the WSGI server when the body is
    done or the client went away; if the pull is still running and this was
    its last listener, the pull is cancelled.
    """

    def __init__(self, local: Local, environ: dict, model: object) -> None:
        self._local = local
        self._environ = environ
        self._model = model
        self._flight: PullInFlight | None = None
        self._error: BaseException | str | None = None
        self._finished = False
        self._closed = False
        self._lines = self._generate()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._lines)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._lines.close()
        if self._flight is not None:
            self._local._leave(self._flight)
        error = self._error
        if error is None and not self._finished:
            error = "client disconnected"
        self._local._log(self._environ, 200, error)

    def _generate(self) -> Iterator[bytes]:
        try:
            yield from self._lines_of_pull()
        except Exception as err:  # noqa: BLE001 - a bug here: tell the client, log it at close()
            yield from self._fail(err)
        self._finished = True

    def _lines_of_pull(self) -> Iterator[bytes]:
        local = self._local
        try:
            ref = local.registry.parse(self._model)
            self._flight = flight = local._join(ref, self._model)
        except (InvalidNameError, _HTTPError) as err:
            yield _json_bytes({"status": "pulling manifest"})
            yield from self._fail(err)
            return
        yield _json_bytes({"status": "pulling manifest"})
        announced: set[str] = set()
        sent: dict[str, int] = {}
        seen = -1
        while True:
            version = flight.progress.wait(seen, local.poll_s)
            if version == seen:
                # Nothing happened for poll_s (a stall, or a slow chunksums
                # answer): no write would tell us the client left, so ask.
                if _peer_closed(self._environ):
                    self._error = "client disconnected"
                    return
                continue
            seen = version
            done = flight.done.is_set()
            if flight.announced:
                yield from _progress_lines(flight.progress, announced, sent)
            if done:
                break
            # Throttle: at most one batch per interval, but wake at once
            # when the pull ends so the closing lines are not delayed.
            flight.done.wait(local.progress_interval_s)
        if flight.error is not None:
            yield from self._fail(flight.error)
            return
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield _json_bytes({"status": status})

    def _fail(self, err: BaseException) -> Iterator[bytes]:
        self._error = err
        message = _public_message(err)
        yield _json_bytes({"status": f"error: {message}"})
        yield _json_bytes({"error": message})


def _progress_lines(progress: Aggregator, announced: set[str], sent: dict[str, int]) -> Iterator[bytes]:
    """Yield the lines a stream owes: new layers' announcements first, then forward progress only."""
    layers = progress.layers()
    for layer in layers:
        if layer.digest not in announced:
            announced.add(layer.digest)
            yield _json_bytes({"digest": layer.digest, "total": layer.total})
    for layer in layers:
        if layer.completed > sent.get(layer.digest, 0):
            sent[layer.digest] = layer.completed
            yield _json_bytes({"digest": layer.digest, "total": layer.total, "completed": layer.completed})


def _peer_closed(environ: dict) -> bool:
    check = environ.get("chunkpull.peer_closed")
    return bool(check is not None and check())


def _read_params(environ: dict) -> dict:
    """Read and decode the request's JSON object body.

    Raises:
        _HTTPError: 400 for an empty body, not JSON, not an object or a bad
            Content-Length; 413 for more than MAX_BODY_BYTES.
        OSError and anything else the input stream raises (a 500).
    """
    text = (environ.get("CONTENT_LENGTH") or "").strip()
    if text and not text.isdigit():
        raise _HTTPError(400, "bad_request", f"invalid Content-Length {text!r}")
    length = int(text or 0)
    if length > MAX_BODY_BYTES:
        raise _HTTPError(413, "request_too_large", f"request body too large: {length} bytes, at most {MAX_BODY_BYTES}")
    stream = environ.get("wsgi.input")
    data = stream.read(length) if length and stream is not None else b""
    if not data.strip():
        raise _HTTPError(400, "bad_request", "empty request body")
    try:
        params = json.loads(data)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise _HTTPError(400, "bad_request", str(err)) from None
    if not isinstance(params, dict):
        raise _HTTPError(400, "bad_request", f"invalid request: want a JSON object, not {type(params).__name__}")
    return params


def _model_param(params: dict) -> object:
    # "model" is current; "name" is what older Ollama clients send.
    model = params.get("model")
    if model is None or model == "":
        model = params.get("name")
    return "" if model is None else model


def _reason(status: int) -> str:
    # 499 is nginx's, not IANA's: http.HTTPStatus does not know it.
    return "Client Closed Request" if status == 499 else http.HTTPStatus(status).phrase


# --------------------------------------------------------------------------
# The embedded server
# --------------------------------------------------------------------------

class Server:
    """An embedded multi-threaded HTTP/1.1 server for a WSGI application (``_httpd.WSGIServer``).

    Binds ``host:port`` at once (``port=0`` picks a free port; see ``.url``),
    then serves from a daemon thread after ``start()`` (or in the calling
    thread with ``serve_forever()``): one thread per keep-alive connection,
    a progress stream sent chunked, line by line, as it is made.  Use it as
    a context manager, or call ``shutdown()``; ``stopped`` (an Event) is set
    once shutdown has begun.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, app: Callable, host: str = "127.0.0.1", port: int = 0, *, grace_s: float = 5.0) -> None:
        from . import __version__  # at call time: the package may be importing this module

        self.app = app
        self.grace_s = grace_s
        self._httpd = _httpd.WSGIServer((host, port), app, log=_wire_log, software=f"chunkpull/{__version__}")
        self._started = False
        self.stopped = threading.Event()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ``http://HOST:PORT``."""
        return _httpd.base_url("http", self.host, self.port)

    def start(self) -> Server:
        """Serve from a daemon thread; return self."""
        if self._started:
            raise RuntimeError("server already started")
        self._started = True
        self._httpd.start(f"chunkpull-serve:{self.port}")
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until another thread calls shutdown()."""
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        """Cancel the app's pulls, stop accepting and close every connection; idempotent.

        Pulls in flight are cancelled through the app's ``close()`` (when it
        has one, as ``Local`` does): their streams end with an error line and
        their work files stay for the next pull.  Connections busy with a
        request get ``grace_s`` seconds to finish; idle ones close at once.
        """
        if self.stopped.is_set():
            return
        self.stopped.set()
        close = getattr(self.app, "close", None)
        if callable(close):
            close()
        self._httpd.stop(self.grace_s, timeout_s=self.grace_s)

    def __enter__(self) -> Server:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(registry: Registry, host: str = "127.0.0.1", port: int = 11434, *, ready: Callable[[Server], None] | None = None) -> None:
    """Serve the local API for registry on host:port until SIGINT or SIGTERM.

    Runs ``Local(registry)`` on a ``Server``.  Once the socket listens,
    ``ready(server)`` is called, if given, from the calling thread (the CLI
    prints ``server.url`` there; ``server.shutdown()`` from another thread
    stops serving too).  Signal handlers are installed only when called from
    the main thread, and restored on return.  Stopping cancels pulls in
    flight, keeping their work files, and closes every connection.  Logging
    goes to the ``chunkpull.api`` logger, whose handlers are the caller's
    business.  The registry is not closed.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    server = Server(Local(registry), host, port)

    def started() -> None:
        server.start()
        if ready is not None:
            ready(server)

    try:
        _httpd.run_until_signalled(started, stopped=server.stopped)
    finally:
        server.shutdown()
