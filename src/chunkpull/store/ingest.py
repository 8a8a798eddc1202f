"""``Ingest``: the work file of one blob being pulled, its resume record, its lock and its commit.

::

    <root>/.chunkpull/ingest/sha256-<hex>.partial   the blob's bytes so far (preallocated, flock'ed)
    <root>/.chunkpull/ingest/sha256-<hex>.state     its resume record (JSON)

The store hands one out per blob (``DiskCache.ingest``); only ``commit()``,
after the bytes verified, renames the work file into ``blobs/``.

Imports core (digests), errors and ``store.files``; never the cache module
(the cache opens work files, not the reverse: it is passed in as a
``BlobStore``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core.digest import Digest
from ..errors import ChunkpullError, InsufficientSpaceError, IntegrityError, InvalidDigestError, PullCancelledError
from .files import rename_into_place

__all__ = ["BlobStore", "Ingest", "LOCK_STALE_S", "Partial", "as_disk_full", "list_partials"]

# How long to wait for another process's lock on a work file it no longer writes.
LOCK_STALE_S = 120.0


class BlobStore(Protocol):
    """What a work file needs of its models directory (``DiskCache`` is one)."""

    root: Path
    ingest_dir: Path
    fsync: bool

    def blob_path(self, d: Digest) -> Path: ...

    def get(self, d: Digest) -> object | None: ...


class Ingest:
    """The work file of one blob being pulled, and its commit into ``blobs/``.

    The file is preallocated to the blob's size (so a full disk fails before
    the download, not in the middle) and exclusively locked (``flock``), so
    two processes pulling the same blob never write it at once: the second
    waits, then finds the blob committed.  Only ``commit()`` — called after
    the bytes verified — makes the blob visible, by fsync and atomic rename.
    A work file that is not committed stays, with its resume record, for a
    later pull.

    Durability: before a record that carries the hashed prefix's SHA-256
    state is written, the work file is fdatasync'ed, so the prefix the state
    vouches for is on disk (a resume does not re-read it).  The record itself
    is replaced atomically (rename) but not fsynced: after a power loss it
    may be an older one, which only costs re-fetching.  Chunks it marks done
    beyond the hashed prefix are re-read and hashed on resume, and the
    whole-blob digest decides the commit, so a stale record costs a
    re-fetch, never a wrong blob.  The blob is fsynced before its rename.
    """

    RECORD_VERSION = 1

    def __init__(self, cache: BlobStore, d: Digest, size: int, fd: int) -> None:
        self.cache = cache
        self.digest = d
        self.size = size
        self.fd = fd
        self.direct_fd = -1  # a second descriptor with O_DIRECT, when wanted and possible
        self.committed = False
        self.path = cache.ingest_dir / f"{d.filename}.partial"
        self.state_path = cache.ingest_dir / f"{d.filename}.state"

    @classmethod
    def open(cls, cache: BlobStore, d: Digest, size: int, *, cancel: threading.Event | None = None, direct: bool = False,
             poll_s: float = 0.1) -> Ingest | None:
        """Open and lock the work file; None when the blob got committed meanwhile.

        Raises:
            InsufficientSpaceError: the file system cannot hold the blob.
            PullCancelledError: cancel was set while waiting for another
                process's lock.
        """
        path = cache.ingest_dir / f"{d.filename}.partial"
        while True:
            if cache.get(d) is not None:
                return None
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_or_wait(fd, cancel, poll_s)
                # The holder we waited for may have renamed this very inode
                # into blobs/: never write through a stale descriptor.
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                ingest = cls(cache, d, size, fd)
                ingest._reserve()
                if direct:
                    ingest._open_direct()
                return ingest
            except BaseException:
                os.close(fd)
                raise

    def _open_direct(self) -> None:
        # Aligned pieces bypass the page cache: no copy into fresh pages
        # (the slowest step of a buffered write on a new file).  tmpfs and
        # some file systems refuse O_DIRECT; the buffered fd then does it all.
        try:
            self.direct_fd = os.open(self.path, os.O_RDWR | getattr(os, "O_DIRECT", 0))  # RDWR: the hash reads spilled chunks back
        except OSError:
            self.direct_fd = -1
        if not getattr(os, "O_DIRECT", 0):
            self._close_direct()

    def _close_direct(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    def _reserve(self) -> None:
        have = os.fstat(self.fd).st_size
        if have > self.size:
            os.ftruncate(self.fd, 0)  # not our blob's work file: start over
            have = 0
        need = self.size - have
        if need <= 0:
            return
        free = shutil.disk_usage(self.cache.root).free
        if need > free:
            raise InsufficientSpaceError(
                errno.ENOSPC,
                f"not enough space in {self.cache.root} for blob {self.digest.short()}: need {need} more bytes, {free} free",
            )
        try:
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise InsufficientSpaceError(
                    errno.ENOSPC,
                    f"not enough space in {self.cache.root} for blob {self.digest.short()}: need {need} more bytes",
                ) from err
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(self.fd, self.size)

    # -- resume record -------------------------------------------------------

    def load_record(self, chunks_id: str, hash_format: str = "") -> dict[str, Any] | None:
        """Return the resume record if it is intact and describes this blob and chunk list.

        A saved hash state in another ``hash_format`` than this build's (a
        record written with another libcrypto, or by the pure-Python backend)
        is dropped, the chunks it marks done are kept: they are hashed from
        the work file instead.
        """
        try:
            rec = json.loads(self.state_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict):
            return None
        want = {"version": self.RECORD_VERSION, "digest": str(self.digest), "size": self.size, "chunks": chunks_id}
        if any(rec.get(k) != v for k, v in want.items()):
            return None
        if not isinstance(rec.get("done"), str) or not isinstance(rec.get("hashed"), int):
            return None
        state = rec.get("hash_state", "")
        if not isinstance(state, str) or not 0 <= rec["hashed"] <= self.size:
            return None
        try:
            bytes.fromhex(state)
        except ValueError:
            return None
        if state and (not hash_format or rec.get("hash_format") != hash_format):
            rec = {**rec, "hash_state": "", "hashed": 0}
        return rec

    def save_record(self, chunks_id: str, done: list[bool], hashed: int, hash_state: bytes | None, hash_format: str = "") -> None:
        """Atomically replace the resume record (see the class docstring for what is synced).

        A record is only a shortcut: when the disk is full (or the quota
        reached) it is skipped, not an error, and no temporary file stays.
        """
        if self.committed or self.fd < 0:
            return  # the blob is final (or closed): a record now would be stale
        if hash_state is not None:
            # The record vouches for the hashed prefix's bytes: they must be
            # on disk before it is, or a power loss could leave a hash of
            # bytes that never landed (and a resume would not re-read them).
            os.fdatasync(self.fd)
        bits = bytearray((len(done) + 7) // 8)
        for i, ok in enumerate(done):
            if ok:
                bits[i >> 3] |= 1 << (i & 7)
        rec = {
            "version": self.RECORD_VERSION,
            "digest": str(self.digest),
            "size": self.size,
            "chunks": chunks_id,
            "done": bits.hex(),
            "hashed": hashed if hash_state is not None else 0,
            "hash_state": hash_state.hex() if hash_state is not None else "",
            "hash_format": hash_format if hash_state is not None else "",
        }
        tmp = self.state_path.with_name(self.state_path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, self.state_path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise

    @staticmethod
    def record_done(rec: dict[str, Any], n: int) -> list[bool]:
        try:
            bits = bytes.fromhex(rec["done"])
        except ValueError:
            return [False] * n
        if len(bits) != (n + 7) // 8:
            return [False] * n
        return [bool(bits[i >> 3] & (1 << (i & 7))) for i in range(n)]

    # -- commit --------------------------------------------------------------

    def commit(self, verified: bytes, *, sync_dir: bool = True) -> None:
        """Make the work file the final blob (fsync, rename, fsync dir).

        With sync_dir=False the directory fsync is left to the caller
        (``DiskCache.sync_blobs_dir``), so a pull of many small blobs syncs
        the directory once: a lost rename after a crash only means a blob
        to fetch again, since the bytes were fsynced before it.

        ``verified`` is the SHA-256 the caller computed over the file's bytes;
        it must be this blob's digest, and the file its size, or nothing is
        renamed: the invariant is checked here, not only by callers.

        Raises:
            IntegrityError: the digest or size does not match.
        """
        self._close_direct()
        size = os.fstat(self.fd).st_size
        if verified != self.digest.raw or size != self.size:
            raise IntegrityError(
                f"refusing to commit {self.digest}: verified digest {verified.hex() or 'none'}, size {size} of {self.size}",
                digest=str(self.digest),
            )
        if self.cache.fsync:
            os.fsync(self.fd)
        rename_into_place(self.path, self.cache.blob_path(self.digest), fsync=self.cache.fsync, sync_dir=sync_dir)
        self.committed = True
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self.close()

    def discard(self) -> None:
        """Delete the work file and its record (their content cannot be trusted)."""
        for p in (self.path, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.close()

    def close(self) -> None:
        self._close_direct()
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock too
            self.fd = -1

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Partial:
    """A work file left by an interrupted pull (or held by a running one), as ``chunkpull ls --partials`` shows it.

    ``size`` is the blob's (the work file is preallocated to it);
    ``chunks_done`` the chunks its resume record marks verified (None: no
    record, so a resume re-checks everything); ``in_use``: a pull holds it now.

    >>> [(p.digest.short(), p.size, p.in_use) for p in DiskCache("/tmp/models").partials()]  # doctest: +SKIP
    [('0bf3622b362c', 2147483648, False)]
    """

    digest: Digest
    path: Path
    size: int
    chunks_done: int | None
    mtime: float
    in_use: bool


def list_partials(ingest_dir: Path) -> list[Partial]:
    """Return the work files under ingest_dir, oldest first (none when the directory does not exist)."""
    out = []
    try:
        entries = [e for e in os.scandir(ingest_dir) if e.name.endswith(".partial")]
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            d = Digest.parse(entry.name.removesuffix(".partial"))
            st = entry.stat()
            in_use = _is_locked(entry.path)
        except (InvalidDigestError, OSError):
            continue  # not ours, or gone meanwhile
        done = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rec = json.loads(Path(entry.path[: -len(".partial")] + ".state").read_bytes())
            done = sum(bin(b).count("1") for b in bytes.fromhex(rec["done"]))
        out.append(Partial(d, Path(entry.path), st.st_size, done, st.st_mtime, in_use))
    return sorted(out, key=lambda p: p.mtime)


def _is_locked(path: str) -> bool:
    """Return whether a pull holds the work file's lock (taken and dropped at once if not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock, if we took it
    return False


def _lock_or_wait(fd: int, cancel: threading.Event | None, poll_s: float, *, stale_s: float = LOCK_STALE_S,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Take an exclusive flock on fd, polling so that cancel is honoured.

    The wait is bounded by progress, not by time: while the holder keeps
    writing (the work file's mtime moves), a long pull is waited for; once
    nothing has changed for ``stale_s``, the holder is taken to be hung.

    Raises:
        PullCancelledError: cancel was set while waiting.
        ChunkpullError: the holder made no progress for ``stale_s``.
    """
    last_change, last_mtime = clock(), None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        mtime = os.fstat(fd).st_mtime_ns
        if mtime != last_mtime:
            last_change, last_mtime = clock(), mtime
        elif clock() - last_change > stale_s:
            raise ChunkpullError(
                f"another process holds this blob's work file and has written nothing for {stale_s:g} s; "
                "stop it, or remove the work file under .chunkpull/ingest"
            )
        if cancel is not None and cancel.wait(poll_s):
            raise PullCancelledError("pull cancelled while another process held the blob's work file")
        if cancel is None:
            time.sleep(poll_s)


def as_disk_full(err: BaseException, root: str | os.PathLike[str], what: str) -> BaseException:
    """Return ENOSPC met mid-write (a file system without fallocate) as InsufficientSpaceError naming the place; other errors as they are."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, InsufficientSpaceError):
        free = shutil.disk_usage(root).free
        return InsufficientSpaceError(errno.ENOSPC, f"disk full in {root} while writing {what} ({free} bytes free)")
    return err
