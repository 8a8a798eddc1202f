"""chunkpull: fast, verified, chunked pulls of model blobs from Ollama-style registries.

>>> from chunkpull import Registry, DiskCache
>>> reg = Registry(DiskCache("/tmp/models"))            # doctest: +SKIP
>>> reg.pull("http://127.0.0.1:5000/library/smol")      # doctest: +SKIP
"""

from ._hashio import BACKEND
from ._version import __version__
from .core.digest import Digest
from .core.names import DEFAULT_MASK, Name, Ref, parse_ref
from .core.progress import Aggregator, Progress
from .errors import (
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
from .registry import DEFAULT_CHUNKING_THRESHOLD, Layer, Manifest, PullResult, Registry, Tuning
from .store.cache import DiskCache


def __getattr__(name: str):
    # Local lives in api, which loads the HTTP server stack (http.server,
    # socketserver, signal): only a caller that asks for it pays for that.
    if name == "Local":
        from .serve.app import Local

        globals()["Local"] = Local
        return Local
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKEND",
    "DEFAULT_CHUNKING_THRESHOLD",
    "DEFAULT_MASK",
    "Aggregator",
    "ChunkpullError",
    "Digest",
    "DiskCache",
    "IncompletePullError",
    "InsufficientSpaceError",
    "IntegrityError",
    "InvalidDigestError",
    "Local",
    "InvalidManifestError",
    "InvalidNameError",
    "Layer",
    "Manifest",
    "ModelNotFoundError",
    "Name",
    "Progress",
    "Ref",
    "PullCancelledError",
    "PullResult",
    "Tuning",
    "Registry",
    "RegistryError",
    "TransportError",
    "__version__",
    "parse_ref",
]
