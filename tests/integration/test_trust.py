"""Private CAs: a registry whose certificate comes from a CA of the test's own, verified the ways users configure it.

``--ca-cert`` (``Registry(ca_cert=)``), ``SSL_CERT_FILE``, ``SSL_CERT_DIR``
(a hashed directory), and no configuration at all: then the operating
system's trust store is used, which does not know this CA, and the error
says what to configure.  The CA and the server certificate are made with
the openssl command line.
"""

from __future__ import annotations

import json

import pytest

from chunkpull.core.digest import Digest
from chunkpull.errors import TransportError
from realregistries import make_pki

pytestmark = pytest.mark.integration

MIB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_up(upstream, pki):
    up = upstream([3 * MIB], seed=110, certfile=str(pki / "server.pem"), keyfile=str(pki / "server.key"))
    return up


def _pulled(reg, up) -> bool:
    layer = json.loads(up.manifest())["layers"][0]["digest"]
    return reg.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)


def test_unknown_ca_says_what_to_configure(tls_up, make_registry, monkeypatch):
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TransportError, match="--ca-cert") as info:
        make_registry().pull(tls_up.ref(scheme="https"))
    assert "certificate" in str(info.value)


def test_ca_cert_option(tls_up, make_registry, pki):
    reg = make_registry(ca_cert=pki / "ca.pem")
    reg.pull(tls_up.ref(scheme="https"))
    assert _pulled(reg, tls_up)


@pytest.mark.parametrize("var, path", [("SSL_CERT_FILE", "ca.pem"), ("SSL_CERT_DIR", "cadir")])
def test_ssl_cert_environment(tls_up, make_registry, pki, monkeypatch, var, path):
    for other in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, str(pki / path))
    reg = make_registry()
    reg.pull(tls_up.ref(scheme="https"))
    assert _pulled(reg, tls_up)
