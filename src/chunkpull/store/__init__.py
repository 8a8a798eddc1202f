"""The models directory in Ollama's layout: verified blobs, manifests, work files, resume records, locks."""

from .cache import BlobInfo, DiskCache
from .ingest import Ingest

__all__ = ["BlobInfo", "DiskCache", "Ingest"]
