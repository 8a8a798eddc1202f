"""DiskCache: blobs and manifests in Ollama's models-directory layout.

::

    <root>/
      blobs/sha256-<hex>                          verified blobs (layers, configs, manifests)
      manifests/<host>/<namespace>/<model>/<tag>  a copy of the manifest's bytes
      .chunkpull/ingest/sha256-<hex>.partial      a blob being pulled (work file)
      .chunkpull/ingest/sha256-<hex>.state        its resume record
      .chunkpull/prune.lock                       pulls share it; prune takes it alone
      .chunkpull/schemes/<host>                   the scheme a host was pulled with, when not https

The one invariant: a file under ``blobs/`` with its final name is complete
and hashes to its digest.  Every write goes to a work file (or a temporary
file) under ``.chunkpull/`` on the same file system, is verified, fsynced,
and only then renamed into place, so a crash can leave work in progress but
never a wrong blob.  Ollama reads this directory as its own; it ignores
``.chunkpull/``.

Paths are built only from parsed ``Digest`` and ``Name`` values, whose
grammar admits no ``/``, ``..`` or leading dot, so nothing can escape the
root.

Work files and their records are ``store.ingest``.  Imports core, errors
and _env; never the engine, the registry or anything above them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import _env
from ..core.digest import Digest
from ..core.names import Name
from ..errors import IntegrityError, InvalidNameError, ModelNotFoundError
from .files import fsync_dir, mkstemp, rename_into_place
from .ingest import Ingest, Partial, list_partials

__all__ = ["DiskCache", "BlobInfo", "mentioned_digests"]

_DIGEST_TEXT = re.compile(rb"sha256[:-]([0-9a-f]{64})")
# prune keeps blobs this young: another tool may not have written their manifest yet.
PRUNE_GRACE_S = 600.0
INGEST_MAX_AGE_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A committed blob: its digest, size in bytes and modification time (``DiskCache.get``).

    >>> info = DiskCache("/tmp/models").get(result.manifest.layers[0].digest)  # doctest: +SKIP
    >>> info.size                                                            # doctest: +SKIP
    8388608
    """

    digest: Digest
    size: int
    mtime: float


class DiskCache:
    """A models directory in Ollama's layout; safe to share between threads and processes.

    ``fsync`` (default True) makes every commit durable before its rename;
    ``create`` (default True) makes missing directories, else a missing
    root is a FileNotFoundError.

    >>> import tempfile
    >>> cache = DiskCache(tempfile.mkdtemp())
    >>> [str(n) for n, _path in cache.links()], cache.partials()
    ([], [])
    """

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
        self.make_dirs()

    def make_dirs(self) -> None:
        """Create the layout's directories where they are missing (at open, and again before every pull).

        Raises:
            OSError: a directory cannot be created (the message names it).
        """
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

    def ingest(self, d: Digest, size: int, *, cancel: threading.Event | None = None, direct: bool = False) -> Ingest | None:
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
        assert path is not None  # create=True always gives a path
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

    def check_name(self, name: Name) -> None:
        """Refuse a name whose manifest path this file system cannot hold (before any byte is fetched).

        Raises:
            InvalidNameError: not fully qualified, a part longer than the file
                system's NAME_MAX, or a path longer than its PATH_MAX.
        """
        if not name.is_fully_qualified():
            raise InvalidNameError(f'invalid or missing name: "{name}"')
        name_max, path_max = _limits(self.root)
        for part in name.path_parts():
            if len(part.encode()) > name_max:
                raise InvalidNameError(f"invalid name {str(name)!r}: {part[:40]!r}... is longer than the {name_max} bytes a file name may have under {self.root}")
        path = self.manifests_dir.joinpath(*name.path_parts())
        if len(str(path).encode()) >= path_max:
            raise InvalidNameError(f"invalid name {str(name)!r}: its manifest path would be longer than the {path_max} bytes {self.root} allows")

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
            if len(rel) < 3:
                continue
            # host / namespace levels (one or more) / model / tag
            for tag in files:
                name = Name(rel[0], "/".join(rel[1:-1]), rel[-1], tag)
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
                if only:
                    # A pull is running: its fresh blobs have no manifest yet,
                    # so nothing can be judged now.  Note the candidates; the
                    # last pull to end (or the next prune) removes them.
                    self._defer(only)
                return removed
            keep = self.referenced()
            if keep is None:
                return removed
            pending = self._pending()
            for entry in _entries(self.blobs_dir):
                try:
                    d = Digest.parse(entry.name)
                    if only is not None and d not in only and d not in pending:
                        continue
                    young = only is None and d not in pending and now - entry.stat().st_mtime < grace_s
                except (ValueError, OSError):
                    continue
                if d not in keep and not young:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(d)
            with contextlib.suppress(FileNotFoundError):
                self._pending_path.unlink()
            self._prune_ingest(now)
        return removed

    def prune_deferred(self) -> list[Digest]:
        """Remove the blobs a removal during a pull left for later, if no pull is running now; return them."""
        if not self._pending_path.exists():
            return []
        return self.prune(only=set())

    @property
    def _pending_path(self) -> Path:
        return self.root / ".chunkpull" / "prune-pending"

    def _defer(self, digests: set[Digest]) -> None:
        # One write with O_APPEND: lines from concurrent writers never mix.
        # Synced, so that a crash before the pull ends still leaves the note.
        data = "".join(f"{d}\n" for d in sorted(digests)).encode()
        fd = os.open(self._pending_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _pending(self) -> set[Digest]:
        try:
            text = self._pending_path.read_text(errors="replace")
        except FileNotFoundError:
            return set()
        out = set()
        for line in text.split():
            with contextlib.suppress(ValueError):
                out.add(Digest.parse(line))
        return out

    def partials(self) -> list[Partial]:
        """Return the work files of interrupted (or running) pulls, oldest first."""
        return list_partials(self.ingest_dir)

    # -- schemes --------------------------------------------------------------
    #
    # Ollama's layout has no place for a registry's scheme, so a model pulled
    # over http:// would come back from ls as a name pull tries over https.
    # One small file per host records the exception.

    def scheme(self, host: str) -> str:
        """Return the scheme ``host``'s models were last pulled with: ``https`` unless another was recorded."""
        path = self._scheme_path(host)
        try:
            text = path.read_text().strip() if path is not None else ""
        except OSError:
            text = ""
        return text if text in ("http", "https+insecure") else "https"

    def set_scheme(self, host: str, scheme: str) -> None:
        """Record the scheme host was pulled with (``https`` clears the record)."""
        path = self._scheme_path(host)
        if path is None or self.scheme(host) == scheme:
            return
        if scheme == "https":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            self._write_atomic(path, scheme.encode() + b"\n")

    def _scheme_path(self, host: str) -> Path | None:
        # Hosts come from parsed names (no "/", no leading dot); refuse anything else.
        if not host or "/" in host or host.startswith(".") or "\0" in host:
            return None
        return self.root / ".chunkpull" / "schemes" / host.lower()

    def prune_partials(self) -> list[Path]:
        """Remove every work file no pull holds now (and its record); return the work files removed."""
        removed = []
        for entry in _entries(self.ingest_dir):
            if entry.name.endswith(".partial") and _remove_if_unlocked(entry.path):
                removed.append(Path(entry.path))
        return removed

    def _prune_ingest(self, now: float) -> None:
        # Work files nobody holds, untouched for a week (abandoned pulls),
        # and temporary files older than a day (left by a crash).
        for entry in _entries(self.ingest_dir):
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            if entry.name.endswith(".partial") and age > INGEST_MAX_AGE_S:
                _remove_if_unlocked(entry.path)
            elif entry.name.startswith(("tmp-", "import-")) or entry.name.endswith(".tmp"):
                if age > 86400:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    @contextlib.contextmanager
    def prune_lock(self, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """Hold the prune lock: shared for pulls, exclusive for prune.

        A pull (shared) first re-creates the layout's directories: someone
        may have deleted them under a long-running ``chunkpull serve``.
        """
        if not exclusive:
            self.make_dirs()
        else:
            (self.root / ".chunkpull").mkdir(exist_ok=True)
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
        fd, tmp = mkstemp(self.ingest_dir, "tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            rename_into_place(tmp, path, fsync=self.fsync)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def sync_blobs_dir(self) -> None:
        """Make renames into ``blobs/`` durable (after commits made with sync_dir=False)."""
        if self.fsync:
            fsync_dir(self.blobs_dir)


def mentioned_digests(manifest: bytes) -> set[Digest]:
    """Return the manifest's own digest and every sha256 digest its text mentions."""
    found = {Digest("sha256", hashlib.sha256(manifest).hexdigest())}
    found.update(Digest("sha256", h.decode()) for h in _DIGEST_TEXT.findall(manifest))
    return found


def _remove_if_unlocked(partial: str) -> bool:
    """Delete a work file and its record unless a pull holds its lock; return whether it went."""
    try:
        fd = os.open(partial, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a pull is using it
    else:
        # Unlinked while locked: nobody can take it over in between.
        for p in (partial, partial[: -len(".partial")] + ".state"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return True
    finally:
        os.close(fd)


def _limits(root: Path) -> tuple[int, int]:
    """Return (NAME_MAX, PATH_MAX) of the file system under root (POSIX's minimums where it does not say)."""
    probe = root if root.exists() else root.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of directory; none if it is missing (deleted under a running server: nothing to sweep)."""
    try:
        with os.scandir(directory) as it:
            return list(it)
    except FileNotFoundError:
        return []


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
