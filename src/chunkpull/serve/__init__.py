"""The Ollama-compatible local API behind ``chunkpull serve``: ``Local`` (WSGI), ``Server``, ``serve``."""

from .app import Local, PullInFlight
from .server import Server, serve

__all__ = ["Local", "PullInFlight", "Server", "serve"]
