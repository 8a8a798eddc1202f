"""Small file-system steps the store is built from: temporary files, atomic renames, directory syncs.

Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "mkstemp", "rename_into_place"]


def mkstemp(directory: Path, prefix: str) -> tuple[int, str]:
    # mkstemp makes 0600 files; manifests and blobs must stay readable by an
    # Ollama service running as another user, like the files Ollama writes.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.fchmod(fd, 0o644)
    return fd, tmp


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_into_place(src: str | Path, dst: Path, *, fsync: bool, sync_dir: bool = True) -> None:
    """Rename src to dst atomically; with fsync and sync_dir, also make the rename durable."""
    os.replace(src, dst)
    if fsync and sync_dir:
        fsync_dir(dst.parent)
