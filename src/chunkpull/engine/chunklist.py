"""A blob's chunk list, from the origin's ``chunksums`` endpoint or split here when it has none.

The list (and its digests) always comes from the origin, never from a
mirror: it is what mirror bytes are checked against.
"""

from __future__ import annotations

import threading

from ..core.chunks import ChunkSum, parse_chunksums, split
from ..core.manifest import Layer
from ..errors import ChunkpullError
from .config import Source
from .transport import Transport, join_url

__all__ = ["fetch_chunk_list"]


def fetch_chunk_list(transport: Transport, source: Source, layer: Layer, split_size: int,
                     cancel: threading.Event | None) -> tuple[str, list[ChunkSum]]:
    """Return (URL of the bytes, chunk list) for a blob: the origin's, or our own split of ``split_size`` chunks.

    Raises:
        RegistryError, TransportError, InvalidChunksumsError, ChunkpullError
        (an unusable ``Content-Location``).
    """
    blob_url = source.blob_url(layer.digest)
    resp = transport.get(source.chunksums_url(layer.digest), verify_tls=source.verify_tls, auth=source.auth, ok=(200, 404), cancel=cancel)
    if resp.status == 404:
        # No chunksums endpoint: split the blob ourselves; only the
        # whole-blob digest can verify it.
        return blob_url, [ChunkSum(c, None) for c in split(layer.size, split_size)]
    location = resp.headers.get("Content-Location", "").strip()
    if not location:
        location = blob_url
    elif location.startswith("/"):
        location = join_url(source.base_url, location)
    elif not location.startswith(("http://", "https://")):
        raise ChunkpullError(f"registry sent an unusable Content-Location {location[:200]!r} for {layer.digest}: want an http(s) URL")
    # The bytes may come from another host (a CDN); requests drops the
    # source's credentials on a request or redirect to another host.
    return location, parse_chunksums(resp.body, layer.size)
