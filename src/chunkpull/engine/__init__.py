"""One pull's data path: transport, stream monitor, piece pool, in-order assembler, puller.

The engine is told what to do by a ``PullConfig`` and a ``Source`` and never
imports the registry façade above it.
"""

from .config import PullConfig, Source
from .puller import Puller

__all__ = ["PullConfig", "Puller", "Source"]
