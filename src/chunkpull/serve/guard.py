"""Who may talk to the local API: Host and Origin checks, and CORS answers (SPEC section 5).

A web page can make a browser send requests to ``127.0.0.1:11434``.  Two
checks stop it, as Ollama's do since CVE-2024-28224:

- **Host**, when the server is bound to a loopback address: only a local
  name passes (empty, ``localhost``, ``*.localhost``, ``*.local``,
  ``*.internal``, the machine's own name) or an IP literal; anything else
  is DNS rebinding (``attacker.example`` resolving to 127.0.0.1) and gets 403.
- **Origin**, always: a browser request from an origin outside the
  allow-list gets 403 before any work starts.  The list is
  ``http(s)://localhost``, ``127.0.0.1`` and ``0.0.0.0`` on any port, the
  ``app://``, ``file://``, ``tauri://``, ``vscode-webview://`` and
  ``vscode-file://`` schemes, plus ``OLLAMA_ORIGINS`` (comma-separated,
  ``*`` matches anything).  Allowed origins get ``Access-Control-Allow-Origin``
  and an answer to the OPTIONS preflight.  A request without ``Origin`` is
  not a browser's cross-origin request and passes.

Imports nothing from chunkpull.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable

__all__ = ["DEFAULT_ORIGINS", "Guard", "allowed_origins", "host_is_allowed", "is_loopback_address", "origin_is_allowed"]

DEFAULT_ORIGINS = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0") for scheme in ("http", "https") for port in ("", ":*")),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# What a preflight may ask for: the methods and headers the API uses.
ALLOW_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With"


def allowed_origins(extra: Iterable[str] | str | None = None) -> list[str]:
    """Return the origin patterns: ``extra``, then ``$OLLAMA_ORIGINS``, then the defaults.

    ``extra`` (``chunkpull serve --origins``) may be a comma-separated string
    or a list of patterns; both it and the variable extend the defaults.
    """
    if extra is None:
        extra = []
    elif isinstance(extra, str):
        extra = extra.split(",")
    env = os.environ.get("OLLAMA_ORIGINS", "").split(",")
    return [o.strip() for o in [*extra, *env] if o.strip()] + list(DEFAULT_ORIGINS)


def _pattern(origin: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", origin)), re.IGNORECASE)


def origin_is_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Say whether an Origin header value matches one of the patterns (``*`` matches any text)."""
    return any(_pattern(p).fullmatch(origin) for p in patterns)


def is_loopback_address(host: str) -> bool:
    """Say whether a bind address is a loopback one (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> str:
    """Return the host part of a Host header value (``[::1]:11434`` -> ``::1``, ``a:80`` -> ``a``)."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # no port, or a bare IPv6 literal


def host_is_allowed(value: str, hostname: str | None = None) -> bool:
    """Say whether a Host header names this machine locally (see the module docstring)."""
    host = _split_host(value).lower().rstrip(".")
    if host in ("", "localhost") or host.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        ipaddress.ip_address(host)
        return True  # an IP literal cannot be rebound by DNS
    except ValueError:
        pass
    own = (hostname if hostname is not None else socket.gethostname()).lower().rstrip(".")
    return bool(own) and host == own


class Guard:
    """The checks for one server: ``check_host`` (bound to loopback) and the origin patterns.

    ``verdict(environ)`` returns None to let a request through, or the
    (status, message) to refuse it with; ``cors_headers(environ)`` the
    headers an allowed browser request gets.
    """

    def __init__(self, *, check_host: bool = True, origins: Iterable[str] | str | None = None, hostname: str | None = None) -> None:
        self.check_host = check_host
        self.origins = allowed_origins(origins)
        self.hostname = hostname

    def verdict(self, environ: dict) -> tuple[int, str] | None:
        if self.check_host and not host_is_allowed(environ.get("HTTP_HOST", ""), self.hostname):
            return 403, "forbidden: this server answers only requests addressed to localhost"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and not origin_is_allowed(origin, self.origins):
            return 403, f"forbidden: origin {origin[:200]!r} is not allowed (add it to OLLAMA_ORIGINS)"
        return None

    def cors_headers(self, environ: dict) -> list[tuple[str, str]]:
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return []
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def preflight_headers(self, environ: dict) -> list[tuple[str, str]]:
        return [
            *self.cors_headers(environ),
            ("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", "43200"),
        ]
