"""Models for the built-in registry: deterministic layers written into an Ollama-layout directory.

``build_model`` writes a model of pseudo-random layers (numpy's generator,
seeded, so the same arguments give the same bytes on every machine) and
its manifest; ``write_blob`` and ``write_atomic`` are the registry's own
atomic writes (a reader never sees half a file), shared with its push flow.

Standard library and numpy only (numpy is imported when bytes are generated).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_MEDIA_TYPE", "LAYER_MEDIA_TYPE", "MANIFEST_MEDIA_TYPE", "PUSH_HOST", "build_model", "write_atomic", "write_blob"]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.ollama.image.model"
# Pushed manifests land under this host directory unless a copy exists already.
PUSH_HOST = "registry.local"
# Blob-random bytes are generated and written in pieces of this size so a
# 1 GiB layer never needs 1 GiB of memory.  Changing it changes the bytes.
_GEN_PIECE = 4 << 20


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _split_name(name: str) -> tuple[str, str, str, str]:
    """Split ``[host/][namespace/]model[:tag]``; missing parts get defaults."""
    rest, tag = name, "latest"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        rest, tag = name[:colon], name[colon + 1 :]
    parts = rest.split("/")
    if len(parts) == 1:
        parts = [PUSH_HOST, "library", parts[0]]
    elif len(parts) == 2:
        parts = [PUSH_HOST, *parts]
    elif len(parts) > 3:
        parts = ["/".join(parts[:-2]), parts[-2], parts[-1]]
    host, namespace, model = parts
    if not all((host, namespace, model, tag)):
        raise ValueError(f"invalid model name {name!r}")
    return host, namespace, model, tag


def _random_pieces(size: int, seed: int, index: int) -> Iterator[bytes]:
    import numpy as np

    # One generator per layer, seeded by (seed, index): equal-sized layers of
    # one model differ, and the bytes never depend on the other layers.
    rng = np.random.default_rng([seed, index])
    left = size
    while left > 0:
        n = min(left, _GEN_PIECE)
        yield rng.bytes(n)
        left -= n


def write_blob(blobs: Path, pieces: Iterable[bytes], *, want: str | None = None) -> str:
    """Write pieces as a blob in the directory blobs; return their digest, ``sha256:<hex>``.

    The bytes go to a temporary file that is renamed into place only when
    complete, so a reader never sees half a blob; with ``want`` they are
    kept only if they hash to it (a pushed blob's digest check).
    """
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".write-{uuid.uuid4().hex}.tmp"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:
                h.update(piece)
                f.write(piece)
        digest = "sha256:" + h.hexdigest()
        if want is None or digest == want:
            os.replace(tmp, blobs / digest.replace(":", "-", 1))
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def build_model(
    root: str | os.PathLike[str],
    name: str,
    sizes: Iterable[int],
    *,
    seed: int = 0,
    config: bool = True,
) -> str:
    """Write a model into the models directory ``root``; return its manifest digest.

    ``name`` is ``host/namespace/model:tag`` (``namespace/model`` and ``model``
    get host ``registry.local``, namespace ``library``, tag ``latest``).  One
    layer blob per entry of ``sizes`` (bytes) is filled with pseudo-random
    bytes determined by ``seed`` and the layer's index, generated and written
    piecewise so size costs no memory.  With ``config`` a small JSON config
    blob is added.  The manifest (SPEC section 3 shape) is stored as a blob and
    as ``manifests/<host>/<namespace>/<model>/<tag>``.  Same arguments, same
    bytes, same digest.

    Raises:
        ValueError: a bad name or a negative size.
    """
    host, namespace, model, tag = _split_name(name)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"layer sizes must not be negative: {sizes}")
    root = Path(root)
    blobs = root / "blobs"
    layers = []
    for index, size in enumerate(sizes):
        digest = write_blob(blobs, _random_pieces(size, seed, index))
        layers.append({"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size})
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE}
    if config:
        cfg = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "chunkpull-test",
                "model_families": ["chunkpull-test"],
                "model_type": "random",
                "file_type": "random",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            },
            separators=(",", ":"),
        ).encode()
        manifest["config"] = {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": write_blob(blobs, [cfg]),
            "size": len(cfg),
        }
    manifest["layers"] = layers
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = write_blob(blobs, [data])
    write_atomic(root / "manifests" / host / namespace / model / tag, data)
    return digest
