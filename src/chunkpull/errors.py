"""The exception hierarchy, declared once, in plain Python.

Every error chunkpull raises on purpose is a ``ChunkpullError``; each message
says what went wrong and, where it helps, what to do next.  Several classes
also derive from a builtin (``ValueError``, ``LookupError``,
``ConnectionError``) so that generic callers can catch them the usual way.
The native module raises only builtins; the Python layer translates them.

This module is a leaf: it imports nothing from chunkpull.
"""

from __future__ import annotations

__all__ = [
    "ChunkpullError",
    "InvalidNameError",
    "InvalidDigestError",
    "ModelNotFoundError",
    "InvalidManifestError",
    "IntegrityError",
    "RegistryError",
    "TransportError",
    "IncompletePullError",
    "InsufficientSpaceError",
    "PullCancelledError",
]


class ChunkpullError(Exception):
    """Base class of every error chunkpull raises on purpose; its message says what to do.

    >>> import chunkpull
    >>> try:
    ...     chunkpull.pull("ftp://example.com/library/smol")
    ... except chunkpull.ChunkpullError as err:
    ...     print(type(err).__name__, err)
    InvalidNameError unsupported scheme "ftp" in "ftp://example.com/library/smol" (want one of https, http, https+insecure)
    """


class InvalidNameError(ChunkpullError, ValueError):
    """A model name is malformed, incomplete or uses an unsupported scheme.

    >>> from chunkpull import parse_ref
    >>> parse_ref("library/")
    Traceback (most recent call last):
    chunkpull.errors.InvalidNameError: invalid or missing name: "library/"
    """


class InvalidDigestError(ChunkpullError, ValueError):
    """A digest is not ``sha256:<64 hex>`` (or ``sha256-<hex>``).

    >>> from chunkpull import Digest
    >>> Digest.parse("sha256:abc")
    Traceback (most recent call last):
    chunkpull.errors.InvalidDigestError: invalid digest: 'sha256:abc' (want sha256:<64 lowercase hex>)
    """


class ModelNotFoundError(ChunkpullError, LookupError):
    """The registry or the local cache has no such model; ``name`` is the name as asked for.

    >>> try:
    ...     chunkpull.pull("http://127.0.0.1:5000/library/no-such-model")  # doctest: +SKIP
    ... except LookupError as err:
    ...     print(err)
    model "http://127.0.0.1:5000/library/no-such-model" not found
    >>> print(ModelNotFoundError("smol"))
    model "smol" not found
    """

    def __init__(self, name: str = "", message: str = "") -> None:
        self.name = name
        if not message:
            message = 'model "' + name + '" not found' if name else "model not found"
        super().__init__(message)


class InvalidManifestError(ChunkpullError, ValueError):
    """A manifest is empty, not JSON, or lacks layers.

    >>> from chunkpull import Manifest
    >>> Manifest.parse(b'{"layers": []}')
    Traceback (most recent call last):
    chunkpull.errors.InvalidManifestError: invalid manifest: no layers
    """


class IntegrityError(ChunkpullError):
    """Bytes did not hash to the digest (or size) they were promised to; nothing was stored under that digest.

    ``digest`` names the blob, ``expected`` and ``got`` the two values.

    >>> err = IntegrityError("blob sha256:ab… hashes to sha256:cd…", digest="sha256:ab…", expected="sha256:ab…", got="sha256:cd…")
    >>> err.got
    'sha256:cd…'
    """

    def __init__(self, message: str, *, digest: str = "", expected: str = "", got: str = "") -> None:
        super().__init__(message)
        self.digest = digest
        self.expected = expected
        self.got = got


class RegistryError(ChunkpullError):
    """The registry answered with an error status.

    ``status`` is the HTTP status, ``code`` and ``message`` come from the
    error body (``message`` is the raw body text when it was not one of the
    two JSON error forms), ``url`` is the request's URL.  A status of 500 or
    more (and 429) is worth retrying; any other 4xx is not.

    >>> err = RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown", "https://h/v2/library/smol/manifests/latest")
    >>> print(err)
    request error https://h/v2/library/smol/manifests/latest: registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown
    >>> err.retryable, RegistryError(503).retryable
    (False, True)
    """

    retry_after_s: float | None = None  # from a Retry-After header, when sent
    hint: str = ""  # what the user can do about it (e.g. how to give credentials), shown after the message

    def __init__(self, status: int, code: str = "", message: str = "", url: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        self.url = url
        detail = f"registry responded with status {status}"
        if code:
            detail += f": code {code}"
        if message:
            detail += f": {message}"
        self.detail = detail
        super().__init__(f"request error {url}: {detail}" if url else detail)

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}; {self.hint}" if self.hint else text

    @property
    def retryable(self) -> bool:
        """Return whether asking again may succeed: 5xx and 429 (too many requests)."""
        return self.status >= 500 or self.status == 429


class TransportError(ChunkpullError, ConnectionError):
    """The network failed and retries were exhausted; ``__cause__`` says why.

    >>> try:
    ...     chunkpull.pull("http://127.0.0.1:9/library/smol")   # doctest: +SKIP
    ... except ConnectionError as err:
    ...     print(err)
    request error http://127.0.0.1:9/v2/library/smol/manifests/latest: connection refused ...
    """


class IncompletePullError(ChunkpullError):
    """Some layers could not be pulled; ``errors`` maps each digest to its cause.

    >>> err = IncompletePullError("2 of 3 blobs failed", errors={"sha256:ab…": TimeoutError("read timed out")})
    >>> list(err.errors)
    ['sha256:ab…']
    """

    def __init__(self, message: str, *, errors: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


class PullCancelledError(ChunkpullError):
    """The pull was cancelled; chunked blobs' progress is kept for the next pull to resume.

    >>> print(PullCancelledError())
    pull cancelled; the next pull resumes the large blobs where this one stopped
    """

    def __init__(self, message: str = "pull cancelled; the next pull resumes the large blobs where this one stopped") -> None:
        super().__init__(message)


class InsufficientSpaceError(ChunkpullError, OSError):
    """The models directory's file system has too little free space (checked before a blob's download starts).

    >>> import errno
    >>> InsufficientSpaceError(errno.ENOSPC, "not enough space in /tmp/models for blob 0bf3622b362c").errno == errno.ENOSPC
    True
    """
