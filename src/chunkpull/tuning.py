"""``Tuning``: the engine's knobs in one typed value, and the names of the user settings' choices.

Most users never need this: ``Registry(models, max_streams=, verify=, ...)``
takes the settings people choose per site.  ``Tuning`` gathers the rest
(chunking threshold, piece size, memory, I/O mode, timeouts, retries),
each defaulting to the value the README's "Tuning" section documents, so
a ``Registry`` signature stays short and a benchmark can pass one object.

``VerifyMode`` and ``IOMode`` are the ``Literal`` types of the ``verify``
and ``io`` settings.  ``tuning_from_legacy`` turns the keyword arguments
``Registry`` took before issue 13 (``chunking_threshold=``, ``backoff=``,
``timeout_s=``, ...) into a ``Tuning``, for callers not yet moved.

Imports the engine's defaults (``engine.config``, ``engine.transport``) and
``_env``; never the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from . import _env
from .engine.config import DEFAULT_BUFFER_SIZE, DEFAULT_CHUNKING_THRESHOLD, DEFAULT_MEMORY_BUDGET, DEFAULT_STALL_TIMEOUT_S
from .engine.transport import DEFAULT_TIMEOUT_S, Backoff

__all__ = ["IOMode", "IO_MODES", "Tuning", "VERIFY_MODES", "VerifyMode", "tuning_from_legacy"]

VerifyMode = Literal["blob", "chunks"]
IOMode = Literal["auto", "direct", "buffered"]
VERIFY_MODES: tuple[VerifyMode, ...] = get_args(VerifyMode)
IO_MODES: tuple[IOMode, ...] = get_args(IOMode)

_DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class Tuning:
    """How a Registry's pulls run: every field has the documented default.

    chunking_threshold
        blobs smaller than this many bytes come in one request (64 MiB, Ollama's).
    buffer_size
        bytes per piece, the unit of socket reads and O_DIRECT writes; a
        multiple of 4096 (4 MiB).
    memory_budget
        bytes of pieces a pull may park ahead of the in-order hash.
    io
        ``"auto"`` (O_DIRECT where the file system allows it), ``"direct"``
        (insist) or ``"buffered"``; None: ``$CHUNKPULL_IO``, else ``"auto"``.
    stall_timeout_s
        a stream that sends nothing for this long is cut and its range
        retried on another connection (5 s).
    connect_timeout_s, read_timeout_s
        socket timeouts of every request (10 s, 30 s).
    retries, retry_base_s, retry_cap_s
        attempts per request in all (6), and the backoff between them:
        n² × ``retry_base_s`` (10 ms), capped at ``retry_cap_s`` (2 s), jittered.

    >>> from chunkpull import Registry, Tuning
    >>> t = Tuning(chunking_threshold=16 << 20, stall_timeout_s=10)
    >>> t.chunking_threshold, t.retries
    (16777216, 6)
    >>> Registry("/tmp/models", tuning=t).tuning.stall_timeout_s     # doctest: +SKIP
    10

    Raises:
        ValueError: a value out of its range (the message names the field).
    """

    chunking_threshold: int = DEFAULT_CHUNKING_THRESHOLD
    buffer_size: int = DEFAULT_BUFFER_SIZE
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    io: IOMode | None = None
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_TIMEOUT_S[0]
    read_timeout_s: float = DEFAULT_TIMEOUT_S[1]
    retries: int = _DEFAULT_BACKOFF.attempts
    retry_base_s: float = _DEFAULT_BACKOFF.base_s
    retry_cap_s: float = _DEFAULT_BACKOFF.cap_s

    def __post_init__(self) -> None:
        if self.chunking_threshold < 0:
            raise ValueError(f"Tuning(chunking_threshold={self.chunking_threshold}): want 0 or more bytes")
        if self.buffer_size <= 0 or self.buffer_size % 4096:
            raise ValueError(f"Tuning(buffer_size={self.buffer_size}): want a positive multiple of 4096 bytes")
        if self.memory_budget <= 0:
            raise ValueError(f"Tuning(memory_budget={self.memory_budget}): want a positive number of bytes")
        if self.io is not None and self.io not in IO_MODES:
            raise ValueError(f"Tuning(io={self.io!r}): want one of {', '.join(IO_MODES)}")
        for field in ("stall_timeout_s", "connect_timeout_s", "read_timeout_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"Tuning({field}={getattr(self, field)}): want a positive number of seconds")
        if self.retries < 1:
            raise ValueError(f"Tuning(retries={self.retries}): want at least 1 attempt")
        if self.retry_base_s < 0 or self.retry_cap_s < 0:
            raise ValueError("Tuning(retry_base_s=, retry_cap_s=): want 0 or more seconds")

    @property
    def timeout_s(self) -> tuple[float, float]:
        """Return (connect, read) timeouts in seconds, as requests takes them."""
        return (self.connect_timeout_s, self.read_timeout_s)

    @property
    def backoff(self) -> Backoff:
        """Return the retry policy as the transport takes it."""
        return Backoff(attempts=self.retries, base_s=self.retry_base_s, cap_s=self.retry_cap_s)

    def resolved_io(self) -> IOMode:
        """Return ``io``, or ``$CHUNKPULL_IO`` (else ``"auto"``) when it is None."""
        if self.io is not None:
            return self.io
        return cast(IOMode, _env.io_mode())  # _env.io_mode() admits only IO_MODES


# Keyword arguments Registry took before Tuning, and the field each now is.
_LEGACY_FIELDS = ("chunking_threshold", "buffer_size", "memory_budget", "io", "stall_timeout_s")


def tuning_from_legacy(tuning: Tuning | None, legacy: dict[str, Any]) -> Tuning:
    """Fold the old tuning keywords (``chunking_threshold=``, ``backoff=``, ``timeout_s=``, ...) into a Tuning.

    ``legacy`` is consumed: the keywords taken out are removed from it.
    ``None`` values mean "the default", as they did.

    Raises:
        TypeError: a keyword that was never a Registry argument.
    """
    changes: dict[str, Any] = {}
    for field in _LEGACY_FIELDS:
        value = legacy.pop(field, None)
        if value is not None:
            changes[field] = value
    timeout = legacy.pop("timeout_s", None)
    if timeout is not None:
        changes["connect_timeout_s"], changes["read_timeout_s"] = timeout
    backoff = legacy.pop("backoff", None)
    if backoff is not None:
        changes.update(retries=backoff.attempts, retry_base_s=backoff.base_s, retry_cap_s=backoff.cap_s)
    if legacy:
        raise TypeError(f"Registry() got an unexpected keyword argument {next(iter(legacy))!r}")
    base = tuning or Tuning()
    return dataclasses.replace(base, **changes) if changes else base
