"""DiskCache: blobs and manifests in Ollama's models-directory layout.

::

    <root>/
      blobs/sha256-<hex>                          verified blobs (layers, configs, manifests)
      manifests/<host>/<namespace>/<model>/<tag>  a copy of the manifest's bytes
      .chunkpull/ingest/sha256-<hex>.partial      a blob being pulled (work file)
      .chunkpull/ingest/sha256-<hex>.state        its resume record
      .chunkpull/prune.lock                       pulls share it; prune takes it alone

The one invariant: a file under ``blobs/`` with its final name is complete
and hashes to its digest.  Every write goes to a work file (or a temporary
file) under ``.chunkpull/`` on the same file system, is verified, fsynced,
and only then renamed into place, so a crash can leave work in progress but
never a wrong blob.  Ollama reads this directory as its own; it ignores
``.chunkpull/``.

Paths are built only from parsed ``Digest`` and ``Name`` values, whose
grammar admits no ``/``, ``..`` or leading dot, so nothing can escape the
root.

Imports digest, names, errors and _env; never registry, api or cli.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import time
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import _env
from .digest import Digest
from .errors import ChunkpullError, InsufficientSpaceError, IntegrityError, InvalidNameError, ModelNotFoundError, PullCancelledError
from .names import Name

__all__ = ["DiskCache", "BlobInfo", "Ingest"]

_COPY_PIECE = 4 << 20
_DIGEST_TEXT = re.compile(rb"sha256[:-]([0-9a-f]{64})")
# prune keeps blobs this young: another tool may not have written their manifest yet.
PRUNE_GRACE_S = 600.0
INGEST_MAX_AGE_S = 7 * 86400.0
# How long to wait for another process's lock on a work file it no longer writes.
LOCK_STALE_S = 120.0


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    mtime: float


class DiskCache:
    """A models directory in Ollama's layout; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, create: bool = True) -> None:
        self.root = Path(root)
        # fsync before each rename so that, after a power loss too, a final
        # blob name never points at bytes that did not reach the disk.
        self.fsync = fsync
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.ingest_dir = self.root / ".chunkpull" / "ingest"
        if not create:
            # Read-only uses (ls, rm) must not conjure up a directory from a typo.
            if not self.root.is_dir():
                raise FileNotFoundError(f"no models directory at {self.root}")
            return
        for d in (self.blobs_dir, self.manifests_dir, self.ingest_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(err.errno, f"cannot create models directory {d}: {err.strerror}") from err

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, *, create: bool = True) -> DiskCache:
        """Open the models directory; None means ``$OLLAMA_MODELS`` or ``~/.ollama/models``.

        With create (the default) missing directories are made; without it a
        missing root raises FileNotFoundError and nothing is created.
        """
        return cls(_env.models_dir() if root is None else root, create=create)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r})"

    # -- blobs --------------------------------------------------------------

    def blob_path(self, d: Digest) -> Path:
        """Return where the blob with digest d lives (whether or not it exists)."""
        return self.blobs_dir / d.filename

    def get(self, d: Digest) -> BlobInfo | None:
        """Return the cached blob's size and mtime, or None when it is not cached."""
        try:
            st = os.stat(self.blob_path(d))
        except FileNotFoundError:
            return None
        return BlobInfo(d, st.st_size, st.st_mtime)

    def put(self, d: Digest, data: bytes) -> None:
        """Store data as blob d after checking it hashes to d.

        Raises:
            IntegrityError: data does not hash to d.
        """
        got = hashlib.sha256(data).hexdigest()
        if got != d.hex:
            raise IntegrityError(f"data for {d} hashes to sha256:{got}", digest=str(d), expected=str(d), got=f"sha256:{got}")
        if self.get(d) is not None:
            return
        self._write_atomic(self.blob_path(d), data)

    def import_file(self, d: Digest, path: str | os.PathLike[str]) -> None:
        """Copy the file at path into the cache as blob d, verifying it on the way.

        Raises:
            IntegrityError: the file does not hash to d.
        """
        if self.get(d) is not None:
            return
        h = hashlib.sha256()
        fd, tmp = _mkstemp(self.ingest_dir, "import-")
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                while piece := src.read(_COPY_PIECE):
                    h.update(piece)
                    dst.write(piece)
                dst.flush()
                if self.fsync:
                    os.fsync(dst.fileno())
            if h.hexdigest() != d.hex:
                raise IntegrityError(f"file {path} hashes to sha256:{h.hexdigest()}, not {d}", digest=str(d), expected=str(d), got=f"sha256:{h.hexdigest()}")
            self._rename_into_place(tmp, self.blob_path(d))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def ingest(self, d: Digest, size: int, *, cancel=None, direct: bool = False) -> Ingest | None:
        """Open and lock (or reopen, to resume) the work file for blob d of size bytes.

        Returns None when the blob is already committed (perhaps by another
        process we waited for).

        Raises:
            InsufficientSpaceError: the file system cannot hold the blob.
            PullCancelledError: cancelled while waiting for another process.
        """
        return Ingest.open(self, d, size, cancel=cancel, direct=direct)

    # -- manifests ----------------------------------------------------------

    def link(self, name: Name, d: Digest) -> None:
        """Make name point at the manifest stored as blob d (copying its bytes).

        Raises:
            InvalidNameError: name is not fully qualified.
            FileNotFoundError: blob d is not in the cache.
        """
        path = self._manifest_path(name, create=True)
        data = self.blob_path(d).read_bytes()
        self._write_atomic(path, data)

    def unlink(self, name: Name) -> bool:
        """Remove name's manifest file; return False when there was none."""
        path = self._manifest_path(name)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Drop directories left empty, up to (not including) manifests/.
        parent = path.parent
        while parent != self.manifests_dir:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def manifest_bytes(self, name: Name) -> bytes:
        """Return the bytes of name's manifest.

        Raises:
            ModelNotFoundError: no manifest for name.
        """
        path = self._manifest_path(name)
        try:
            if path is not None:
                return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            pass
        raise ModelNotFoundError(str(name))

    def has_manifest(self, name: Name) -> bool:
        """Say whether name has a manifest here (matching case-insensitively)."""
        path = self._manifest_path(name)
        return path is not None and path.is_file()

    def resolve(self, name: Name) -> Digest:
        """Return the digest of name's manifest (names match case-insensitively).

        Raises:
            ModelNotFoundError: no manifest for name.
        """
        return Digest("sha256", hashlib.sha256(self.manifest_bytes(name)).hexdigest())

    def links(self) -> Iterator[tuple[Name, Path]]:
        """Yield (name, manifest path) for every manifest in the cache."""
        root = self.manifests_dir
        for dirpath, _dirs, files in os.walk(root):
            rel = Path(dirpath).relative_to(root).parts
            if len(rel) != 3:
                continue
            for tag in files:
                name = Name(rel[0], rel[1], rel[2], tag)
                if name.is_fully_qualified():
                    yield name, Path(dirpath) / tag

    def referenced(self) -> set[Digest] | None:
        """Return every digest any file under ``manifests/`` mentions, or None if one cannot be read.

        Deliberately lenient: a manifest chunkpull would refuse (another
        tool's, a newer schema) still protects the blobs it names, and the
        manifest blobs themselves count too.
        """
        found: set[Digest] = set()
        for dirpath, _dirs, files in os.walk(self.manifests_dir):
            for f in files:
                try:
                    data = (Path(dirpath) / f).read_bytes()
                except OSError:
                    return None
                found.update(mentioned_digests(data))
        return found

    def prune(self, *, only: set[Digest] | None = None, grace_s: float = PRUNE_GRACE_S, now: float | None = None) -> list[Digest]:
        """Remove blobs no manifest mentions, and stale work files; return the blobs removed.

        Skipped (returns []) while any pull holds the shared prune lock (its
        fresh blobs have no manifest yet) and when a manifest cannot be read.
        A sweep of all blobs keeps those younger than ``grace_s``: another
        tool (Ollama) may be between committing a blob and writing its
        manifest.  With ``only`` (the blobs of a model just removed), only
        those are candidates, and the grace does not apply.
        """
        removed: list[Digest] = []
        now = time.time() if now is None else now
        with self.prune_lock(exclusive=True, blocking=False) as held:
            if not held:
                return removed
            keep = self.referenced()
            if keep is None:
                return removed
            for entry in os.scandir(self.blobs_dir):
                try:
                    d = Digest.parse(entry.name)
                    if only is not None and d not in only:
                        continue
                    young = only is None and now - entry.stat().st_mtime < grace_s
                except (ValueError, OSError):
                    continue
                if d not in keep and not young:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(d)
            self._prune_ingest(now)
        return removed

    def _prune_ingest(self, now: float) -> None:
        # Work files nobody holds, untouched for a week (abandoned pulls),
        # and temporary files older than a day (left by a crash).
        for entry in os.scandir(self.ingest_dir):
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            if entry.name.endswith(".partial") and age > INGEST_MAX_AGE_S:
                fd = os.open(entry.path, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a pull is using it
                finally:
                    os.close(fd)
                for p in (entry.path, entry.path[: -len(".partial")] + ".state"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
            elif entry.name.startswith(("tmp-", "import-")) or entry.name.endswith(".tmp"):
                if age > 86400:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    @contextlib.contextmanager
    def prune_lock(self, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """Hold the prune lock: shared for pulls, exclusive for prune."""
        fd = os.open(self.root / ".chunkpull" / "prune.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, op)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # -- helpers ------------------------------------------------------------

    def _manifest_path(self, name: Name, *, create: bool = False) -> Path | None:
        """Find name's manifest path, matching each part case-insensitively.

        With create, return the path to write (keeping any existing casing).
        """
        if not name.is_fully_qualified():
            raise InvalidNameError(f'invalid or missing name: "{name}"')
        path = self.manifests_dir
        for part in name.path_parts():
            found = _find_casefold(path, part)
            if found is None:
                if not create:
                    return None
                found = path / part
            path = found
        return path

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp(self.ingest_dir, "tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self._rename_into_place(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _rename_into_place(self, src: str | Path, dst: Path, *, sync_dir: bool = True) -> None:
        os.replace(src, dst)
        if self.fsync and sync_dir:
            _fsync_dir(dst.parent)

    def sync_blobs_dir(self) -> None:
        """Make renames into ``blobs/`` durable (after commits made with sync_dir=False)."""
        if self.fsync:
            _fsync_dir(self.blobs_dir)


def mentioned_digests(manifest: bytes) -> set[Digest]:
    """Return the manifest's own digest and every sha256 digest its text mentions."""
    found = {Digest("sha256", hashlib.sha256(manifest).hexdigest())}
    found.update(Digest("sha256", h.decode()) for h in _DIGEST_TEXT.findall(manifest))
    return found


def _mkstemp(directory: Path, prefix: str) -> tuple[int, str]:
    # mkstemp makes 0600 files; manifests and blobs must stay readable by an
    # Ollama service running as another user, like the files Ollama writes.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.fchmod(fd, 0o644)
    return fd, tmp


def _find_casefold(directory: Path, part: str) -> Path | None:
    exact = directory / part
    if exact.exists():
        return exact
    want = part.casefold()
    try:
        for entry in os.scandir(directory):
            if entry.name.casefold() == want:
                return Path(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def __init__(self, cache: DiskCache, d: Digest, size: int, fd: int) -> None:
        self.cache = cache
        self.digest = d
        self.size = size
        self.fd = fd
        self.direct_fd = -1  # a second descriptor with O_DIRECT, when wanted and possible
        self.committed = False
        self.path = cache.ingest_dir / f"{d.filename}.partial"
        self.state_path = cache.ingest_dir / f"{d.filename}.state"

    @classmethod
    def open(cls, cache: DiskCache, d: Digest, size: int, *, cancel=None, direct: bool = False, poll_s: float = 0.1) -> Ingest | None:
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
            self.direct_fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
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

    def load_record(self, chunks_id: str) -> dict | None:
        """Return the resume record if it is intact and describes this blob and chunk list."""
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
        return rec

    def save_record(self, chunks_id: str, done: list[bool], hashed: int, hash_state: bytes | None) -> None:
        """Atomically replace the resume record (see the class docstring for what is synced)."""
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
        }
        tmp = self.state_path.with_name(self.state_path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, self.state_path)

    @staticmethod
    def record_done(rec: dict, n: int) -> list[bool]:
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
        self.cache._rename_into_place(self.path, self.cache.blob_path(self.digest), sync_dir=sync_dir)
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


def _lock_or_wait(fd: int, cancel, poll_s: float, *, stale_s: float = LOCK_STALE_S, clock=time.monotonic) -> None:
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
