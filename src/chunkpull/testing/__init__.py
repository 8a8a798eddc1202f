"""Test tooling shipped with chunkpull: the built-in registry with fault injection.

Not on the product's import path: ``import chunkpull`` and ``chunkpull pull``
never load it.  ``chunkpull registry serve|make`` and the tests do.
"""

from .auth import RegistryAuthMode
from .faults import Faults, Stats
from .models import build_model
from .registry import DEFAULT_CHUNK_SIZE, TestRegistry

__all__ = ["DEFAULT_CHUNK_SIZE", "Faults", "RegistryAuthMode", "Stats", "TestRegistry", "build_model"]
