"""The bench's embedded model, the registry process that serves it, and what a run pulls (``Target``).

The model is built once by ``testing.build_model`` and cached under
``$XDG_CACHE_HOME/chunkpull/bench`` (else ``~/.cache/chunkpull/bench``),
keyed by size, layers and seed; ``RegistryProcess`` serves it from the
built-in registry in a subprocess on 127.0.0.1, so the server's CPU is not
in the measured process.

Imports core, registry and store (for a named remote target), testing and
``bench.child`` (the children's environment and output checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.names import parse_ref
from ..testing import DEFAULT_CHUNK_SIZE, build_model
from . import child

__all__ = ["BenchError", "BenchModel", "Blob", "RegistryProcess", "Target", "bench_cache_dir", "embedded_target", "ensure_model", "warm"]

MODEL_NAME = "registry.local/bench/model:latest"
# The built-in registry prints its URL once it listens; it has this long.
SERVER_START_TIMEOUT_S = 60.0


class BenchError(Exception):
    """The benchmark could not run (a bad option, a registry that did not start, no such model)."""


# --------------------------------------------------------------------------
# The embedded model and the registry process
# --------------------------------------------------------------------------


def bench_cache_dir() -> Path:
    """Return where generated models are kept: ``$XDG_CACHE_HOME/chunkpull/bench``, else ``~/.cache/chunkpull/bench``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "chunkpull" / "bench"


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A generated model in a models directory: its name there, and its blobs (layers, then config)."""

    root: Path
    name: str
    manifest_digest: str
    blobs: tuple[Blob, ...]


def _layer_sizes(size: int, layers: int) -> list[int]:
    each = size // layers
    return [each] * (layers - 1) + [size - each * (layers - 1)]


def ensure_model(size: int, layers: int = 1, seed: int = 0, *, cache_dir: Path | None = None) -> BenchModel:
    """Return the synthetic model for (size, layers, seed), generating it on first use.

    Generation happens in a temporary directory beside the cache entry and
    is renamed into place when complete, so an interrupted build is never
    mistaken for a model; two concurrent builders both finish and one
    rename wins.

    Raises:
        OSError: the cache directory cannot be written.
    """
    cache_dir = cache_dir or bench_cache_dir()
    key = f"size{size}-layers{layers}-seed{seed}"
    root = cache_dir / key
    meta = root / "model.json"
    if not meta.is_file():
        if root.exists():  # damaged by hand (model.json is written before the rename)
            shutil.rmtree(root)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        try:
            digest = build_model(tmp / "models", MODEL_NAME, _layer_sizes(size, layers), seed=seed)
            (tmp / "model.json").write_text(json.dumps({"name": MODEL_NAME, "manifest": digest}))
            try:
                os.rename(tmp, root)
            except OSError:
                if not meta.is_file():  # not a concurrent builder's finished copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads(meta.read_text())
    manifest = json.loads((root / "models" / "blobs" / info["manifest"].replace(":", "-", 1)).read_bytes())
    entries = [*manifest["layers"], *([manifest["config"]] if manifest.get("config") else [])]
    return BenchModel(root / "models", info["name"], info["manifest"], tuple(Blob(e["digest"], e["size"]) for e in entries))


class RegistryProcess:
    """The built-in registry (``python -m chunkpull.testing.main``) in a subprocess.

    A context manager: entering starts it and waits for the URL it prints;
    leaving stops it (SIGTERM, then SIGKILL).  It runs in a session of its
    own so that Ctrl-C reaches the harness, which then stops it in order.

    Raises:
        BenchError: the server exited or printed no URL in time.
    """

    def __init__(self, models_dir: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_digest: str = "sha256", timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        self.models_dir = Path(models_dir)
        self.chunk_size = chunk_size
        self.chunk_digest = chunk_digest
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._log = None

    def __enter__(self) -> RegistryProcess:
        self._log = log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "chunkpull.testing.main", str(self.models_dir), "--host", "127.0.0.1", "--port", "0",
               "--chunk-size", str(self.chunk_size), "--chunk-digest", self.chunk_digest]
        self.proc = proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=child.child_env(), start_new_session=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
            self.url = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
            if not self.url.startswith("http"):
                proc.kill()
                proc.wait()
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace").strip()
                raise BenchError(f"the built-in registry did not start: {tail or 'no output'}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # serve_main stops cleanly on SIGTERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def ref(self, name: str = MODEL_NAME) -> str:
        """Return the pullable name of a model it serves (``http://127.0.0.1:P/ns/model:tag``)."""
        host = self.url.split("://", 1)[1]
        return f"http://{host}/{name.split('/', 1)[1]}"


# --------------------------------------------------------------------------
# What to pull
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """What every method pulls: chunkpull by name, the baselines by blob URL."""

    name: str
    base_url: str  # <scheme>://<host>/v2/<namespace>/<model>
    blobs: tuple[Blob, ...]
    verify_tls: bool = True
    remote: bool = False
    served_files: tuple[Path, ...] = ()  # the registry's own blob files, when it runs here

    def drop_caches(self) -> None:
        """Empty the page cache (root only), then read the served blobs back in, outside any measurement.

        The "caches dropped" memory protocol: every run starts with free
        memory, as on a fresh machine, while the registry's side stays warm
        as on a serving host (a cold registry disk is not what is measured).

        Raises:
            BenchError: /proc/sys/vm/drop_caches cannot be written (not root).
        """
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as err:
            raise BenchError(f"--drop-caches needs root (writing /proc/sys/vm/drop_caches: {err.strerror})") from None
        buf = bytearray(8 << 20)
        for path in self.served_files:
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

    def blob_specs(self) -> list[dict]:
        return [
            {"digest": b.digest, "size": b.size, "url": f"{self.base_url}/blobs/{b.digest}", "chunksums_url": f"{self.base_url}/chunksums/{b.digest}"}
            for b in self.blobs
        ]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


def embedded_target(server: RegistryProcess, model: BenchModel) -> Target:
    name = server.ref(model.name)
    files = tuple(model.root / "blobs" / b.digest.replace(":", "-", 1) for b in model.blobs)
    return Target(name, parse_ref(name).base_url, model.blobs, served_files=files)


def remote_target(name: str) -> Target:
    """Resolve a registry model's manifest (in this process; nothing is pulled).

    Raises:
        BenchError: the name is invalid or the manifest cannot be fetched.
    """
    from ..errors import ChunkpullError
    from ..registry import Registry
    from ..store.cache import DiskCache

    scratch = tempfile.mkdtemp(prefix="chunkpull-bench-resolve-")
    try:
        registry = Registry(DiskCache(scratch))
        try:
            ref = registry.parse(name)
            m = registry.resolve(name)
        finally:
            registry.close()
    except ChunkpullError as err:
        raise BenchError(f"cannot resolve {name}: {err}") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Target(name, ref.base_url, tuple(Blob(str(b.digest), b.size) for b in m.blobs()), ref.verify_tls, remote=True)


def warm(target: Target) -> None:
    """Ask for every blob's chunksums once, outside any measurement.

    The built-in registry computes chunksums on first request (a full read
    and hash of the blob); doing that now keeps it out of the first run and
    leaves the blob in the page cache, as it would be on a serving host.
    """
    import requests

    with requests.Session() as s:
        for blob in target.blob_specs():
            with s.get(blob["chunksums_url"], timeout=(10, 600)) as r:
                if r.status_code not in (200, 404):
                    raise BenchError(f"warming {blob['chunksums_url']}: status {r.status_code}")


def registry_chunk_size(target: Target) -> int | None:
    """Return the chunk size a real registry uses for its largest blob, or None without (valid) chunksums."""
    import requests

    from ..core.chunks import parse_chunksums
    from ..errors import ChunkpullError

    biggest = max(target.blob_specs(), key=lambda b: b["size"])
    try:
        r = requests.get(biggest["chunksums_url"], timeout=(10, 60), verify=target.verify_tls)
        return parse_chunksums(r.content, biggest["size"])[0].chunk.size if r.status_code == 200 else None
    except (requests.RequestException, ChunkpullError, IndexError):  # IndexError: an empty blob has no chunks
        return None


