"""The real docker-registry behind token auth, TLS from a private CA, in proxy (pull-through) mode, and behind HTTP proxies.

A small Docker token service (``realregistries.TokenServer``) signs the JWTs
distribution verifies; it logs every request, so the tests see which
credentials reached it and how often tokens were asked for.  The CA and
certificates are made with the openssl command line.
"""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

from chunkpull.core.digest import Digest
from chunkpull.errors import RegistryError, TransportError
from realregistries import MIB, Distribution, TokenServer, free_port, make_pki, pseudo, pull_through_pair, require_distribution

pytestmark = pytest.mark.integration

SECRET = "correct horse"
USERS = {"alice": SECRET}


def _has(reg, digest: str, data: bytes) -> bool:
    return reg.cache.blob_path(Digest.parse(digest)).read_bytes() == data


@pytest.fixture(autouse=True)
def no_ambient_settings(tmp_path, monkeypatch):
    # The developer's own credentials, CAs and proxies must not leak into these tests.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_registry(tmp_path):
    """docker-registry with ``auth: token`` and its token server (plain http); yields (registry, token server)."""
    require_distribution()
    tokens = TokenServer(tmp_path, USERS)
    server = Distribution(tmp_path, extra=tokens.config(), auth=("alice", SECRET))
    yield server, tokens
    server.stop()
    tokens.stop()


def test_token_flow_anonymous_pull_of_a_public_repository(token_registry, make_registry):
    server, tokens = token_registry
    weights = pseudo(6 * MIB, 1)
    digest, descs = server.push_image("public/smol", "v1", [weights], oci=True)
    tokens.log.clear()
    reg = make_registry()
    m = reg.pull(f"http://127.0.0.1:{server.port}/public/smol:v1").manifest
    assert str(m.digest) == digest and _has(reg, descs[0]["digest"], weights)
    # One anonymous token for the repository's scope, cached for every range and the manifest.
    assert [(e["user"], "scope=repository%3Apublic%2Fsmol%3Apull" in e["path"]) for e in tokens.log] == [("", True)]


def test_token_flow_with_credentials(token_registry, make_registry):
    server, tokens = token_registry
    weights = pseudo(3 * MIB, 2)
    _digest, descs = server.push_image("team/private", "v1", [weights], oci=False)
    name = f"http://127.0.0.1:{server.port}/team/private:v1"
    with pytest.raises(RegistryError) as info:
        make_registry().pull(name)  # anonymous: the token grants nothing, the registry says 401
    assert info.value.status == 401 and "chunkpull login" in str(info.value)

    with pytest.raises(RegistryError) as info:
        make_registry(credentials={f"127.0.0.1:{server.port}": ("alice", "wrong")}).pull(name)
    assert "token server refused" in str(info.value) and "wrong" not in str(info.value)

    tokens.log.clear()
    reg = make_registry(credentials={f"127.0.0.1:{server.port}": ("alice", SECRET)})
    reg.pull(name)
    assert _has(reg, descs[0]["digest"], weights)
    assert [e["user"] for e in tokens.log] == ["alice"]


def test_token_refreshed_when_the_registry_stops_accepting_it(token_registry, make_registry, tmp_path):
    # The signing key rotates and the registry restarts trusting only the new
    # key: the cached token now gets a 401, and the client asks for a new one.
    server, tokens = token_registry
    first, second = pseudo(2 * MIB, 3), pseudo(2 * MIB, 4)
    _d, one = server.push_image("public/rotating", "v1", [first], oci=True)
    _d, two = server.push_image("public/rotating", "v2", [second], oci=True)
    reg = make_registry()
    reg.pull(f"http://127.0.0.1:{server.port}/public/rotating:v1")
    tokens.rotate()
    server.stop()
    restarted = Distribution(tmp_path, extra=tokens.config(), port=server.port)
    try:
        tokens.log.clear()
        reg.pull(f"http://127.0.0.1:{server.port}/public/rotating:v2")
        assert _has(reg, one[0]["digest"], first) and _has(reg, two[0]["digest"], second)
        assert len(tokens.log) == 1  # one fresh token, not one per request
    finally:
        restarted.stop()
        server.proc = restarted.proc  # the fixture's stop() is then a no-op on a stopped process


def test_tls_from_a_private_ca_with_a_tls_token_server(pki, tmp_path, make_registry, monkeypatch):
    require_distribution()
    tokens = TokenServer(tmp_path, USERS, tls=pki)
    server = Distribution(tmp_path, extra=tokens.config(), auth=("alice", SECRET), tls=pki)
    try:
        weights = pseudo(3 * MIB, 5)
        _d, descs = server.push_image("team/secure", "v1", [weights], oci=True)
        name = f"https://127.0.0.1:{server.port}/team/secure:v1"
        creds = {f"127.0.0.1:{server.port}": ("alice", SECRET)}
        for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(var, raising=False)
        with pytest.raises(TransportError, match="--ca-cert"):
            make_registry(credentials=creds).pull(name)
        reg = make_registry(credentials=creds, ca_cert=pki / "ca.pem")
        reg.pull(name)  # the registry and its token realm both verified against the test CA
        assert _has(reg, descs[0]["digest"], weights)
        monkeypatch.setenv("SSL_CERT_DIR", str(pki / "cadir"))
        reg = make_registry(credentials=creds)
        reg.pull(name)
        assert _has(reg, descs[0]["digest"], weights)
    finally:
        server.stop()
        tokens.stop()


def test_pull_through_cache_cold_and_warm(tmp_path, make_registry):
    # distribution in proxy mode in front of another distribution: what a mirror tier runs.
    require_distribution()
    origin, proxy = pull_through_pair(tmp_path)
    try:
        weights = pseudo(12 * MIB, 6)
        digest, descs = origin.push_image("library/mirrored", "v1", [weights], oci=True)
        name = f"http://127.0.0.1:{proxy.port}/library/mirrored:v1"
        cold = make_registry()
        m = cold.pull(name).manifest
        assert str(m.digest) == digest and _has(cold, descs[0]["digest"], weights)
        fetched = origin.blob_gets("library/mirrored", descs[0]["digest"])
        assert fetched >= 1
        warm = make_registry()
        warm.pull(name)
        assert _has(warm, descs[0]["digest"], weights)
        assert origin.blob_gets("library/mirrored", descs[0]["digest"]) == fetched  # served from the cache
        assert proxy.blob_gets("library/mirrored", descs[0]["digest"]) >= 3  # in ranges once warm
    finally:
        proxy.stop()
        origin.stop()


class _ForwardProxy(http.server.ThreadingHTTPServer):
    """A plain-HTTP forward proxy (absolute-URI GETs) that logs what it forwards."""

    daemon_threads = True

    def __init__(self) -> None:
        self.log: list[tuple[str, str | None]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.log.append((self.path, self.headers.get("Authorization")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection", "connection")}
                with requests.get(self.path, headers=headers, stream=True, timeout=30, allow_redirects=False,
                                  proxies={"http": None, "https": None}) as r:
                    body = r.raw.read(decode_content=False)
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    require_distribution()
    server = Distribution(tmp_path_factory.mktemp("plain"))
    yield server
    server.stop()


def test_pull_through_an_http_proxy(plain, make_registry, monkeypatch):
    weights = pseudo(3 * MIB, 7)
    _d, descs = plain.push_image("library/proxied", "v1", [weights], oci=True)
    proxy = _ForwardProxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        reg = make_registry()
        reg.pull(f"http://127.0.0.1:{plain.port}/library/proxied:v1")
        assert _has(reg, descs[0]["digest"], weights)
        assert any("/blobs/" + descs[0]["digest"] in path for path, _auth in proxy.log)
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_dead_proxy_is_named_and_no_proxy_with_host_port_goes_direct(plain, make_registry, monkeypatch):
    weights = pseudo(MIB, 8)
    _d, descs = plain.push_image("library/direct", "v1", [weights], oci=True)
    dead = free_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:hunter2@127.0.0.1:{dead}")
    name = f"http://127.0.0.1:{plain.port}/library/direct:v1"
    with pytest.raises(TransportError) as info:
        make_registry().pull(name)
    text = str(info.value)
    assert f"proxy http://***@127.0.0.1:{dead}" in text and "NO_PROXY" in text and "hunter2" not in text
    monkeypatch.setenv("NO_PROXY", f"localhost,127.0.0.1:{plain.port}")  # requests alone would not match an IP with a port
    reg = make_registry()
    reg.pull(name)
    assert _has(reg, descs[0]["digest"], weights)
