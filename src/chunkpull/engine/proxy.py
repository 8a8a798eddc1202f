"""Which HTTP proxy a request goes through, read from the environment the way curl reads it.

``HTTPS_PROXY`` / ``https_proxy`` for https URLs, ``HTTP_PROXY`` /
``http_proxy`` for http, ``ALL_PROXY`` / ``all_proxy`` for either, and
``NO_PROXY`` / ``no_proxy`` to go direct.  NO_PROXY entries are ``*``, a host
or domain (``example.com`` also covers ``a.example.com``; a leading ``.`` is
the same), ``host:port`` (only that port), an IP address or a CIDR block.
requests' own matching misses ``host:port`` for IP addresses
(``127.0.0.1:5000``), which is how local registries and mirrors are named, so
the transport decides per request with this module and tells requests.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["bypasses_proxy", "proxy_for", "redact_userinfo"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _env(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the proxy URL a request for url should use, or None to connect directly."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    proxy = _env(environ, f"{scheme}_proxy") or _env(environ, "all_proxy")
    if not proxy:
        return None
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    if bypasses_proxy(parts.hostname or "", port, _env(environ, "no_proxy")):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Say whether a NO_PROXY value sends host:port direct."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry_host, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry_host.lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """Split ``host:port``, ``[v6]:port`` or a bare host / IPv6 address / CIDR."""
    if entry.startswith("["):
        addr, _, rest = entry[1:].partition("]")
        return addr, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def redact_userinfo(url: str) -> str:
    """Return url with any ``user:password@`` replaced by ``***@``, for messages."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=netloc))
