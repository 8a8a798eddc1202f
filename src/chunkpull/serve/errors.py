"""The local API's errors: the one table that maps exceptions to HTTP statuses and codes.

``describe(err)`` returns (status, code, client-safe message) for anything a
request or a pull raised; ``HTTPError`` is an error of the request itself
(bad body, wrong method).  Only chunkpull's own errors, whose texts are
written for users, reach clients; anything else is "internal server error".

Imports errors only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..errors import (
    ChunkpullError,
    IncompletePullError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidDigestError,
    InvalidManifestError,
    InvalidNameError,
    ModelNotFoundError,
    PullCancelledError,
    RegistryError,
    TransportError,
)

__all__ = ["HTTPError", "describe", "is_public", "json_bytes", "public_message"]


class HTTPError(Exception):
    """An error of the request itself (not of a pull), with its status, code and extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = list(headers)


# (exception class, HTTP status, error code, fixed message).  The first row
# whose class matches wins, so subclasses come before their bases.  A fixed
# message of None sends the error's own text when it is written for users
# (see _is_public); anything not in the table is a 500.
_ERROR_TABLE: tuple[tuple[type[BaseException], int, str, str | None], ...] = (
    (InvalidNameError, 400, "bad_request", None),
    (InvalidDigestError, 400, "bad_request", None),
    # SPEC section 5: the answer says "model not found"; a stream's error
    # line keeps the name (model "x" not found).
    (ModelNotFoundError, 404, "not_found", "model not found"),
    (InsufficientSpaceError, 507, "insufficient_storage", None),
    (PullCancelledError, 503, "unavailable", None),
    # The upstream registry failed or sent bad data: not our fault, and the
    # message (URL, upstream status and text) is what the user needs.
    (RegistryError, 502, "bad_gateway", None),
    (TransportError, 502, "bad_gateway", None),
    (InvalidManifestError, 502, "bad_gateway", None),
    (IntegrityError, 502, "bad_gateway", None),
    (IncompletePullError, 502, "bad_gateway", None),
)
_INTERNAL_MESSAGE = "internal server error"


def is_public(err: BaseException) -> bool:
    """Return whether err's text is written for users and may be sent to clients.

    chunkpull's own errors are (``model "x" not found``, the upstream URL and
    status); anything else is internal: it goes to the log, never to a client.
    """
    return isinstance(err, (ChunkpullError, HTTPError))


def public_message(err: BaseException) -> str:
    return str(err) if is_public(err) else _INTERNAL_MESSAGE


def describe(err: BaseException) -> tuple[int, str, str]:
    """Return (status, code, client-safe message) for err, from the one table."""
    if isinstance(err, HTTPError):
        return err.status, err.code, str(err)
    for cls, status, code, message in _ERROR_TABLE:
        if isinstance(err, cls):
            return status, code, message or public_message(err)
    return 500, "internal_error", _INTERNAL_MESSAGE


def json_bytes(obj: object) -> bytes:
    # Compact and newline-terminated, byte for byte what Go's json.Encoder
    # writes, so that clients (and the seed's substring checks) see Ollama's
    # exact lines.
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
