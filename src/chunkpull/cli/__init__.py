"""The ``chunkpull`` command (entry point ``chunkpull.cli:main``); see ``cli.main``."""

from .main import main

__all__ = ["main"]
