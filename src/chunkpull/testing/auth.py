"""The built-in registry's auth modes: Basic with one user, or the Docker token flow with a realm of its own.

Standard library only.
"""

from __future__ import annotations

import base64
import uuid

__all__ = ["RegistryAuthMode"]


class RegistryAuthMode:
    """How the built-in registry authenticates: ``basic`` with one user, or ``bearer`` with a token realm at ``/token``.

    For ``bearer``, ``user`` may be None (anonymous tokens, as ghcr.io and
    Docker Hub hand out); tokens live ``ttl_s`` seconds (``expires_in``),
    and ``revoke()`` invalidates every token issued so far (a token that
    expires in the middle of a long pull).
    """

    def __init__(self, scheme: str, user: str | None = None, password: str = "", ttl_s: int = 300) -> None:
        if scheme not in ("basic", "bearer"):
            raise ValueError("scheme must be basic or bearer")
        self.scheme = scheme
        self.user = user
        self.password = password
        self.ttl_s = ttl_s
        self._tokens: set[str] = set()
        self.issued = 0

    def _basic_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, password) == (self.user, self.password)

    def accepts_basic(self, header: str) -> bool:
        return self._basic_ok(header)

    def accepts_token(self, token: str) -> bool:
        return token in self._tokens

    def issue(self, header: str) -> str | None:
        if self.user is not None and not self._basic_ok(header):
            return None
        token = uuid.uuid4().hex
        self._tokens.add(token)
        self.issued += 1
        return token

    def revoke(self) -> None:
        self._tokens.clear()
