"""Manifests: parse and validate the JSON that names a model's blobs.

A manifest that is empty, ``null``, not JSON, has no layers, a null layer,
or a layer whose digest or size is malformed is refused here, before any
path or request is built from it.

Imports digest and errors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .digest import Digest, sha256_digest
from ..errors import InvalidDigestError, InvalidManifestError

__all__ = ["Manifest", "Layer", "MEDIA_TYPE_MANIFEST", "parse_descriptor"]

MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob a manifest names: its digest, size in bytes and media type.

    >>> layer = Layer(Digest.parse("sha256:abababababababababababababababababababababababababababababababab"), 1024, "application/vnd.ollama.image.model")
    >>> layer.digest.short(), layer.size
    ('abababababab', 1024)
    """

    digest: Digest
    size: int
    media_type: str = ""


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; ``data`` is its exact bytes and ``digest`` their sha256.

    >>> m = Manifest.parse(b'{"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model", '
    ...                    b'"digest": "sha256:abababababababababababababababababababababababababababababababab", "size": 1024}]}')
    >>> [l.size for l in m.layers], m.size, m.config is None
    ([1024], 1024, True)
    """

    data: bytes
    digest: Digest
    layers: tuple[Layer, ...]
    config: Layer | None = None

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse manifest bytes.

        Raises:
            InvalidManifestError: empty, ``null``, not JSON, no layers, a null
                layer, or a layer without a valid digest and size.
        """
        try:
            doc = json.loads(data) if data.strip() else None
        except ValueError as err:
            raise InvalidManifestError(f"invalid manifest: not JSON: {err}") from None
        if not isinstance(doc, dict):
            raise InvalidManifestError("invalid manifest: empty or not a JSON object")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise InvalidManifestError("invalid manifest: no layers")
        layers = tuple(_parse_layer(x, f"layer {i}") for i, x in enumerate(raw_layers))
        config = None
        if doc.get("config") is not None:
            config = _parse_layer(doc["config"], "config")
        return cls(bytes(data), sha256_digest(data), layers, config)

    def blobs(self) -> list[Layer]:
        """Return every blob the manifest references (layers, then config), without duplicates."""
        seen: set[Digest] = set()
        out = []
        for layer in (*self.layers, *([self.config] if self.config else [])):
            if layer.digest not in seen:
                seen.add(layer.digest)
                out.append(layer)
        return out

    @property
    def size(self) -> int:
        """Return the bytes of every blob the manifest names (layers and config)."""
        return sum(b.size for b in self.blobs())


def _parse_layer(x: object, what: str) -> Layer:
    return parse_descriptor(x, f"invalid manifest: {what}")


def parse_descriptor(x: object, where: str) -> Layer:
    """Parse an OCI descriptor (``digest``, ``size``, ``mediaType``) found at ``where`` (the error's prefix).

    Raises:
        InvalidManifestError: not an object, or without a valid digest and size.
    """
    if not isinstance(x, dict):
        raise InvalidManifestError(f"{where} is null or not an object")
    try:
        digest = Digest.parse(x.get("digest"))
    except InvalidDigestError as err:
        raise InvalidManifestError(f"{where}: {err}") from None
    size = x.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifestError(f"{where}: size must be a non-negative integer")
    return Layer(digest, size, str(x.get("mediaType") or ""))
