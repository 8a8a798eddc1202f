"""The benchmark harness behind ``chunkpull bench``: repeatable pulls, side by side with baselines.

With no model name, ``bench_main`` measures the embedded default: a
synthetic model (1 GiB, one layer of random bytes, built once by
``testregistry.build_model`` and cached under
``$XDG_CACHE_HOME/chunkpull/bench``, else ``~/.cache/chunkpull/bench``, keyed
by size, layers and seed) served by the built-in registry in a subprocess on
127.0.0.1, so the server's CPU is not in the measured process.  Every
measured run is a fresh child process (``chunkpull._benchchild``) that pulls
into a temporary models directory; its peak RSS and CPU time are its own.
After the child exits, the harness checks that every blob it wrote hashes to
its digest (outside the timed region), deletes the directory, and finally
prints one table row per configuration (figures made up)::

    method          GB/s   wall s  CPU s  peak RSS MiB  streams  chunk  verify  backend  chunkpull x  note
    chunkpull       1.230  0.87    1.52   61            8        8M     blob    native
    python-threads  0.720  1.49    2.10   118           8        8M     blob    -        1.71x

The chunkpull child shows ``chunkpull pull``'s progress display on the
inherited stderr (a bar on a terminal, plain lines otherwise); the
harness's own status lines go to stderr too, so stdout holds only the
table (or the ``--json`` document).

``--compare`` adds the baselines a user would otherwise reach for, each in its
own child process (see ``_benchchild``): one stream then a separate SHA-256
pass (``single+sha256``, and ``curl+sha256sum`` when both tools exist), the
same chunked design in plain Python threads (``python-threads``,
``chunkpull._baseline_threads``), ``aria2c`` with ``--checksum``, and
``hf_transfer`` followed by a SHA-256 pass.  A baseline that is not
installed gets a row saying so; nothing fails because of it.

A model name (``chunkpull bench http://host/ns/model:tag``) measures that
registry instead, and adds time to first byte and per-chunk latency
percentiles, recorded by an instrumented ``session_factory`` in the child.

Benchmarks never assert speed: the exit status is 1 only when a chunkpull
pull failed or wrote wrong bytes.

What only a written report needs (the Markdown page, tool versions) lives
in ``benchmarks/run_compare.py``.  Imports registry, cache, chunks, names,
testregistry (the model and the size syntax), _benchchild, _hashio and
_env; ``cli`` only in the child (for its progress display), so that cli
may import this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import _benchchild, _env
from ._hashio import BACKEND
from .names import parse_ref
from .registry import DEFAULT_CHUNKING_THRESHOLD, VERIFY_MODES
from .testregistry import DEFAULT_CHUNK_SIZE, SIZE_HELP, build_model, parse_size

__all__ = [
    "BenchError",
    "BenchModel",
    "RegistryProcess",
    "Row",
    "Target",
    "bench_cache_dir",
    "bench_main",
    "embedded_target",
    "ensure_model",
    "footnotes",
    "format_table",
    "machine_info",
    "parse_options",
    "run_benchmark",
    "table_cells",
    "warm",
]

PROG = "chunkpull bench"
DEFAULT_SIZE = 1 << 30
MODEL_NAME = "registry.local/bench/model:latest"
BASELINES = ("single+sha256", "curl+sha256sum", "python-threads", "aria2c", "hf_transfer", "hf_transfer-raw")
# Fixed by the baselines' own command lines (the issue's settings), not swept.
ARIA2C_STREAMS = 16
ARIA2C_SPLIT = 8 << 20
HF_TRANSFER_FILES = 8
# A run that takes longer than this is killed and reported as failed: a
# hung connection must not hang the benchmark.
DEFAULT_TIMEOUT_S = 1800.0
# The built-in registry prints its URL once it listens; it has this long.
SERVER_START_TIMEOUT_S = 60.0
SCHEMA = "chunkpull-bench/1"


class BenchError(Exception):
    """The benchmark could not run (a bad option, a registry that did not start, no such model)."""


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def _format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _arg(check):
    """Return an argparse type that runs check and reports its ValueError's message."""

    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _list_of(check):
    """Return an argparse type for a comma-separated list, each part checked, duplicates dropped."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ValueError(f"want a comma-separated list, not {text!r}")
        return list(dict.fromkeys(check(part) for part in parts))

    return _arg(parse)


def _whole(text: str, most: int | None = None) -> int:
    n = int(text)
    if n < 1 or (most is not None and n > most):
        raise ValueError(f"want a whole number from 1{f' to {most}' if most else ''}, not {text!r}")
    return n


def _one_of(choices: tuple[str, ...], what: str):
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"unknown {what} {text!r} (want some of {', '.join(choices)})")
        return text

    return check


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Measure pulls: the embedded synthetic model from the built-in registry (default), "
        "or a real registry's model; optionally side by side with other tools (--compare).",
        epilog=SIZE_HELP + ".",
    )
    p.add_argument("name", nargs="?", help="a registry model to measure, e.g. http://host:5000/ns/model:tag (default: the embedded synthetic model)")
    p.add_argument("--size", type=_arg(parse_size), help="embedded model size (e.g. 1G = 2^30 bytes, 512M; default 1G)")
    p.add_argument("--layers", type=_arg(_whole), help="embedded model layer count; the size is split evenly (default 1)")
    p.add_argument("--seed", type=int, help="embedded model bytes seed (default 0)")
    p.add_argument("--chunk-size", dest="chunk_sizes", type=_list_of(parse_size), metavar="SIZE[,SIZE...]",
                   help="registry chunk size(s) to sweep (default 8M); with a model name, only the baselines' own split")
    p.add_argument("--chunk-digest", choices=("sha256", "blake3"), help="chunk digests the built-in registry serves (default sha256)")
    p.add_argument("--streams", type=_list_of(lambda t: _whole(t, _env.MAX_MAX_STREAMS)), metavar="N[,N...]",
                   help="stream counts to sweep, e.g. 1,4,8,16 (default: chunkpull's default)")
    p.add_argument("--verify", type=_list_of(_one_of(VERIFY_MODES, "verify mode")), metavar="blob|chunks",
                   help="verify mode(s) to sweep (default blob)")
    p.add_argument("--threshold", type=_arg(parse_size), help="chunking threshold passed to chunkpull (default: embedded: min(64M, chunk size); a named model: chunkpull's 64M)")
    p.add_argument("--repeat", type=_arg(_whole), default=1, help="runs per configuration; the table shows median, min and max (default 1)")
    p.add_argument("--compare", action="store_true", help="also run the baselines (those installed)")
    p.add_argument("--baselines", type=_list_of(_one_of(BASELINES, "baseline")), metavar="NAME[,NAME...]",
                   help=f"run only these baselines (implies --compare): {', '.join(BASELINES)}")
    p.add_argument("--no-fsync", dest="fsync", action="store_false", help="chunkpull skips its fsync before commit (default: fsync, as a real pull does)")
    p.add_argument("--json", action="store_true", help="print a JSON document (one record per run) instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="plot throughput against streams and chunk size (needs matplotlib)")
    p.add_argument("--tmpdir", help="where runs write their temporary models directories (default: the system's)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=DEFAULT_TIMEOUT_S, help=f"seconds before a run is killed (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display or status lines")
    return p


@dataclasses.dataclass
class Options:
    """Everything a benchmark run needs; ``bench_main`` fills it from argv, scripts may build it directly."""

    name: str | None = None
    size: int = DEFAULT_SIZE
    layers: int = 1
    seed: int = 0
    chunk_sizes: list[int] = dataclasses.field(default_factory=lambda: [DEFAULT_CHUNK_SIZE])
    chunk_digest: str = "sha256"
    streams: list[int] = dataclasses.field(default_factory=lambda: [_env.max_streams()])
    verify: list[str] = dataclasses.field(default_factory=lambda: ["blob"])
    threshold: int | None = None
    repeat: int = 1
    baselines: list[str] = dataclasses.field(default_factory=list)
    fsync: bool = True
    tmpdir: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    quiet: bool = False


def parse_options(argv: list[str]) -> Options:
    """Return the Options for ``chunkpull bench`` arguments (for scripts such as ``benchmarks/run_compare.py``).

    Raises:
        SystemExit: a usage error (argparse has printed it).
        BenchError: options that do not go together.
    """
    return _options(_parser().parse_args(argv))


def _options(args: argparse.Namespace) -> Options:
    if args.name:
        given = [flag for flag, value in (("--size", args.size), ("--layers", args.layers), ("--seed", args.seed), ("--chunk-digest", args.chunk_digest)) if value is not None]
        if given:
            raise BenchError(f"{', '.join(given)} only apply to the embedded model, not to {args.name}")
        if args.chunk_sizes and len(args.chunk_sizes) > 1:
            raise BenchError("a real registry's chunk size is its own: give one --chunk-size (for the baselines' split) or none")
    if args.size is not None and args.size < (args.layers or 1):
        raise BenchError(f"--size {args.size} is smaller than one byte per layer")
    if args.compare and not args.baselines:
        args.baselines = list(BASELINES)
    # Options given on the command line; the rest keep Options' defaults.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if getattr(args, f.name) is not None}
    return Options(**given)


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
    """The built-in registry (``python -m chunkpull.testregistry``) in a subprocess.

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
        cmd = [sys.executable, "-m", "chunkpull.testregistry", str(self.models_dir), "--host", "127.0.0.1", "--port", "0",
               "--chunk-size", str(self.chunk_size), "--chunk-digest", self.chunk_digest]
        self.proc = proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=_benchchild.child_env(), start_new_session=True)
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
    return Target(name, parse_ref(name).base_url, model.blobs)


def _remote_target(name: str) -> Target:
    """Resolve a registry model's manifest (in this process; nothing is pulled).

    Raises:
        BenchError: the name is invalid or the manifest cannot be fetched.
    """
    from .cache import DiskCache
    from .errors import ChunkpullError
    from .registry import Registry

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


def _registry_chunk_size(target: Target) -> int | None:
    """Return the chunk size a real registry uses for its largest blob, or None without (valid) chunksums."""
    import requests

    from .chunks import parse_chunksums
    from .errors import ChunkpullError

    biggest = max(target.blob_specs(), key=lambda b: b["size"])
    try:
        r = requests.get(biggest["chunksums_url"], timeout=(10, 60), verify=target.verify_tls)
        return parse_chunksums(r.content, biggest["size"])[0].chunk.size if r.status_code == 200 else None
    except (requests.RequestException, ChunkpullError, IndexError):  # IndexError: an empty blob has no chunks
        return None


# --------------------------------------------------------------------------
# Running one measurement
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """One row of the table: a method and the settings it ran with."""

    method: str
    streams: int | None
    chunk_size: int | None
    verify: str


def _missing(method: str) -> str | None:
    """Return why a baseline cannot run here, or None when it can."""
    if method == "curl+sha256sum":
        absent = [tool for tool in ("curl", "sha256sum") if shutil.which(tool) is None]
        return f"{' and '.join(absent)} not installed" if absent else None
    if method == "aria2c":
        return None if shutil.which("aria2c") else "aria2c not installed"
    if method.startswith("hf_transfer"):
        return None if importlib.util.find_spec("hf_transfer") else "hf_transfer not installed (pip install hf_transfer)"
    return None  # single+sha256 and python-threads need only Python and requests


def _check_outputs(method: str, workdir: Path, target: Target) -> str | None:
    """Return why the run's files are wrong, or None when every blob hashes to its digest."""
    where = workdir / ("models/blobs" if method == "chunkpull" else "out")
    for blob in target.blobs:
        problem = _benchchild.blob_problem(where / blob.digest.replace(":", "-", 1), blob.digest, blob.size)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------
# The plan and the loop
# --------------------------------------------------------------------------


def _plan(opts: Options, chunk_size: int | None, first: bool, available: list[str]) -> list[Config]:
    """Return the configurations to run against one registry (one registry chunk size).

    chunkpull and python-threads follow the registry's chunks, so they run
    at every chunk size; hf_transfer splits by itself, in the registry's
    chunk size (embedded) or ``--chunk-size`` (a named registry); the rest
    do not depend on chunking and run once, with the first chunk size.
    """
    plan = [Config("chunkpull", s, chunk_size, v) for v in opts.verify for s in opts.streams]
    own_split = opts.chunk_sizes[0] if opts.name or chunk_size is None else chunk_size
    for method in available:
        if method == "python-threads":
            plan += [Config(method, s, chunk_size, v) for v in opts.verify for s in opts.streams]
        elif method.startswith("hf_transfer"):
            plan.append(Config(method, HF_TRANSFER_FILES, own_split, "none" if method.endswith("-raw") else "after"))
        elif first:  # independent of the registry's chunk size: once is enough
            if method == "aria2c":
                plan.append(Config(method, ARIA2C_STREAMS, ARIA2C_SPLIT, "after"))
            else:
                plan.append(Config(method, 1, None, "after"))
    return plan


@dataclasses.dataclass
class Report:
    """Everything one benchmark produced: per-run records, table rows, skipped baselines."""

    machine: dict
    settings: dict
    runs: list[dict]
    rows: list[Row]
    skipped: list[dict]

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "machine": self.machine,
            "settings": self.settings,
            "runs": self.runs,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }

    @property
    def failed(self) -> bool:
        """True when a chunkpull run failed or wrote wrong bytes."""
        return any(r["method"] == "chunkpull" and not (r["ok"] and r["verified"]) for r in self.runs)


def _status(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr, flush=True)


def run_benchmark(opts: Options) -> Report:
    """Run every configured measurement and return the report.

    Raises:
        BenchError: the model cannot be built, served or resolved.
        KeyboardInterrupt: passed on after stopping the child and the server.
    """
    available, skipped = [], []
    for method in opts.baselines:
        why = _missing(method)
        if why:
            skipped.append({"method": method, "reason": why})
        else:
            available.append(method)
    machine = machine_info()
    settings: dict[str, Any] = {
        "model": opts.name or f"embedded: {_format_size(opts.size)} in {opts.layers} layer(s), seed {opts.seed}",
        "streams": opts.streams,
        "verify": opts.verify,
        "repeat": opts.repeat,
        "fsync": opts.fsync,
        "baselines": opts.baselines,
        "default_streams": _env.max_streams(),
    }
    if opts.name:
        target = _remote_target(opts.name)
        chunks = [_registry_chunk_size(target)]
        settings.update(chunk_sizes=chunks, chunk_digest=None, bytes=target.size,
                        threshold=opts.threshold or f"chunkpull's default ({_format_size(DEFAULT_CHUNKING_THRESHOLD)})")
    else:
        _status(opts, f"bench: preparing the {_format_size(opts.size)} model ({opts.layers} layer(s)) in {bench_cache_dir()}")
        model = ensure_model(opts.size, opts.layers, opts.seed)
        chunks = opts.chunk_sizes
        settings.update(chunk_sizes=chunks, chunk_digest=opts.chunk_digest, bytes=sum(b.size for b in model.blobs),
                        threshold=opts.threshold or f"min({_format_size(DEFAULT_CHUNKING_THRESHOLD)}, chunk size)")
    plans = [(chunk, _plan(opts, chunk, i == 0, available)) for i, chunk in enumerate(chunks)]
    counter = [0, sum(len(plan) for _, plan in plans) * opts.repeat]
    runs: list[dict] = []
    for chunk, plan in plans:
        # One registry process per chunk size for the embedded model; a named registry is already there.
        with contextlib.nullcontext() if opts.name else RegistryProcess(model.root, chunk_size=chunk, chunk_digest=opts.chunk_digest) as server:
            if server is not None:
                target = embedded_target(server, model)
                warm(target)
            _measure_all(opts, target, chunk, plan, runs, machine, counter)
    return Report(machine, settings, runs, aggregate(runs, default_streams=_env.max_streams()), skipped)


def _threshold(opts: Options, target: Target, chunk: int | None) -> int | None:
    if opts.threshold is not None:
        return opts.threshold
    if target.remote or chunk is None:
        return None
    # Below the 64 MiB default a small model would come in one request and
    # the streams sweep would measure nothing; at or above it, as default.
    return min(DEFAULT_CHUNKING_THRESHOLD, chunk)


def _measure_all(opts: Options, target: Target, chunk: int | None, plan: list[Config], runs: list[dict], machine: dict, counter: list[int]) -> None:
    """Run the plan for one registry (one chunk size) ``opts.repeat`` times; append records to runs.

    ``counter`` is [runs done, runs in all], shared across registries for the status lines.
    """
    # Repeats go round the whole plan, so slow drift on a shared machine
    # touches every method alike instead of one method's repeats.
    for rep in range(opts.repeat):
        for cfg in plan:
            counter[0] += 1
            label = f"{cfg.method} streams={cfg.streams or '-'} chunk={_format_size(cfg.chunk_size)} verify={cfg.verify}"
            _status(opts, f"bench: [{counter[0]}/{counter[1]}] {label}")
            workdir = Path(tempfile.mkdtemp(prefix="chunkpull-bench-", dir=opts.tmpdir))
            try:
                (workdir / "out").mkdir()
                spec = {
                    "method": cfg.method,
                    "name": target.name,
                    "blobs": target.blob_specs(),
                    "models_dir": str(workdir / "models"),
                    "out_dir": str(workdir / "out"),
                    "streams": cfg.streams or 1,
                    "chunk_size": cfg.chunk_size or DEFAULT_CHUNK_SIZE,
                    "verify": cfg.verify,
                    "threshold": _threshold(opts, target, chunk),
                    "fsync": opts.fsync,
                    # The child draws chunkpull pull's display on the stderr it inherits.
                    "progress": cfg.method == "chunkpull" and not opts.quiet,
                    "label": cfg.method,  # the status line above has the settings
                    "instrument": target.remote and cfg.method == "chunkpull",
                    "verify_tls": target.verify_tls,
                }
                result = _benchchild.run_child(spec, workdir, timeout_s=opts.timeout_s)
                problem = _check_outputs(cfg.method, workdir, target) if result["ok"] else None
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            record = _record(cfg, result, problem, rep, machine, opts, target)
            if cfg.method == "chunkpull":
                record["threshold"] = spec["threshold"]
            runs.append(record)
            if record["ok"] and record["verified"]:
                _status(opts, f"bench:   {record['gbps']:.3f} GB/s, {record['wall_s']:.2f} s wall, {record['cpu_s']:.2f} s CPU, {record['peak_rss_mib']:.0f} MiB")
            else:
                _status(opts, f"bench:   FAILED: {record['error']}")


def _record(cfg: Config, result: dict, problem: str | None, rep: int, machine: dict, opts: Options, target: Target) -> dict:
    ok = bool(result.get("ok"))
    record: dict[str, Any] = {
        **dataclasses.asdict(cfg),  # method, streams, chunk_size, verify
        "backend": BACKEND,
        "cpu_count": machine["cpu_count"],
        "chunk_digest": None if target.remote else opts.chunk_digest,
        "repeat": rep,
        "ok": ok,
        "verified": ok and problem is None,
        "error": result.get("error") if not ok else (f"wrong output: {problem}" if problem else None),
        "bytes": target.size,
    }
    if ok:
        wall = result["wall_s"]
        record.update(
            wall_s=wall,
            cpu_s=result["user_s"] + result["sys_s"],
            user_s=result["user_s"],
            sys_s=result["sys_s"],
            peak_rss_mib=result["peak_rss_kib"] / 1024,
            gbps=target.size / wall / 1e9,
        )
        if result.get("latency"):
            record["latency"] = result["latency"]
    return record


# --------------------------------------------------------------------------
# Rows and ratios
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One configuration's figures over its repeats (medians; GB/s also min and max)."""

    method: str
    streams: int | None
    chunk_size: int | None
    verify: str
    backend: str | None
    runs: int
    ok_runs: int
    gbps: float | None = None
    gbps_min: float | None = None
    gbps_max: float | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    ratio: float | None = None  # chunkpull GB/s / this row's GB/s (baselines only)
    ratio_ref: str | None = None  # which chunkpull row the ratio divides
    ttfb_ms: float | None = None
    chunk_p50_ms: float | None = None
    chunk_p90_ms: float | None = None
    chunk_p99_ms: float | None = None
    note: str = ""


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs: list[dict], *, default_streams: int = _env.DEFAULT_MAX_STREAMS, default_chunk: int = DEFAULT_CHUNK_SIZE) -> list[Row]:
    """Fold run records into one Row per configuration (in first-run order) and add the ratios."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["streams"], r["chunk_size"], r["verify"]), []).append(r)
    rows = []
    for (method, streams, chunk, verify), rs in groups.items():
        good = [r for r in rs if r["ok"] and r["verified"]]
        row = Row(method, streams, chunk, verify, BACKEND if method == "chunkpull" else None, len(rs), len(good))
        if good:
            rates = [r["gbps"] for r in good]
            row.gbps, row.gbps_min, row.gbps_max = statistics.median(rates), min(rates), max(rates)
            row.wall_s = _median([r["wall_s"] for r in good])
            row.cpu_s = _median([r["cpu_s"] for r in good])
            row.peak_rss_mib = _median([r["peak_rss_mib"] for r in good])
            lat = [r["latency"] for r in good if r.get("latency")]
            if lat:
                for key in ("ttfb_ms", "chunk_p50_ms", "chunk_p90_ms", "chunk_p99_ms"):
                    setattr(row, key, _median([x.get(key) for x in lat]))
        failures = [r["error"] for r in rs if not (r["ok"] and r["verified"])]
        if failures:
            row.note = f"{len(failures)} of {len(rs)} failed: {failures[0]}"
        rows.append(row)
    for row in rows:
        if row.method != "chunkpull" and row.gbps:
            ref = _reference(rows, row, default_streams, default_chunk)
            if ref is not None and ref.gbps:
                row.ratio = ref.gbps / row.gbps
                row.ratio_ref = f"chunkpull streams={ref.streams} chunk={_format_size(ref.chunk_size)} verify={ref.verify}"
    return rows


def _reference(rows: list[Row], baseline: Row, default_streams: int, default_chunk: int) -> Row | None:
    """Return the chunkpull row a baseline is compared with.

    python-threads implements chunkpull's own design, so it is compared
    with chunkpull at its exact settings.  The other tools are compared
    with chunkpull's default mode: verify ``blob`` at the default stream
    count (and 8 MiB chunks when swept), else the fastest chunkpull row.
    """
    cps = [r for r in rows if r.method == "chunkpull" and r.gbps]
    if baseline.method == "python-threads":
        same = [r for r in cps if (r.streams, r.chunk_size, r.verify) == (baseline.streams, baseline.chunk_size, baseline.verify)]
        return same[0] if same else None
    pool = [r for r in cps if r.verify == "blob"] or cps
    if baseline.method.startswith("hf_transfer"):
        pool = [r for r in pool if r.chunk_size == baseline.chunk_size] or pool
    for want in ((default_streams, default_chunk), (default_streams, None)):
        for r in pool:
            if r.streams == want[0] and (want[1] is None or r.chunk_size == want[1]):
                return r
    return max(pool, key=lambda r: r.gbps, default=None)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(report: Report) -> list[list[str]]:
    """Return the result table as rows of cells, the header first (for other renderings, e.g. Markdown)."""
    rows = report.rows
    remote = any(r.ttfb_ms is not None for r in rows)
    repeat = any(r.ok_runs > 1 for r in rows)
    head = ["method", "GB/s"] + (["min-max"] if repeat else []) + ["wall s", "CPU s", "peak RSS MiB", "streams", "chunk", "verify", "backend", "chunkpull x"]
    if remote:
        head += ["TTFB ms", "p50 ms", "p90 ms", "p99 ms"]
    head.append("note")
    body = []
    for r in rows:
        line = [r.method, _num(r.gbps, 3)]
        if repeat:
            line.append(f"{r.gbps_min:.3f}-{r.gbps_max:.3f}" if r.gbps_min is not None else "-")
        line += [
            _num(r.wall_s, 2), _num(r.cpu_s, 2), _num(r.peak_rss_mib, 0),
            str(r.streams) if r.streams else "-", _format_size(r.chunk_size), r.verify, r.backend or "-",
            f"{r.ratio:.2f}x" if r.ratio else "",
        ]
        if remote:
            line += [_num(r.ttfb_ms, 0), _num(r.chunk_p50_ms, 0), _num(r.chunk_p90_ms, 0), _num(r.chunk_p99_ms, 0)]
        line.append(r.note)
        body.append(line)
    for s in report.skipped:
        body.append([s["method"], *["-"] * (len(head) - 2), f"skipped: {s['reason']}"])
    return [head, *body]


def format_table(report: Report) -> str:
    """Return the result table as aligned text, then its footnotes."""
    cells = table_cells(report)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    notes = footnotes(report)
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def footnotes(report: Report) -> list[str]:
    """Return the lines that say how to read the table (units, reference rows)."""
    s = report.settings
    notes = [
        (
            f"{s['model']}, {s['bytes']:,} bytes; GB/s = 10^9 bytes/s of wall time; "
            f"chunk digests {s.get('chunk_digest') or 'as served'}; backend {report.machine['backend']}; "
            f"{report.machine['cpu_count']} CPUs; {s['repeat']} run(s) per row (medians)."
        )
    ]
    refs = sorted({r.ratio_ref for r in report.rows if r.ratio_ref and r.method != "python-threads"})
    if any(r.ratio for r in report.rows):
        notes.append(
            "chunkpull x = chunkpull GB/s / baseline GB/s; python-threads is compared with chunkpull at its own "
            "streams, chunk size and verify mode" + (f"; the others with {', '.join(refs)}." if refs else ".")
        )
    if report.rows and any(r.method != "chunkpull" for r in report.rows):
        notes.append("verify 'after' = the tool's own SHA-256 pass over the finished file (aria2c --checksum; a hashlib or sha256sum pass); 'none' = not verified at all.")
    return notes


def _import_pyplot():
    """Return matplotlib.pyplot on a file-only backend, or None when matplotlib is missing."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")  # never open a window; the plot goes to a file
    return importlib.import_module("matplotlib.pyplot")


def write_plot(report: Report, path: str, plt=None) -> None:
    """Plot GB/s against streams (and against chunk size when swept) to path.

    chunkpull and python-threads are lines, one per (chunk size, verify)
    or per (streams, verify); single-point baselines are dashed levels.
    """
    plt = plt or _import_pyplot()
    rows = [r for r in report.rows if r.gbps]
    chunks = sorted({r.chunk_size for r in rows if r.method == "chunkpull" and r.chunk_size})
    fig, axes = plt.subplots(1, 2 if len(chunks) > 1 else 1, figsize=(14 if len(chunks) > 1 else 7, 4.5), squeeze=False)

    def curve(ax, method, style, x, label, **match):
        pts = sorted((x(r), r.gbps) for r in rows if r.method == method and all(getattr(r, k) == v for k, v in match.items()))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)

    ax = axes[0][0]
    for method, style in (("chunkpull", "-o"), ("python-threads", "--s")):
        for chunk in chunks or [None]:
            for verify in report.settings["verify"]:
                curve(ax, method, style, lambda r: r.streams, f"{method} {_format_size(chunk)} {verify}", chunk_size=chunk, verify=verify)
    for r in rows:
        if r.method not in ("chunkpull", "python-threads"):
            ax.axhline(r.gbps, linestyle=":", color="grey")
            ax.annotate(r.method, (ax.get_xlim()[0], r.gbps), fontsize=8, va="bottom")
    panels = [(ax, "streams")]
    if len(chunks) > 1:
        ax = axes[0][1]
        for streams in sorted({r.streams for r in rows if r.method == "chunkpull"}):
            for verify in report.settings["verify"]:
                curve(ax, "chunkpull", "-o", lambda r: r.chunk_size / (1 << 20), f"chunkpull {streams} streams {verify}", streams=streams, verify=verify)
        ax.set_xscale("log", base=2)
        ax.set_xticks([c / (1 << 20) for c in chunks], [_format_size(c) for c in chunks])
        panels.append((ax, "chunk size"))
    for ax, against in panels:
        ax.set_ylim(bottom=0)
        ax.set_xlabel(against)
        ax.set_ylabel("GB/s")
        ax.set_title(f"throughput against {against}")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"chunkpull bench: {report.settings['model']} ({report.machine['cpu_model']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_first(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """Return what the figures depend on: CPU, cores, RAM, kernel, Python, backend, settings, date.

    ``benchmarks/run_compare.py`` adds what only its report shows (tool
    versions, SHA-NI, CPU affinity).
    """
    from . import __version__

    mem_kib = _read_first("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _read_first("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ram_gib": round(int(mem_kib.split()[0]) / (1 << 20), 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "chunkpull": __version__,
        "backend": BACKEND,
        # Settings the children inherit and that change what is measured.
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("CHUNKPULL_", "OLLAMA_REGISTRY_"))},
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
    }


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bench_main(argv: list[str] | None = None) -> int:
    """Run ``chunkpull bench`` with argv (without the ``bench`` word); return the exit status.

    Prints the table (or, with ``--json``, one JSON document) on stdout and
    progress on stderr.  Exit status: 0 when every chunkpull run pulled
    correct bytes (baselines' failures are only noted), 1 when one did not
    or the benchmark could not run, 2 for usage errors (a missing matplotlib
    for ``--plot`` included), 130 on Ctrl-C.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    plt = None
    if args.plot:
        # Checked first: a missing plotting library must not cost a long run.
        plt = _import_pyplot()
        if plt is None:
            print(f"{PROG}: --plot needs matplotlib, which is not installed (pip install matplotlib)", file=sys.stderr)
            return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        # The registry and the runs live in sessions of their own (so a
        # timed-out run can be killed with everything it started); a
        # SIGTERM must therefore unwind like Ctrl-C, or they would outlive us.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        opts = _options(args)
        report = run_benchmark(opts)
    except BenchError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    table = format_table(report)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        if not opts.quiet:
            sys.stderr.write(table)
    else:
        sys.stdout.write(table)
    sys.stdout.flush()
    if plt is not None:
        write_plot(report, args.plot, plt)
        if not opts.quiet:
            print(f"{PROG}: plot written to {args.plot}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(bench_main())
