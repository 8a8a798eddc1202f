"""One pull's data path: transport, stream monitor, piece pool, in-order assembler, sources, puller.

The engine is told what to do by a ``PullConfig``, ``BlobJob``s (layer,
origin ``Source``, mirrors) and ``Sources``; it never imports the registry
façade above it.
"""

from .config import BlobJob, PullConfig, Source
from .puller import Puller
from .sources import Mirror, Sources, SourceStats

__all__ = ["BlobJob", "Mirror", "PullConfig", "Puller", "Source", "SourceStats", "Sources"]
