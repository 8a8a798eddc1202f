"""Every environment variable chunkpull reads, read when called, validated.

Functions here read ``os.environ`` at call time (never at import), so tests
can set variables with ``monkeypatch.setenv``.  A bad value raises
``ValueError`` naming the variable.  Imports nothing from chunkpull.
"""

from __future__ import annotations

import os
from pathlib import Path

# Streams: adaptive by default (engine.adaptive: it starts at
# DEFAULT_MAX_STREAMS and grows while throughput rises, 2 to 64); the
# variables below pin a count.  DEFAULT_MAX_STREAMS is also the count the
# benchmarks' baselines run at.
ADAPTIVE_STREAMS = 0  # the max_streams value asking for the adaptive count (engine.adaptive.ADAPTIVE; a test keeps them equal)
DEFAULT_MAX_STREAMS = 8  # engine.adaptive.ADAPTIVE_START
MAX_MAX_STREAMS = 256



def models_dir() -> Path:
    """Return the models root: ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    value = os.environ.get("OLLAMA_MODELS", "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".ollama" / "models"


def max_streams() -> int:
    """Return ``$CHUNKPULL_MAX_STREAMS``, else ``$OLLAMA_REGISTRY_MAXSTREAMS``, else ``ADAPTIVE_STREAMS`` (0: adaptive, the default)."""
    pinned = pinned_streams()
    return ADAPTIVE_STREAMS if pinned is None else pinned


def pinned_streams() -> int | None:
    """Return the stream count ``$CHUNKPULL_MAX_STREAMS`` or ``$OLLAMA_REGISTRY_MAXSTREAMS`` pins, or None (adaptive: unset or ``auto``)."""
    for var in ("CHUNKPULL_MAX_STREAMS", "OLLAMA_REGISTRY_MAXSTREAMS"):
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        if value.lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{var}={value!r}: want auto or a whole number of streams, 1 to {MAX_MAX_STREAMS}") from None
        if not 1 <= n <= MAX_MAX_STREAMS:
            raise ValueError(f"{var}={value!r}: want auto or a whole number of streams, 1 to {MAX_MAX_STREAMS}")
        return n
    return None


def backend() -> str:
    """Return ``$CHUNKPULL_BACKEND``: ``auto`` (default), ``native`` or ``python``."""
    value = os.environ.get("CHUNKPULL_BACKEND", "auto").strip().lower() or "auto"
    if value not in ("auto", "native", "python"):
        raise ImportError(f"CHUNKPULL_BACKEND={value!r}: want one of auto, native, python")
    return value


def io_mode() -> str:
    """Return ``$CHUNKPULL_IO``: ``auto`` (default), ``direct`` or ``buffered``."""
    value = os.environ.get("CHUNKPULL_IO", "auto").strip().lower() or "auto"
    if value not in ("auto", "direct", "buffered"):
        raise ValueError(f"CHUNKPULL_IO={value!r}: want one of auto, direct, buffered")
    return value


def ca_cert() -> str | None:
    """Return the CA certificates to verify registries with: ``$SSL_CERT_FILE``, else ``$SSL_CERT_DIR``, else None (the system's store)."""
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        value = os.environ.get(var, "").strip()
        if value:
            if not Path(value).exists():
                raise ValueError(f"{var}={value!r}: no such file or directory")
            return value
    return None
