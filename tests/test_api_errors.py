"""Bad input and bad upstreams never make the local API answer 500 (SPEC section 5's table, 502 for upstreams).

In-process WSGI calls against a real TestRegistry upstream.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from chunkpull.serve import Local

pytestmark = pytest.mark.integration


def call(app, method: str, path: str, body: bytes, content_length: str | None = None) -> tuple[int, dict]:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost", "SERVER_PORT": "11434",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:11434",
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
    }
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = int(status.split()[0])

    out = b"".join(app(environ, start_response))
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    return got["status"], lines[-1] if lines else {}


@pytest.fixture
def app(upstream, make_registry):
    up = upstream([3 << 20], seed=70)
    local = Local(make_registry(), logger=logging.getLogger("test.chunkpull.api.errors"))
    yield up, local
    local.close()


def pull(local, model: str, **extra) -> tuple[int, dict]:
    return call(local, "POST", "/api/pull", json.dumps({"model": model, "stream": False, **extra}).encode())


def test_redirect_loop_is_a_bad_gateway(app):
    up, local = app
    up.faults.manifest_location = "{path}"
    status, body = pull(local, up.ref())
    assert status == 502 and "redirects in a loop" in body["error"], body


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://x"])
def test_redirect_to_a_non_http_url_is_a_bad_gateway(app, location):
    up, local = app
    up.faults.manifest_location = location
    status, body = pull(local, up.ref())
    assert status == 502 and "not http(s)" in body["error"], body


@pytest.mark.parametrize("name", ["http://127.0.0.1:5000:5000/library/x", "http://127.0.0.1:0/library/x", "http://127.0.0.1:99999/library/x",
                                  "http://:5000/library/x"])
def test_host_that_is_not_host_port_is_a_bad_request(app, name):
    _up, local = app
    status, body = pull(local, name)
    assert status == 400 and body["code"] == "bad_request", body


def test_json_nesting_bomb_is_a_bad_request(app):
    _up, local = app
    status, body = call(local, "POST", "/api/pull", b"[" * 100_000 + b"]" * 100_000)
    assert status in (400, 413) and body["code"] in ("bad_request", "request_too_large"), body
    status, body = call(local, "POST", "/api/pull", b'{"model":' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    assert status == 400 and "nested too deeply" in body["error"], body


@pytest.mark.parametrize("value", ["\u00b2", "-1", "1e3", " 12x"])
def test_odd_content_length_is_a_bad_request(app, value):
    _up, local = app
    status, body = call(local, "POST", "/api/pull", b'{"model": "x"}', content_length=value)
    assert status == 400, (value, status, body)


@pytest.mark.parametrize("value, status", [("\u00b2", 400), ("-1", 400), ("5, 5", 400), ("99999999999999999999", 413)])
def test_odd_content_length_over_a_real_socket(app, value, status):
    import socket

    from chunkpull.serve import Server

    _up, local = app
    with Server(local, "127.0.0.1", 0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"POST /api/pull HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {value}\r\n\r\n{{}}".encode())
            first = sock.recv(200).split(b"\r\n")[0]
    assert first.startswith(f"HTTP/1.1 {status} ".encode()), (value, first)
