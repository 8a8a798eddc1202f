"""Network failures in a few words a user can act on (requests' own text is a nest of reprs)."""

from __future__ import annotations

import socket

import requests

from .proxy import redact_userinfo

__all__ = ["describe"]


def describe(err: BaseException, *, proxy: str | None = None) -> str:
    """Say what went wrong on the network in a few words (requests' own text is a nest of reprs).

    ``proxy`` is the proxy the request went through, named (without its
    credentials) when the failure is the proxy's.
    """
    if isinstance(err, requests.exceptions.ProxyError):
        via = f"the proxy {redact_userinfo(proxy)}" if proxy else "the proxy"
        return (f"cannot connect through {via}: {_root_reason(err)}; check HTTPS_PROXY / HTTP_PROXY, "
                "or list this registry in NO_PROXY (host, host:port or CIDR) to connect directly")
    if isinstance(err, requests.exceptions.SSLError):
        reason = _root_reason(err)
        if "certificate" in reason.lower():
            return (f"TLS handshake failed ({reason}); if the registry's certificate comes from a private CA, "
                    "give that CA with --ca-cert FILE (or SSL_CERT_FILE / SSL_CERT_DIR), or install it in the system's trust store")
        return f"TLS handshake failed ({reason}); if the registry speaks plain HTTP, use an http:// name"
    if isinstance(err, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(err, (requests.ReadTimeout, socket.timeout)):
        return "no response (read timed out)"
    if isinstance(err, requests.exceptions.TooManyRedirects):
        return "the registry redirects in a loop (more than 30 redirects)"
    if isinstance(err, (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)):
        return f"the registry redirected to a URL that is not http(s): {err}"
    if isinstance(err, requests.exceptions.InvalidURL):
        return f"not a usable URL: {err}"
    if isinstance(err, requests.ConnectionError):
        return f"cannot connect: {_root_reason(err)}"
    return str(err)


def _root_reason(err: BaseException) -> str:
    """Return the innermost OS-level reason in an exception chain (e.g. "connection refused")."""
    seen, todo = set(), [err]
    found = None
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno and e.strerror:
            found = e
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__, *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    if found is not None:
        return found.strerror[0].lower() + found.strerror[1:]
    text = str(err)
    return text.rsplit(": ", 1)[-1].strip(" ')\"") or text
