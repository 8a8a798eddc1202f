"""Tests for chunkpull.serve.app.Local, called in-process as a WSGI application.

The seed's matrix (TestServerDelete, TestServerPull, TestServerUnknownPath,
checkErrorResponse) runs against conftest's local API world: a copy of
testdata/models (``models_dir``), with ``https://example.com/...`` routed to
a real TestRegistry on 127.0.0.1:0 (``api_upstream``, ``api_registry``), so
upstream errors name ``https://example.com/...`` exactly as the seed
expects.  Pulls that must be held in place use ``gate`` on blob requests
instead of sleeps, so no test depends on timings.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkpull.serve import Local
from chunkpull.errors import PullCancelledError, TransportError
from chunkpull.registry import Registry
from chunkpull.testing import TestRegistry, build_model

WAIT_S = 60  # generous upper bound for waits that normally end at once


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def app(api_registry: Registry) -> Local:
    local = Local(api_registry, logger=logging.getLogger("test.chunkpull.api"))
    yield local
    local.close()


# --- calling the app ----------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


def environ_for(method: str, path: str, body: bytes | str = b"", *, wsgi_input=None, content_length: str | None = None) -> dict:
    if isinstance(body, str):
        body = body.encode()
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.1",
        "REMOTE_PORT": "4242",
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        "wsgi.input": io.BytesIO(body) if wsgi_input is None else wsgi_input,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


class Started:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}

    def __call__(self, status: str, headers, exc_info=None):
        self.status = int(status.split()[0])
        self.headers = dict(headers)
        return lambda data: None


def send(app, method: str, path: str, body: bytes | str = b"", **kw) -> Resp:
    """Call the app like a WSGI server: iterate the whole body, then close()."""
    started = Started()
    result = app(environ_for(method, path, body, **kw), started)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Resp(started.status, started.headers, data)


def open_stream(app, body: str):
    """Start a streaming pull; return the WSGI iterable without reading it."""
    started = Started()
    result = app(environ_for("POST", "/api/pull", body), started)
    assert started.status == 200, f"status = {started.status}, want 200"
    return result


def check_error_response(got: Resp, status: int, code: str, msg: str) -> None:
    """The seed's checkErrorResponse: status, and a JSON body with code and a message containing msg."""
    assert got.status == status, f"Code = {got.status}; want {status}\nBODY:\n{got.text}"
    assert got.headers.get("Content-Type") == "application/json", got.headers
    e = json.loads(got.body)
    assert e.get("code") == code, f"Code = {e.get('code')!r}; want {code!r}\nBODY:\n{got.text}"
    assert msg in e.get("error", ""), f"Message = {e.get('error')!r}; want to contain {msg!r}"


def check_response(got: Resp, wantlines: str) -> None:
    """The seed's checkResponse: 200, each wanted line a substring of the body (``!`` = must be absent)."""
    assert got.status == 200, f"Code = {got.status}; want 200\n{got.text}"
    body = got.text
    for want in wantlines.splitlines():
        want = want.strip()
        if not want:
            continue
        unwanted = want.startswith("!")
        want = want.removeprefix("!").strip()
        if unwanted:
            assert want not in body, f"unexpected {want!r} in body:\n{body}"
        else:
            assert want in body, f"missing {want!r} in body:\n{body}"


def check_stream_contract(lines: list[dict]) -> None:
    """SPEC section 5: first status, every layer announced before any completed, never backwards, a clean ending."""
    assert lines and lines[0] == {"status": "pulling manifest"}, lines[:1]
    for x in lines:
        if "digest" in x:
            # Ollama's own layer status, so its clients show a status for every item.
            assert x.get("status") == "pulling " + x["digest"].removeprefix("sha256:")[:12], x
    announced = [i for i, x in enumerate(lines) if "digest" in x and "completed" not in x]
    completed = [i for i, x in enumerate(lines) if "completed" in x]
    if completed:
        assert max(announced) < min(completed), f"a layer was announced after progress started: {lines}"
    totals = {x["digest"]: x["total"] for x in lines if "digest" in x and "completed" not in x}
    last: dict[str, int] = {}
    for x in lines:
        if "completed" in x:
            d = x["digest"]
            assert d in totals and x["total"] == totals[d], x
            assert x["completed"] >= last.get(d, 0), f"progress went backwards for {d}: {last[d]} -> {x['completed']}"
            assert x["completed"] <= x["total"], x
            last[d] = x["completed"]
    if "error" in lines[-1]:
        # One error line, and nothing before it that reads as an error: the
        # official client yields every line before the one that raises.
        assert set(lines[-1]) == {"error"}, lines[-1]
        assert not any("error" in x or str(x.get("status", "")).startswith("error") for x in lines[:-1]), lines
    else:
        assert [x.get("status") for x in lines[-3:]] == ["verifying sha256 digest", "writing manifest", "success"], lines[-3:]
        assert last == totals, f"not every layer reached its total: {last} vs {totals}"


def upstream_blobs(upstream: TestRegistry, model: str) -> list[tuple[str, int]]:
    path = upstream.find_manifest("library", model, "latest")
    m = json.loads(path.read_bytes())
    return [(b["digest"], b["size"]) for b in (*m["layers"], m["config"])]


def json_error(text: str) -> str:
    """Return Python's JSON parser message for text (the analogue of Go's for the seed's "!")."""
    try:
        json.loads(text)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"{text!r} parses")


class InvalidReader(io.RawIOBase):
    """The seed's invalidReader: every read fails."""

    def readable(self) -> bool:
        return True

    def readinto(self, b):
        raise OSError("invalid argument")


# --- the seed's matrix ----------------------------------------------------------------


def test_server_delete(app: Local, api_registry: Registry, caplog) -> None:
    api_registry.resolve_local("smol")

    got = send(app, "DELETE", "/api/delete", '{"model": "smol"}')
    assert got.status == 200, got
    with pytest.raises(LookupError):
        api_registry.resolve_local("smol")

    got = send(app, "DELETE", "/api/delete", "!")
    check_error_response(got, 400, "bad_request", json_error("!"))

    got = send(app, "GET", "/api/delete", '{"model": "smol"}')
    check_error_response(got, 405, "method_not_allowed", "method not allowed")
    assert got.headers.get("Allow") == "DELETE"

    got = send(app, "DELETE", "/api/delete", "")
    check_error_response(got, 400, "bad_request", "empty request body")

    got = send(app, "DELETE", "/api/delete", '{"model": "://"}')
    check_error_response(got, 400, "bad_request", "invalid or missing name")

    got = send(app, "DELETE", "/unknown_path", "{}")  # valid body
    check_error_response(got, 404, "not_found", "not found")

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="test.chunkpull.api"):
        got = send(app, "DELETE", "/api/delete", wsgi_input=InvalidReader(), content_length="17")
    check_error_response(got, 500, "internal_error", "internal server error")
    assert "invalid argument" not in got.text, "a 500 must not leak the internal error"
    logs = "\n".join(f"{r.levelname} {r.getMessage()}" for r in caplog.records)
    assert re.search(r'ERROR.*error="invalid argument"', logs), f"expected log to contain ERROR with invalid argument:\n{logs}"


def test_server_pull(app: Local, api_upstream: TestRegistry, api_registry: Registry) -> None:
    got = send(app, "POST", "/api/pull", '{"model": "BOOM"}')
    # The seed wants {"status":"error: …"} before the error line; SPEC and
    # Ollama since send only the "error" line (see check_stream_contract).
    check_response(got, r"""
        {"error":"request error https://example.com/v2/library/BOOM/manifests/latest: registry responded with status 999: boom"}
        ! "status":"error:
    """)
    check_stream_contract(got.lines())

    got = send(app, "POST", "/api/pull", '{"model": "smol"}')
    want = "\n".join(
        [f'{{"status":"pulling {d[7:19]}","digest":"{d}","total":{n}}}' for d, n in upstream_blobs(api_upstream, "smol")]
        + [f'{{"status":"pulling {d[7:19]}","digest":"{d}","total":{n},"completed":{n}}}' for d, n in upstream_blobs(api_upstream, "smol")]
        + ['{"status":"success"}', '! "error"']
    )
    check_response(got, want)
    check_stream_contract(got.lines())
    assert api_registry.resolve_local("smol").digest.hex == json.loads(send(app, "GET", "/api/tags").body)["models"][0]["digest"]

    got = send(app, "POST", "/api/pull", '{"model": "unknown"}')
    check_response(got, r"""
        {"error":"model \"unknown\" not found"}
        ! "status":"error:
    """)
    check_stream_contract(got.lines())

    got = send(app, "DELETE", "/api/pull", '{"model": "smol"}')
    check_error_response(got, 405, "method_not_allowed", "method not allowed")

    got = send(app, "POST", "/api/pull", "!")
    check_error_response(got, 400, "bad_request", json_error("!"))

    got = send(app, "POST", "/api/pull", "")
    check_error_response(got, 400, "bad_request", "empty request body")

    got = send(app, "POST", "/api/pull", '{"model": "://"}')
    check_response(got, r"""
        {"error":"invalid or missing name: \"\""}
        ! "status":"error:
    """)
    check_stream_contract(got.lines())

    # Non-streaming pulls
    got = send(app, "POST", "/api/pull", '{"model": "://", "stream": false}')
    check_error_response(got, 400, "bad_request", "invalid or missing name")

    got = send(app, "POST", "/api/pull", '{"model": "smol", "stream": false}')
    check_response(got, '{"status":"success"}')

    got = send(app, "POST", "/api/pull", '{"model": "unknown", "stream": false}')
    check_error_response(got, 404, "not_found", "model not found")


def test_pulls_and_deletes_go_on_after_the_work_directories_were_removed(app: Local, models_dir: Path) -> None:
    # Someone cleans up under a long-running server: the next pull or delete
    # makes the layout's directories again rather than failing with a 500.
    import shutil

    shutil.rmtree(models_dir / ".chunkpull")
    shutil.rmtree(models_dir / "blobs")
    got = send(app, "POST", "/api/pull", '{"model": "chunked", "stream": false}')
    check_response(got, '{"status":"success"}')
    assert (models_dir / ".chunkpull" / "ingest").is_dir() and any((models_dir / "blobs").iterdir())
    shutil.rmtree(models_dir / ".chunkpull")
    got = send(app, "DELETE", "/api/delete", '{"model": "chunked"}')
    assert got.status == 200, got.text


def test_server_unknown_path(app: Local) -> None:
    got = send(app, "DELETE", "/api/unknown", "{}")
    check_error_response(got, 404, "not_found", "not found")

    fellback = []

    def fallback(environ, start_response):
        fellback.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fallback"]

    app.fallback = fallback
    got = send(app, "DELETE", "/api/unknown", "{}")
    assert fellback == ["/api/unknown"], "expected Fallback to be called"
    assert got.status == 200 and got.body == b"fallback"
    # Known paths never reach the fallback, whatever the method.
    check_error_response(send(app, "GET", "/api/pull"), 405, "method_not_allowed", "method not allowed")
    assert fellback == ["/api/unknown"]


# --- the error table --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, status, code, msg",
    [
        pytest.param("POST", "/api/pull", "[]", 400, "bad_request", "want a JSON object", id="body-not-object"),
        pytest.param("POST", "/api/pull", '{"model": "smol", "stream": "no"}', 400, "bad_request", '"stream" must be true or false', id="stream-not-bool"),
        pytest.param("POST", "/api/pull", "   \n", 400, "bad_request", "empty request body", id="whitespace-body"),
        pytest.param("POST", "/api/pull", b"\xff\xfe\x00", 400, "bad_request", "", id="body-not-utf8"),
        pytest.param("POST", "/api/pull", '{"model": 5, "stream": false}', 400, "bad_request", "invalid or missing name", id="name-not-string"),
        pytest.param("POST", "/api/pull", '{"model": "ftp://x/y/z", "stream": false}', 400, "bad_request", "unsupported scheme", id="bad-scheme"),
        pytest.param("POST", "/api/pull", '{"model": "smol@sha256:zz", "stream": false}', 400, "bad_request", "invalid digest", id="bad-digest"),
        pytest.param("POST", "/api/pull", '{"model": "BOOM", "stream": false}', 502, "bad_gateway", "registry responded with status 999: boom", id="upstream-error"),
        pytest.param("DELETE", "/api/delete", '{"model": "nope"}', 404, "not_found", "model not found", id="delete-absent"),
        pytest.param("DELETE", "/api/delete", "{}", 400, "bad_request", "invalid or missing name", id="delete-no-name"),
        pytest.param("PUT", "/", "", 405, "method_not_allowed", "method not allowed", id="root-put"),
        pytest.param("POST", "/api/tags", "{}", 405, "method_not_allowed", "method not allowed", id="tags-post"),
        pytest.param("GET", "/api/tags/", "", 404, "not_found", "not found", id="trailing-slash"),
    ],
)
def test_error_table(app: Local, method: str, path: str, body, status: int, code: str, msg: str) -> None:
    check_error_response(send(app, method, path, body), status, code, msg)


def test_body_too_large(app: Local) -> None:
    got = send(app, "POST", "/api/pull", "", content_length=str(64 << 20))
    check_error_response(got, 413, "request_too_large", "too large")


def test_name_is_accepted_for_model(app: Local, api_registry: Registry) -> None:
    assert send(app, "DELETE", "/api/delete", '{"name": "smol"}').status == 200
    with pytest.raises(LookupError):
        api_registry.resolve_local("smol")


def test_internal_error_never_leaks(app: Local, api_registry: Registry, monkeypatch, caplog) -> None:
    def broken_pull(name, **kw):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api_registry, "pull", broken_pull)
    with caplog.at_level(logging.DEBUG, logger="test.chunkpull.api"):
        streamed = send(app, "POST", "/api/pull", '{"model": "smol"}')
        single = send(app, "POST", "/api/pull", '{"model": "smol", "stream": false}')
    assert streamed.lines()[-1] == {"error": "internal server error"}
    check_stream_contract(streamed.lines())
    check_error_response(single, 500, "internal_error", "internal server error")
    assert "secret" not in streamed.text + single.text
    recs = [r for r in caplog.records if r.name == "test.chunkpull.api"]
    assert len(recs) == 2
    for r in recs:
        assert 'error="secret detail"' in r.getMessage()
        assert r.exc_info is not None, "the traceback of an unexpected error belongs in the log"
    assert [r.levelno for r in recs] == [logging.INFO, logging.ERROR]


# --- the other endpoints ----------------------------------------------------------------


def test_tags(app: Local, models_dir: Path) -> None:
    got = send(app, "GET", "/api/tags")
    assert got.status == 200 and got.headers["Content-Type"] == "application/json"
    models = json.loads(got.body)["models"]
    assert [m["name"] for m in models] == ["smol:latest"], models
    m = models[0]
    assert set(m) >= {"name", "model", "size", "digest", "modified_at", "details"}
    data = (models_dir / "manifests/example.com/library/smol/latest").read_bytes()
    import hashlib

    assert m["digest"] == hashlib.sha256(data).hexdigest()
    doc = json.loads(data)
    assert m["size"] == sum(b["size"] for b in (*doc["layers"], doc["config"]))
    from datetime import datetime

    assert datetime.fromisoformat(m["modified_at"]).tzinfo is not None
    assert set(m["details"]) == {"parent_model", "format", "family", "families", "parameter_size", "quantization_level"}


def test_tags_names_outside_the_mask(app: Local, api_registry: Registry, models_dir: Path) -> None:
    build_model(models_dir, "example.com/someone/other:q4", [10], seed=9)
    build_model(models_dir, "elsewhere.org/library/far:latest", [10], seed=8)
    names = sorted(m["name"] for m in json.loads(send(app, "GET", "/api/tags").body)["models"])
    assert names == ["elsewhere.org/library/far:latest", "smol:latest", "someone/other:q4"]


def test_root_version_and_head(app: Local) -> None:
    got = send(app, "GET", "/")
    assert (got.status, got.body) == (200, b"chunkpull is running")
    got = send(app, "HEAD", "/")
    assert (got.status, got.body, got.headers["Content-Length"]) == (200, b"", "20")
    import chunkpull

    got = send(app, "GET", "/api/version")
    assert json.loads(got.body) == {"version": chunkpull.__version__}


# --- the progress stream ------------------------------------------------------------------


def test_stream_contract_chunked(app: Local, api_upstream: TestRegistry) -> None:
    got = send(app, "POST", "/api/pull", '{"model": "chunked"}')
    lines = got.lines()
    check_stream_contract(lines)
    assert got.headers["Content-Type"] == "application/x-ndjson"
    digests = {d for d, _ in upstream_blobs(api_upstream, "chunked")}
    assert {x["digest"] for x in lines if "digest" in x} == digests


def test_stream_is_throttled(app: Local) -> None:
    # With an interval longer than any pull, a stream may send one batch of
    # progress when the layers are known and one when the pull ends: no
    # more, however many byte events the pull produced.
    app.progress_interval_s = 3600
    lines = send(app, "POST", "/api/pull", '{"model": "chunked"}').lines()
    check_stream_contract(lines)
    per_layer: dict[str, int] = {}
    for x in lines:
        if "completed" in x:
            per_layer[x["digest"]] = per_layer.get(x["digest"], 0) + 1
    assert per_layer and max(per_layer.values()) <= 2, per_layer


def test_cached_layers_are_reported(app: Local) -> None:
    assert send(app, "POST", "/api/pull", '{"model": "smol", "stream": false}').status == 200
    lines = send(app, "POST", "/api/pull", '{"model": "smol"}').lines()
    check_stream_contract(lines)  # every layer cached: announced, then completed == total


def test_invalid_name_stream_starts_first(app: Local) -> None:
    lines = send(app, "POST", "/api/pull", '{"model": "a/b//d/e"}').lines()
    assert lines[0] == {"status": "pulling manifest"}
    assert "invalid or missing name" in lines[-1]["error"]


# --- sharing and cancelling pulls ------------------------------------------------------------


def test_two_clients_share_one_download(app: Local, api_upstream: TestRegistry, gate: threading.Event) -> None:
    gate.clear()  # hold the pull after its manifest, before any blob
    api_upstream.stats.reset()
    a = open_stream(app, '{"model": "chunked"}')
    b = open_stream(app, '{"model": "example.com/library/CHUNKED:latest"}')  # same model, other spelling
    try:
        assert json.loads(next(a)) == {"status": "pulling manifest"}
        assert json.loads(next(b)) == {"status": "pulling manifest"}
        flights = app.in_flight()
        assert len(flights) == 1 and flights[0].listeners == 2, flights
        gate.set()
        la = [json.loads(x) for x in a]
        lb = [json.loads(x) for x in b]
    finally:
        a.close()
        b.close()
    for lines in (la, lb):
        check_stream_contract([{"status": "pulling manifest"}, *lines])
        assert lines[-1] == {"status": "success"}
    assert api_upstream.stats.requests["manifest"] == 1, api_upstream.stats.requests
    assert len(api_upstream.stats.ranges) == len(set(api_upstream.stats.ranges)), f"a range was served twice: {api_upstream.stats.ranges}"
    assert app.in_flight() == []


def test_pull_continues_while_one_listener_remains(app: Local, gate: threading.Event) -> None:
    gate.clear()
    a = open_stream(app, '{"model": "chunked"}')
    b = open_stream(app, '{"model": "chunked"}')
    next(a)
    next(b)
    (flight,) = app.in_flight()
    a.close()  # the first client goes away
    assert not flight.cancel.is_set() and flight.listeners == 1
    gate.set()
    lines = [json.loads(x) for x in b]
    b.close()
    assert lines[-1] == {"status": "success"}
    assert flight.error is None


@pytest.mark.slow
def test_last_listener_leaving_cancels(app: Local, api_registry: Registry, api_upstream: TestRegistry, models_dir: Path, caplog) -> None:
    # A 4 MiB chunked layer at 128 KiB/s per connection takes 16 s or more; the
    # client leaves as soon as its first bytes are reported.
    (big, size), _config = upstream_blobs(api_upstream, "big")
    api_upstream.faults.throttle_bps = 128 * 1024
    stream = open_stream(app, '{"model": "big"}')
    with caplog.at_level(logging.DEBUG, logger="test.chunkpull.api"):
        for raw in stream:
            line = json.loads(raw)
            if line.get("digest") == big and line.get("completed"):
                break
        (flight,) = app.in_flight()
        stream.close()
    assert flight.cancel.is_set(), "the last listener left: the pull must be cancelled"
    assert app.in_flight() == [], "a cancelled pull leaves the table at once"
    assert flight.done.wait(WAIT_S), "the cancelled pull did not stop"
    assert isinstance(flight.error, (PullCancelledError, TransportError)), repr(flight.error)
    hexd = big.split(":")[1]
    assert (models_dir / ".chunkpull" / "ingest" / f"sha256-{hexd}.partial").exists(), "work in progress must be kept"
    assert not (models_dir / "blobs" / f"sha256-{hexd}").exists(), "no final blob"
    assert not (models_dir / "manifests" / "example.com" / "library" / "big").exists(), "no manifest"
    (rec,) = [r for r in caplog.records if r.name == "test.chunkpull.api"]
    assert rec.getMessage().startswith('error="client disconnected" status=200 method=POST path=/api/pull')


def test_non_streaming_pull_joins_a_streaming_one(app: Local, gate: threading.Event, api_upstream: TestRegistry) -> None:
    gate.clear()
    api_upstream.stats.reset()
    stream = open_stream(app, '{"model": "chunked"}')
    next(stream)
    result: list[Resp] = []
    t = threading.Thread(target=lambda: result.append(send(app, "POST", "/api/pull", '{"model": "chunked", "stream": false}')))
    t.start()
    try:
        # Wait (without timing) until the second request is listening too.
        (flight,) = app.in_flight()
        deadline = threading.Event()
        for _ in range(WAIT_S * 100):
            if flight.listeners == 2:
                break
            deadline.wait(0.01)
        assert flight.listeners == 2
        gate.set()
        lines = [json.loads(x) for x in stream]
    finally:
        stream.close()
        t.join(WAIT_S)
    assert lines[-1] == {"status": "success"}
    assert json.loads(result[0].body) == {"status": "success"}
    assert api_upstream.stats.requests["manifest"] == 1


def test_close_cancels_pulls(app: Local, gate: threading.Event) -> None:
    gate.clear()
    stream = open_stream(app, '{"model": "chunked"}')
    next(stream)
    (flight,) = app.in_flight()
    closer = threading.Thread(target=app.close)
    closer.start()
    assert flight.cancel.wait(WAIT_S)
    gate.set()
    closer.join(WAIT_S)
    lines = [json.loads(x) for x in stream]
    stream.close()
    assert "error" in lines[-1], lines
    got = send(app, "POST", "/api/pull", '{"model": "chunked", "stream": false}')
    check_error_response(got, 503, "unavailable", "shutting down")


# --- logging ------------------------------------------------------------------------------


LOG_RE = re.compile(r'^error=(".*") status=(\d+) method=(\S+) path=(\S+) content_length=(\S+) remote=(\S+)$')


def test_logging_contract(app: Local, caplog) -> None:
    app.fallback = lambda environ, start_response: (start_response("200 OK", []), [b""])[1]
    with caplog.at_level(logging.DEBUG, logger="test.chunkpull.api"):
        send(app, "GET", "/api/tags")  # 200
        send(app, "POST", "/api/pull", '{"model": "unknown"}')  # 200, streamed error
        send(app, "POST", "/api/pull", "!")  # 400
        send(app, "DELETE", "/api/delete", '{"model": "nope"}')  # 404
        send(app, "GET", "/api/delete")  # 405
        send(app, "DELETE", "/api/delete", wsgi_input=InvalidReader(), content_length="3")  # 500
        send(app, "GET", "/somewhere/else")  # fallback: no record
    recs = [r for r in caplog.records if r.name == "test.chunkpull.api"]
    got = []
    for r in recs:
        m = LOG_RE.match(r.getMessage())
        assert m, f"log message does not follow the contract: {r.getMessage()!r}"
        got.append((r.levelname, json.loads(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(6)))
    assert got == [
        ("INFO", "", 200, "GET", "/api/tags", "192.0.2.1:4242"),
        ("INFO", 'model "unknown" not found', 200, "POST", "/api/pull", "192.0.2.1:4242"),
        ("WARNING", json_error("!"), 400, "POST", "/api/pull", "192.0.2.1:4242"),
        ("WARNING", 'model "nope" not found', 404, "DELETE", "/api/delete", "192.0.2.1:4242"),
        ("WARNING", "method not allowed", 405, "GET", "/api/delete", "192.0.2.1:4242"),
        ("ERROR", "invalid argument", 500, "DELETE", "/api/delete", "192.0.2.1:4242"),
    ], got
    assert LOG_RE.match(recs[1].getMessage()).group(5) == str(len('{"model": "unknown"}'))
