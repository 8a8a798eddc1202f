"""Air-gapped transfer: models as a tar in Ollama's layout, written and read as a stream.

An archive holds ``blobs/sha256-<hex>`` (every blob the manifests name:
config and layers) and then ``manifests/<host>/<namespace…>/<model>/<tag>``.
``write_archive`` streams it (``tar`` mode ``w|``: no seeking, so stdout or
a pipe will do).  ``read_archive`` streams it in and trusts nothing in it:

- every member is a regular file at one of those two shapes (no links, no
  ``..``, no absolute paths, names that pass the name grammar);
- every blob is written to a work file while hashed and committed only if it
  hashes to its name (a tampered blob is refused and nothing is committed
  under its digest);
- every manifest must parse, and is linked only at the end, after every blob
  it names is in the models directory with the size it states.

A refused archive raises before any of its manifests is linked; blobs that
did verify stay (they are what their digests say) and go with the next prune
if nothing names them.

Imports core, errors and the store's own ingest; no network.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from ..core.digest import Digest
from ..core.manifest import Manifest
from ..core.names import Name
from ..errors import ChunkpullError, IntegrityError, InvalidManifestError
from .cache import DiskCache

__all__ = ["ArchiveError", "read_archive", "write_archive"]

MAX_MANIFEST_BYTES = 4 << 20
COPY_BUFFER = 1 << 20
_BLOB_RE = re.compile(r"blobs/sha256-([0-9a-f]{64})")


class ArchiveError(ChunkpullError):
    """The archive is malformed or tampered with; nothing it names was linked."""


def write_archive(cache: DiskCache, models: list[tuple[Name, Manifest]], out: BinaryIO,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Write the models' blobs (each once) and manifests to out as a tar stream; return (blobs written, blob bytes).

    Raises:
        ModelNotFoundError / OSError: a blob a manifest names is missing here.
    """
    seen: set[str] = set()
    count = total = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for _name, m in models:
            for b in m.blobs():
                if str(b.digest) in seen:
                    continue
                seen.add(str(b.digest))
                path = cache.blob_path(b.digest)
                info = tarfile.TarInfo(f"blobs/{b.digest.filename}")
                info.size = os.stat(path).st_size
                if info.size != b.size:
                    raise ArchiveError(f"blob {b.digest} here has {info.size} bytes, its manifest says {b.size}: pull it again first")
                info.mtime, info.mode = int(os.stat(path).st_mtime), 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, _Counting(f, progress))
                count, total = count + 1, total + info.size
        for name, m in models:
            info = tarfile.TarInfo("manifests/" + "/".join(name.path_parts()))
            info.size, info.mode = len(m.data), 0o644
            tar.addfile(info, io.BytesIO(m.data))
    return count, total


def read_archive(cache: DiskCache, src: BinaryIO, progress: Callable[[int], None] | None = None) -> list[tuple[Name, Manifest]]:
    """Import an archive from a stream (see the module docstring); return the models linked.

    Raises:
        ArchiveError: a member that is not a blob or a manifest, a manifest
            that does not parse or names a blob that is not here.
        IntegrityError: a blob that does not hash to its name (nothing committed under it).
    """
    manifests: list[tuple[Name, Manifest]] = []
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ArchiveError(f"archive member {member.name[:200]!r} is not a regular file (links are not accepted)")
                path = member.name.removeprefix("./")
                found = _BLOB_RE.fullmatch(path)
                if found:
                    _import_blob(cache, Digest("sha256", found.group(1)), member.size, tar.extractfile(member), progress)
                elif path.startswith("manifests/"):
                    manifests.append(_read_manifest(path, member, tar))
                else:
                    raise ArchiveError(f"archive member {path[:200]!r} is neither blobs/sha256-<hex> nor manifests/<name>")
    except tarfile.TarError as err:
        raise ArchiveError(f"not a readable tar archive: {err}") from None
    for name, m in manifests:
        for b in m.blobs():
            info = cache.get(b.digest)
            if info is None or info.size != b.size:
                raise ArchiveError(f"manifest {name} names blob {b.digest} ({b.size} bytes), which the archive does not hold")
    for name, m in manifests:
        cache.put(m.digest, m.data)
        cache.link(name, m.digest)
    return manifests


def _read_manifest(path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> tuple[Name, Manifest]:
    parts = path.split("/")[1:]
    if len(parts) < 4:
        raise ArchiveError(f"archive member {path[:200]!r}: want manifests/<host>/<namespace>/<model>/<tag>")
    name = Name(parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1])
    if not name.is_fully_qualified():
        raise ArchiveError(f"archive member {path[:200]!r} is not a valid model name")
    if member.size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"manifest {name} is {member.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    data = tar.extractfile(member).read()
    try:
        return name, Manifest.parse(data)
    except InvalidManifestError as err:
        raise ArchiveError(f"manifest {name} in the archive: {err}") from None


def _import_blob(cache: DiskCache, d: Digest, size: int, f: BinaryIO, progress: Callable[[int], None] | None) -> None:
    """Stream one blob into a work file while hashing it; commit only if it hashes to d."""
    ingest = cache.ingest(d, size)
    if ingest is None:  # already here (verified when it was committed)
        while f.read(COPY_BUFFER):
            pass
        return
    h = hashlib.sha256()
    offset = 0
    try:
        buf = bytearray(COPY_BUFFER)
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            os.pwrite(ingest.fd, view[:n], offset)
            offset += n
            if progress is not None:
                progress(n)
        os.ftruncate(ingest.fd, offset)
        if h.digest() != d.raw or offset != size:
            raise IntegrityError(f"archive blob {d} is tampered with: its {offset} bytes hash to sha256:{h.hexdigest()}",
                                 digest=str(d), expected=str(d), got=f"sha256:{h.hexdigest()}")
        ingest.commit(h.digest())
    except BaseException:
        ingest.discard()
        raise


class _Counting:
    """A file wrapper that reports bytes read (tarfile reads members through it)."""

    def __init__(self, f, progress: Callable[[int], None] | None) -> None:
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.progress is not None and data:
            self.progress(len(data))
        return data
