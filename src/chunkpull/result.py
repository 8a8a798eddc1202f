"""``PullResult``: what a pull gives back, the local paths first.

A pull's caller usually wants one file: the model's weights.  ``PullResult``
maps every blob of the manifest to its path under ``blobs/`` and names the
model layer's path (``model_path``), so nobody has to know the layout or the
media types; it also says where the bytes came from (fetched now, resumed
from an interrupted pull, already cached).

Imports core only (values, no I/O: paths are computed, not checked).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .core.digest import Digest
from .core.manifest import Layer, Manifest
from .core.progress import ByteCounts

__all__ = ["PullResult", "model_layer"]

# Media types that name weights: Ollama's image.model, the CNCF model
# spec's weight layers, Docker's model artifacts (gguf, safetensors).
_WEIGHTS_MEDIA_RE = re.compile(r"image\.model|\.weight|gguf|safetensors", re.IGNORECASE)


def model_layer(manifest: Manifest) -> Layer:
    """Return the layer holding the model's weights.

    The largest layer whose media type says model or weights
    (``application/vnd.ollama.image.model``, ``application/vnd.cncf.model.weight.*``,
    ``application/vnd.docker.ai.gguf.*``, ``…safetensors…``; configs of
    those excluded); when none does, the largest layer.

    >>> from chunkpull import Digest, Layer, Manifest
    >>> d = lambda c: Digest("sha256", c * 64)
    >>> m = Manifest(b"{}", d("0"), (Layer(d("a"), 900, "application/vnd.ollama.image.license"),
    ...                              Layer(d("b"), 500, "application/vnd.ollama.image.model")))
    >>> model_layer(m).size
    500
    """
    weights = [l for l in manifest.layers if _WEIGHTS_MEDIA_RE.search(l.media_type) and "config" not in l.media_type.lower()]
    return max(weights or manifest.layers, key=lambda l: l.size)


@dataclass(frozen=True)
class PullResult:
    """A pulled model: its manifest, where its blobs are, and where the bytes came from.

    name
        the name as it was asked for.
    manifest
        the parsed manifest (``.digest``, ``.layers``, ``.config``).
    blobs
        every blob's digest (``"sha256:<hex>"``) mapped to its file under ``blobs/``.
    model_path
        the file of the model layer (see ``model_layer``): what a runtime loads.
    fetched_bytes, resumed_bytes, cached_bytes
        bytes moved over the network by this pull, bytes an earlier,
        interrupted pull had fetched (its work file was resumed), and bytes
        of blobs that were already in the models directory.

    >>> import chunkpull
    >>> r = chunkpull.pull("http://127.0.0.1:5000/library/smol", models="/tmp/models")  # doctest: +SKIP
    >>> r.model_path                                                                  # doctest: +SKIP
    PosixPath('/tmp/models/blobs/sha256-0bf3622b362c...')
    """

    name: str
    manifest: Manifest
    blobs: Mapping[str, Path]
    model_path: Path
    fetched_bytes: int = 0
    resumed_bytes: int = 0
    cached_bytes: int = 0

    @classmethod
    def of(cls, name: str, manifest: Manifest, blob_path: Callable[[Digest], Path], counts: ByteCounts) -> PullResult:
        """Build the result of pulling name: paths from ``blob_path`` (``DiskCache.blob_path``), figures from counts."""
        blobs = MappingProxyType({str(b.digest): blob_path(b.digest) for b in manifest.blobs()})
        return cls(name, manifest, blobs, blob_path(model_layer(manifest).digest), counts.fetched, counts.resumed, counts.cached)

    @property
    def digest(self) -> Digest:
        """Return the manifest's digest."""
        return self.manifest.digest

    @property
    def size(self) -> int:
        """Return the bytes of all the model's blobs."""
        return self.manifest.size
