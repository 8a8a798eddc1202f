"""chunkpull: fast, verified, chunked pulls of model blobs from Ollama-style registries.

One call pulls a model and says where its files are:

>>> import chunkpull
>>> result = chunkpull.pull("http://127.0.0.1:5000/library/smol", models="/tmp/models", progress="tqdm")  # doctest: +SKIP
>>> result.model_path                                                                                  # doctest: +SKIP
PosixPath('/tmp/models/blobs/sha256-0bf3622b362c…')

``chunkpull.apull`` is the same for asyncio; ``Registry`` keeps connections
(and tokens) across pulls; every error is a ``ChunkpullError``.
"""

from ._hashio import BACKEND
from ._version import __version__
from .bars import TqdmProgress
from .core.digest import Digest
from .core.index import Platform
from .core.names import DEFAULT_MASK, Name, Ref, parse_ref
from .core.progress import Aggregator, ByteCounts, LayerProgress, Progress, ProgressCallback, State
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
from .library import AsyncPull, RegistryOptions, apull, pull
from .registry import DEFAULT_CHUNKING_THRESHOLD, Layer, Manifest, PullReport, PullResult, Registry, SourceStats
from .store.cache import BlobInfo, DiskCache
from .store.ingest import Partial
from .tuning import IOMode, Tuning, VerifyMode


def __getattr__(name: str) -> object:
    # Local lives in serve, which loads the HTTP server stack (waitress):
    # only a caller that asks for it pays for that.
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
    "AsyncPull",
    "BlobInfo",
    "ByteCounts",
    "ChunkpullError",
    "Digest",
    "DiskCache",
    "IOMode",
    "IncompletePullError",
    "InsufficientSpaceError",
    "IntegrityError",
    "InvalidDigestError",
    "InvalidManifestError",
    "InvalidNameError",
    "Layer",
    "LayerProgress",
    "Local",
    "Manifest",
    "ModelNotFoundError",
    "Name",
    "Platform",
    "Progress",
    "ProgressCallback",
    "Partial",
    "PullCancelledError",
    "PullReport",
    "PullResult",
    "Ref",
    "Registry",
    "RegistryError",
    "RegistryOptions",
    "SourceStats",
    "State",
    "TqdmProgress",
    "TransportError",
    "Tuning",
    "VerifyMode",
    "__version__",
    "apull",
    "parse_ref",
    "pull",
]
