"""Proxy choice from the environment (engine.proxy): curl's variables, NO_PROXY with host:port, CIDR and domains."""

from __future__ import annotations

import pytest

from chunkpull.engine.proxy import bypasses_proxy, proxy_for, redact_userinfo

P = "http://proxy.internal:3128"


@pytest.mark.parametrize(
    "url, environ, want",
    [
        pytest.param("https://r.io/v2/", {}, None, id="none-set"),
        pytest.param("https://r.io/v2/", {"HTTPS_PROXY": P}, P, id="https"),
        pytest.param("https://r.io/v2/", {"https_proxy": P, "HTTPS_PROXY": "http://other:1"}, P, id="lowercase-first"),
        pytest.param("http://r.io/v2/", {"HTTPS_PROXY": P}, None, id="https-proxy-not-for-http"),
        pytest.param("http://r.io/v2/", {"HTTP_PROXY": P}, P, id="http"),
        pytest.param("http://r.io/v2/", {"ALL_PROXY": P}, P, id="all"),
        pytest.param("http://r.io/v2/", {"HTTP_PROXY": "proxy.internal:3128"}, P, id="scheme-added"),
        pytest.param("http://127.0.0.1:5000/v2/", {"HTTP_PROXY": P, "NO_PROXY": "127.0.0.1:5000"}, None, id="ip-with-port"),
        pytest.param("http://127.0.0.1:5001/v2/", {"HTTP_PROXY": P, "NO_PROXY": "127.0.0.1:5000"}, P, id="ip-other-port"),
        pytest.param("http://10.1.2.3/v2/", {"HTTP_PROXY": P, "no_proxy": "10.0.0.0/8"}, None, id="cidr"),
        pytest.param("https://a.corp.example/v2/", {"HTTPS_PROXY": P, "NO_PROXY": ".corp.example"}, None, id="dot-domain"),
        pytest.param("https://a.corp.example/v2/", {"HTTPS_PROXY": P, "NO_PROXY": "corp.example"}, None, id="domain"),
        pytest.param("https://notcorp.example/v2/", {"HTTPS_PROXY": P, "NO_PROXY": "corp.example"}, P, id="not-a-suffix-match"),
        pytest.param("https://reg.corp:443/v2/", {"HTTPS_PROXY": P, "NO_PROXY": "reg.corp:443"}, None, id="default-port-named"),
        pytest.param("https://reg.corp/v2/", {"HTTPS_PROXY": P, "NO_PROXY": "reg.corp:443"}, None, id="default-port-implied"),
        pytest.param("http://[::1]:8080/v2/", {"HTTP_PROXY": P, "NO_PROXY": "[::1]:8080"}, None, id="ipv6-port"),
        pytest.param("http://[::1]:8080/v2/", {"HTTP_PROXY": P, "NO_PROXY": "::1"}, None, id="ipv6"),
        pytest.param("http://r.io/v2/", {"HTTP_PROXY": P, "NO_PROXY": "*"}, None, id="star"),
        pytest.param("http://r.io/v2/", {"HTTP_PROXY": P, "NO_PROXY": " , x.io ,r.io "}, None, id="spaces-and-empties"),
    ],
)
def test_proxy_for(url, environ, want):
    assert proxy_for(url, environ) == want


def test_bypass_is_case_insensitive():
    assert bypasses_proxy("Reg.Corp", 443, "REG.corp")


def test_redact_userinfo():
    assert redact_userinfo("http://bob:hunter2@proxy:3128") == "http://***@proxy:3128"
    assert redact_userinfo("http://proxy:3128") == "http://proxy:3128"
