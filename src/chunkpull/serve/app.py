"""The Ollama-compatible local HTTP API (SPEC section 5) as a WSGI application: ``Local``.

``Local`` answers ``POST /api/pull``, ``DELETE /api/delete``,
``GET /api/tags``, ``GET /api/version`` and ``GET|HEAD /``; it keeps the
table of pulls in flight, so that clients asking for the same model at once
share one download, and writes the NDJSON progress stream.  It is a thin
handler: every byte is moved, checked and committed by ``Registry.pull``;
this module only starts pulls, shares them and reports on them.  Statuses
come from the one table in ``serve.errors``; ``serve.server`` runs the app.

Imports registry, core and errors; never store, engine, testing or cli.
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

from .._version import __version__
from ..core.names import Name, Ref
from ..core.progress import CACHED, START, Aggregator, Progress
from ..errors import InvalidNameError, ModelNotFoundError
from ..registry import Registry
from .errors import HTTPError, describe, is_public, json_bytes, public_message
from .guard import ALLOW_METHODS, Guard

__all__ = ["Local", "PullInFlight", "PROGRESS_INTERVAL_S"]

log = logging.getLogger("chunkpull.api")

# SPEC section 5: progress lines at most every ~100 ms.
PROGRESS_INTERVAL_S = 0.1
# API request bodies are a few dozen bytes of JSON; refuse anything absurd
# before reading it into memory.
MAX_BODY_BYTES = 1 << 20
NDJSON = "application/x-ndjson"
JSON = "application/json"
RUNNING_TEXT = b"chunkpull is running"


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
    of SPEC section 5, in the shape real Ollama sends, so that Ollama's own
    clients show the same items: layer lines carry
    ``"status":"pulling <hex12>"`` beside ``digest``/``total``/``completed``,
    and a failed stream ends with one line, ``{"error":"<message>"}`` (the
    seed's older ``{"status":"error: …"}`` line is not sent: ollama-python
    would yield it as a progress item before raising).  ``/api/tags``
    shortens names against the mask as Ollama shows them (``smol:latest``).

    Pulls run on their own threads, one per model in flight, keyed by the
    canonical name: a second request for a model being pulled listens to
    the same pull instead of starting another.  When the last listener
    leaves (its client disconnected, and the WSGI server called ``close()``
    on the response) the pull is cancelled; work files are kept for the
    next pull to resume.  Thread-safe: one ``Local`` serves any number of
    concurrent requests.

    >>> from chunkpull import Local, Registry
    >>> from chunkpull.serve import Server
    >>> with Server(Local(Registry("/tmp/models")), "127.0.0.1", 11434) as server:  # doctest: +SKIP
    ...     ollama.Client(host=server.url).pull("http://127.0.0.1:5000/library/smol")
    """

    progress_interval_s = PROGRESS_INTERVAL_S
    # How often a request that is only waiting (a stalled pull, a
    # non-streaming pull) checks whether its client is still there, when the
    # server offers a way to check ("chunkpull.peer_closed" in the environ).
    poll_s = 0.5

    def __init__(
        self, registry: Registry, *, fallback: Callable | None = None, logger: logging.Logger | None = None, guard: Guard | None = None
    ) -> None:
        self.registry = registry
        self.fallback = fallback
        self.logger = logger if logger is not None else log
        # Host and Origin checks (serve.guard); the default checks Host as a
        # loopback-bound server must, and allows $OLLAMA_ORIGINS.
        self.guard = guard if guard is not None else Guard()
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
        # Before anything else, fallback included: a refused request does no work.
        refusal = self.guard.verdict(environ)
        if refusal is not None:
            status, message = refusal
            self._log(environ, status, message)
            body = json_bytes({"code": "forbidden", "error": message})
            start_response(f"{status} {_reason(status)}", [("Content-Type", JSON), ("Content-Length", str(len(body)))])
            return [body]
        if method == "OPTIONS":  # a CORS preflight from an allowed origin (or a plain OPTIONS)
            self._log(environ, 204, None)
            start_response("204 No Content", [*self.guard.preflight_headers(environ), ("Allow", ALLOW_METHODS), ("Content-Length", "0")])
            return [b""]
        cors = self.guard.cors_headers(environ)
        if cors:
            start_response = _with_headers(start_response, cors)
        route = _ROUTES.get(path)
        if route is None and self.fallback is not None:
            return self.fallback(environ, start_response)
        try:
            if route is None:
                raise HTTPError(404, "not_found", "not found")
            methods, endpoint = route
            if method not in methods:
                raise HTTPError(405, "method_not_allowed", "method not allowed", [("Allow", ", ".join(sorted(methods)))])
            result = getattr(self, endpoint)(environ)
        except Exception as err:  # noqa: BLE001 - every failure becomes an answer via the table
            status, code, message = describe(err)
            self._log(environ, status, err)
            headers = err.headers if isinstance(err, HTTPError) else ()
            result = _Reply(status, json_bytes({"code": code, "error": message}), JSON, headers)
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
        if isinstance(error, BaseException) and not is_public(error):
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
            raise HTTPError(400, "bad_request", f'invalid request: "stream" must be true or false, not {json.dumps(stream)}')
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
                    raise HTTPError(499, "client_closed_request", "client disconnected")
        finally:
            self._leave(flight)
        if flight.error is not None:
            raise flight.error
        return _Reply(200, json_bytes({"status": "success"}))

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
        return _Reply(200, json_bytes({"models": models}))

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
        return _Reply(200, json_bytes({"version": __version__}))

    # -- the in-flight table ---------------------------------------------------

    def in_flight(self) -> list[PullInFlight]:
        """Return the pulls running now (a snapshot, for status pages and tests)."""
        with self._lock:
            return list(self._flights.values())

    def _join(self, ref: Ref, model: str) -> PullInFlight:
        """Listen to the pull of ref, starting it if none is running.

        Raises:
            HTTPError: 503, close() was called.
        """
        with self._lock:
            if self._closed:
                raise HTTPError(503, "unavailable", "server is shutting down")
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
        except (InvalidNameError, HTTPError) as err:
            yield json_bytes({"status": "pulling manifest"})
            yield from self._fail(err)
            return
        yield json_bytes({"status": "pulling manifest"})
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
            yield json_bytes({"status": status})

    def _fail(self, err: BaseException) -> Iterator[bytes]:
        # One line with the "error" key: Ollama's clients raise on it.
        self._error = err
        yield json_bytes({"error": public_message(err)})


def _layer_status(digest: str) -> str:
    # Ollama's own wording: "pulling " and the first 12 hex digits.
    return "pulling " + digest.partition(":")[2][:12]


def _progress_lines(progress: Aggregator, announced: set[str], sent: dict[str, int]) -> Iterator[bytes]:
    """Yield the lines a stream owes: new layers' announcements first, then forward progress only."""
    layers = progress.layers()
    for layer in layers:
        if layer.digest not in announced:
            announced.add(layer.digest)
            yield json_bytes({"status": _layer_status(layer.digest), "digest": layer.digest, "total": layer.total})
    for layer in layers:
        if layer.completed > sent.get(layer.digest, 0):
            sent[layer.digest] = layer.completed
            yield json_bytes({"status": _layer_status(layer.digest), "digest": layer.digest, "total": layer.total, "completed": layer.completed})


def _with_headers(start_response: Callable, extra: list[tuple[str, str]]) -> Callable:
    """Wrap a WSGI start_response so every answer carries the extra headers too."""

    def start(status: str, headers: list[tuple[str, str]], exc_info=None):
        return start_response(status, [*headers, *extra], exc_info) if exc_info is not None else start_response(status, [*headers, *extra])

    return start


def _peer_closed(environ: dict) -> bool:
    check = environ.get("chunkpull.peer_closed")
    return bool(check is not None and check())


def _read_params(environ: dict) -> dict:
    """Read and decode the request's JSON object body.

    Raises:
        HTTPError: 400 for an empty body, not JSON, not an object or a bad
            Content-Length; 413 for more than MAX_BODY_BYTES.
        OSError and anything else the input stream raises (a 500).
    """
    text = (environ.get("CONTENT_LENGTH") or "").strip()
    if text and not (text.isascii() and text.isdigit()):
        raise HTTPError(400, "bad_request", f"invalid Content-Length {text!r}")
    length = int(text or 0)
    if length > MAX_BODY_BYTES:
        raise HTTPError(413, "request_too_large", f"request body too large: {length} bytes, at most {MAX_BODY_BYTES}")
    stream = environ.get("wsgi.input")
    data = stream.read(length) if length and stream is not None else b""
    if not data.strip():
        raise HTTPError(400, "bad_request", "empty request body")
    try:
        params = json.loads(data)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise HTTPError(400, "bad_request", str(err)) from None
    except RecursionError:  # [[[[…]]]]: nested deeper than the parser goes
        raise HTTPError(400, "bad_request", "invalid request: JSON nested too deeply") from None
    if not isinstance(params, dict):
        raise HTTPError(400, "bad_request", f"invalid request: want a JSON object, not {type(params).__name__}")
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


