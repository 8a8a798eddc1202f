"""Host and Origin checks of the local API (serve.guard): the matrix, in-process and over a real socket.

What a web page can make a browser send must not start, list or delete
anything: a foreign Origin (a "simple" cross-site POST) and a foreign Host
(DNS rebinding) get 403 before any work starts.  Requests without Origin
(the CLI, SDKs, the official client) keep working.
"""

from __future__ import annotations

import http.client
import json
import logging

import pytest

from chunkpull.serve import Local, Server
from chunkpull.serve.guard import Guard, allowed_origins, host_is_allowed, is_loopback_address, origin_is_allowed

HOSTS = [
    ("", True), ("localhost", True), ("localhost:11434", True), ("LOCALHOST:80", True), ("app.localhost", True),
    ("printer.local", True), ("db.internal", True), ("127.0.0.1:11434", True), ("[::1]:11434", True), ("::1", True),
    ("10.1.2.3", True), ("8.8.8.8:11434", True), ("mybox", True), ("mybox:11434", True),
    ("attacker.example", False), ("attacker.example:11434", False), ("localhost.attacker.example", False),
    ("mybox.attacker.example", False), ("127.0.0.1.nip.io", False),
]


@pytest.mark.parametrize("host, want", HOSTS, ids=[h or "empty" for h, _ in HOSTS])
def test_host_matrix(host, want):
    assert host_is_allowed(host, hostname="mybox") is want, f"host_is_allowed({host!r}) = {not want}, want {want}"


ORIGINS = [
    ("http://localhost", True), ("https://localhost:3000", True), ("http://127.0.0.1:8080", True), ("http://0.0.0.0:1", True),
    ("app://obsidian.md", True), ("file://", True), ("tauri://localhost", True), ("vscode-webview://abc", True),
    ("vscode-file://vscode-app", True),
    ("http://attacker.example", False), ("https://localhost.attacker.example", False), ("http://127.0.0.1.attacker.example", False),
    ("null", False), ("http://localhost@attacker.example", False),
]


@pytest.mark.parametrize("origin, want", ORIGINS, ids=[o for o, _ in ORIGINS])
def test_default_origin_matrix(origin, want, monkeypatch):
    monkeypatch.delenv("OLLAMA_ORIGINS", raising=False)
    assert origin_is_allowed(origin, allowed_origins()) is want, f"origin {origin!r}: allowed = {not want}, want {want}"


def test_ollama_origins_and_the_flag_extend_the_list(monkeypatch):
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://app.example.com, chrome-extension://*")
    patterns = allowed_origins("https://*.corp.example")
    for origin in ("https://app.example.com", "chrome-extension://abcdef", "https://wiki.corp.example", "http://localhost:1"):
        assert origin_is_allowed(origin, patterns), origin
    for origin in ("https://app.example.com.evil", "http://wiki.corp.example", "https://corp.example"):
        assert not origin_is_allowed(origin, patterns), origin


@pytest.mark.parametrize("host, want", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
                                        ("0.0.0.0", False), ("192.168.1.5", False), ("::", False)])
def test_loopback_bind_addresses(host, want):
    assert is_loopback_address(host) is want


# -- in-process --------------------------------------------------------------------


def call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    import io
    import sys

    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "test", "SERVER_PORT": "11434",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    if "Content-Type" in headers:
        environ["CONTENT_TYPE"] = headers["Content-Type"]
    got = {}

    def start_response(status, hdrs, exc_info=None):
        got["status"] = int(status.split()[0])
        got["headers"] = dict(hdrs)

    out = b"".join(app(environ, start_response))
    return got["status"], got["headers"], out


@pytest.fixture
def guarded(api_registry, monkeypatch):
    monkeypatch.delenv("OLLAMA_ORIGINS", raising=False)
    calls = []
    real_pull = api_registry.pull

    def counting_pull(*args, **kwargs):
        calls.append(args)
        return real_pull(*args, **kwargs)

    monkeypatch.setattr(api_registry, "pull", counting_pull)
    local = Local(api_registry, logger=logging.getLogger("test.chunkpull.guard"), guard=Guard(check_host=True, hostname="mybox"))
    yield local, calls
    local.close()


def test_cross_site_simple_post_is_refused_before_any_work(guarded):
    app, pulls = guarded
    status, headers, body = call(app, "POST", "/api/pull", {"Host": "127.0.0.1:11434", "Origin": "http://attacker.example",
                                                             "Content-Type": "text/plain"}, b'{"model":"http://127.0.0.1:1/x/y"}')
    assert status == 403 and json.loads(body)["code"] == "forbidden", (status, body)
    assert "Access-Control-Allow-Origin" not in headers
    assert pulls == [], "a refused request started a pull"


@pytest.mark.parametrize("method, path", [("GET", "/api/tags"), ("DELETE", "/api/delete"), ("POST", "/api/pull"), ("GET", "/"), ("GET", "/nope")])
def test_dns_rebinding_host_is_refused_on_every_route(guarded, method, path):
    app, pulls = guarded
    status, _headers, body = call(app, method, path, {"Host": "attacker.example:11434"}, b'{"model":"smol"}')
    assert status == 403, (method, path, status, body)
    assert pulls == []


def test_requests_without_origin_keep_working(guarded):
    app, _ = guarded
    status, headers, body = call(app, "GET", "/api/tags", {"Host": "127.0.0.1:11434"})
    assert status == 200 and "models" in json.loads(body)
    assert "Access-Control-Allow-Origin" not in headers


def test_allowed_origin_gets_cors_headers(guarded):
    app, _ = guarded
    status, headers, _ = call(app, "GET", "/api/tags", {"Host": "localhost:11434", "Origin": "http://localhost:3000"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000" and headers["Vary"] == "Origin"


def test_preflight_of_an_allowed_origin(guarded):
    app, pulls = guarded
    status, headers, body = call(app, "OPTIONS", "/api/pull", {"Host": "localhost:11434", "Origin": "app://desktop",
                                                               "Access-Control-Request-Method": "POST"})
    assert (status, body) == (204, b"")
    assert headers["Access-Control-Allow-Origin"] == "app://desktop"
    assert "POST" in headers["Access-Control-Allow-Methods"] and "Content-Type" in headers["Access-Control-Allow-Headers"]
    assert pulls == []


def test_preflight_of_a_foreign_origin_is_refused(guarded):
    app, _ = guarded
    status, headers, _ = call(app, "OPTIONS", "/api/pull", {"Host": "localhost:11434", "Origin": "https://attacker.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_host_check_is_off_when_not_bound_to_loopback(api_registry):
    local = Local(api_registry, guard=Guard(check_host=False))
    try:
        status, _, _ = call(local, "GET", "/api/tags", {"Host": "models.corp.example:11434"})
        assert status == 200
        status, _, _ = call(local, "GET", "/api/tags", {"Host": "models.corp.example:11434", "Origin": "https://attacker.example"})
        assert status == 403, "the Origin check applies however the server is bound"
    finally:
        local.close()


# -- over a real socket --------------------------------------------------------------


@pytest.mark.integration
def test_real_server_refuses_rebinding_and_foreign_origins(api_registry, monkeypatch):
    monkeypatch.delenv("OLLAMA_ORIGINS", raising=False)
    local = Local(api_registry, guard=Guard(check_host=is_loopback_address("127.0.0.1")))
    with Server(local, "127.0.0.1", 0) as server:

        def ask(headers: dict[str, str], method: str = "GET", path: str = "/api/tags") -> tuple[int, dict[str, str]]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.putrequest(method, path, skip_host=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                r = conn.getresponse()
                r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}
            finally:
                conn.close()

        assert ask({"Host": f"127.0.0.1:{server.port}"})[0] == 200
        assert ask({"Host": f"localhost:{server.port}"})[0] == 200
        assert ask({"Host": f"attacker.example:{server.port}"})[0] == 403
        status, headers = ask({"Host": f"127.0.0.1:{server.port}", "Origin": "http://attacker.example"})
        assert status == 403 and "access-control-allow-origin" not in headers
        status, headers = ask({"Host": f"127.0.0.1:{server.port}", "Origin": "http://localhost:5173"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:5173"
        status, headers = ask({"Host": f"127.0.0.1:{server.port}", "Origin": "http://localhost:5173",
                               "Access-Control-Request-Method": "DELETE"}, method="OPTIONS", path="/api/delete")
        assert status == 204 and "DELETE" in headers["access-control-allow-methods"]
