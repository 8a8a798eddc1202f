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
percentiles, recorded through ``Transport.observer`` in the child.

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
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .. import _env
from .._hashio import BACKEND
from .._version import __version__
from ..core.units import SIZE_HELP, parse_size
from ..engine.config import DEFAULT_CHUNKING_THRESHOLD, VERIFY_MODES
from ..testing import DEFAULT_CHUNK_SIZE
from . import child
from .model import BenchError, RegistryProcess, Target, bench_cache_dir, embedded_target, ensure_model, registry_chunk_size, remote_target, warm
from .report import Report, aggregate, format_size, format_table, import_pyplot, write_plot

__all__ = ["BenchError", "bench_main", "machine_info", "parse_options", "run_benchmark"]

PROG = "chunkpull bench"
DEFAULT_SIZE = 1 << 30
BASELINES = ("single+sha256", "curl+sha256sum", "python-threads", "python-threads-direct", "aria2c", "hf_transfer", "hf_transfer-raw", "skopeo")
# Fixed by the baselines' own command lines (the issue's settings), not swept.
ARIA2C_STREAMS = 16
ARIA2C_SPLIT = 8 << 20
HF_TRANSFER_FILES = 8
# A run that takes longer than this is killed and reported as failed: a
# hung connection must not hang the benchmark.
DEFAULT_TIMEOUT_S = 1800.0


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


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


def _streams(text: str) -> int:
    """A stream count, or ``auto`` (0): chunkpull's adaptive count (the baselines then use the default 8)."""
    return AUTO if text.strip().lower() == "auto" else _whole(text, _env.MAX_MAX_STREAMS)


AUTO = 0  # the streams value of an adaptive chunkpull run


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
    p.add_argument("--streams", type=_list_of(_streams), metavar="N[,N...]",
                   help="stream counts to sweep, e.g. auto,1,4,8,16 (auto: chunkpull's adaptive count; default: chunkpull's default)")
    p.add_argument("--verify", type=_list_of(_one_of(VERIFY_MODES, "verify mode")), metavar="blob|chunks",
                   help="verify mode(s) to sweep (default blob)")
    p.add_argument("--threshold", type=_arg(parse_size), help="chunking threshold passed to chunkpull (default: embedded: min(64M, chunk size); a named model: chunkpull's 64M)")
    p.add_argument("--repeat", type=_arg(_whole), default=1, help="runs per configuration; the table shows median, min and max (default 1)")
    p.add_argument("--compare", action="store_true", help="also run the baselines (those installed)")
    p.add_argument("--baselines", type=_list_of(_one_of(BASELINES, "baseline")), metavar="NAME[,NAME...]",
                   help=f"run only these baselines (implies --compare): {', '.join(BASELINES)}")
    p.add_argument("--drop-caches", action="store_true",
                   help="before every run, empty the page cache (root only) and re-read the served blobs: runs start with free memory "
                   "instead of back to back")
    p.add_argument("--no-fsync", dest="fsync", action="store_false", help="nothing is fsynced: chunkpull skips its fsync before commit, the baselines the fsync of their output "
                   "(default: every method's output is on disk before its clock stops, as a real pull's is)")
    p.add_argument("--json", action="store_true", help="print a JSON document (one record per run) instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="plot throughput against streams and chunk size (needs matplotlib)")
    p.add_argument("--tmpdir", help="where runs write their temporary models directories (default: the system's)")
    p.add_argument("--mirror", dest="mirrors", action="append", metavar="URL",
                   help="a mirror chunkpull may take chunks from (repeatable; with a registry NAME); the table notes bytes per source")
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
    drop_caches: bool = False
    tmpdir: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    quiet: bool = False
    mirrors: list[str] | None = None


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
    if args.mirrors and not args.name:
        raise BenchError("--mirror needs a registry NAME: the embedded model has no mirror")
    if args.size is not None and args.size < (args.layers or 1):
        raise BenchError(f"--size {args.size} is smaller than one byte per layer")
    if args.compare and not args.baselines:
        args.baselines = list(BASELINES)
    # Options given on the command line; the rest keep Options' defaults.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if getattr(args, f.name) is not None}
    return Options(**given)


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
    if method in ("aria2c", "skopeo"):
        return None if shutil.which(method) else f"{method} not installed"
    if method.startswith("hf_transfer"):
        return None if importlib.util.find_spec("hf_transfer") else "hf_transfer not installed (pip install hf_transfer)"
    return None  # single+sha256 and python-threads need only Python and requests


def _check_outputs(method: str, workdir: Path, target: Target) -> str | None:
    """Return why the run's files are wrong, or None when every blob hashes to its digest."""
    where = workdir / ("models/blobs" if method == "chunkpull" else "out")
    for blob in target.blobs:
        problem = child.blob_problem(where / blob.digest.replace(":", "-", 1), blob.digest, blob.size)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------
# The plan and the loop
# --------------------------------------------------------------------------


def _plan(opts: Options, chunk_size: int | None, first: bool, available: list[str]) -> list[Config]:
    """Return the configurations to run against one registry (one registry chunk size).

    chunkpull and the python-threads baselines follow the registry's chunks, so they run
    at every chunk size; hf_transfer splits by itself, in the registry's
    chunk size (embedded) or ``--chunk-size`` (a named registry); the rest
    do not depend on chunking and run once, with the first chunk size.
    """
    plan = [Config("chunkpull", s, chunk_size, v) for v in opts.verify for s in opts.streams]
    own_split = opts.chunk_sizes[0] if opts.name or chunk_size is None else chunk_size
    for method in available:
        if method.startswith("python-threads"):
            # At AUTO, the fair baseline runs chunkpull's starting (and former default) count; once
            # when auto and that count are both swept.
            plan += dict.fromkeys(Config(method, s or _env.DEFAULT_MAX_STREAMS, chunk_size, v) for v in opts.verify for s in opts.streams)
        elif method.startswith("hf_transfer"):
            plan.append(Config(method, HF_TRANSFER_FILES, own_split, "none" if method.endswith("-raw") else "after"))
        elif first:  # independent of the registry's chunk size: once is enough
            if method == "aria2c":
                plan.append(Config(method, ARIA2C_STREAMS, ARIA2C_SPLIT, "after"))
            elif method == "skopeo":
                plan.append(Config(method, 1, None, "stream"))  # one stream per layer, digest checked as it copies
            else:
                plan.append(Config(method, 1, None, "after"))
    return plan


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
        if method == "skopeo" and not opts.name:
            # containers/image refuses Ollama's layer media types in a Docker manifest.
            why = "skopeo only reads container images: give a registry's image name"
        if why:
            skipped.append({"method": method, "reason": why})
        else:
            available.append(method)
    machine = machine_info()
    settings: dict[str, Any] = {
        "model": opts.name or f"embedded: {format_size(opts.size)} in {opts.layers} layer(s), seed {opts.seed}",
        "streams": opts.streams,
        "verify": opts.verify,
        "repeat": opts.repeat,
        "fsync": opts.fsync,
        "memory": "caches dropped" if opts.drop_caches else "back-to-back",
        "baselines": opts.baselines,
        "default_streams": _env.max_streams(),
    }
    if opts.name:
        target = remote_target(opts.name)
        chunks = [registry_chunk_size(target)]
        settings.update(chunk_sizes=chunks, chunk_digest=None, bytes=target.size,
                        threshold=opts.threshold or f"chunkpull's default ({format_size(DEFAULT_CHUNKING_THRESHOLD)})")
    else:
        _status(opts, f"bench: preparing the {format_size(opts.size)} model ({opts.layers} layer(s)) in {bench_cache_dir()}")
        model = ensure_model(opts.size, opts.layers, opts.seed)
        chunks = opts.chunk_sizes
        settings.update(chunk_sizes=chunks, chunk_digest=opts.chunk_digest, bytes=sum(b.size for b in model.blobs),
                        threshold=opts.threshold or f"min({format_size(DEFAULT_CHUNKING_THRESHOLD)}, chunk size)")
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
            label = f"{cfg.method} streams={'auto' if cfg.streams == AUTO and cfg.method == 'chunkpull' else cfg.streams or '-'} chunk={format_size(cfg.chunk_size)} verify={cfg.verify}"
            _status(opts, f"bench: [{counter[0]}/{counter[1]}] {label}")
            if opts.drop_caches:
                target.drop_caches()
            workdir = Path(tempfile.mkdtemp(prefix="chunkpull-bench-", dir=opts.tmpdir))
            try:
                (workdir / "out").mkdir()
                spec = {
                    "method": cfg.method,
                    "name": target.name,
                    "blobs": target.blob_specs(),
                    "models_dir": str(workdir / "models"),
                    "out_dir": str(workdir / "out"),
                    # chunkpull at AUTO adapts; a baseline at AUTO uses the fixed default.
                    "streams": (AUTO if cfg.method == "chunkpull" else _env.DEFAULT_MAX_STREAMS) if cfg.streams == AUTO else (cfg.streams or 1),
                    "chunk_size": cfg.chunk_size or DEFAULT_CHUNK_SIZE,
                    "verify": cfg.verify,
                    "threshold": _threshold(opts, target, chunk),
                    "fsync": opts.fsync,
                    # The child draws chunkpull pull's display on the stderr it inherits.
                    "progress": cfg.method == "chunkpull" and not opts.quiet,
                    "label": cfg.method,  # the status line above has the settings
                    "instrument": target.remote and cfg.method == "chunkpull",
                    "mirrors": opts.mirrors or [],
                    "verify_tls": target.verify_tls,
                }
                result = child.run_child(spec, workdir, timeout_s=opts.timeout_s)
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
        if result.get("sources"):
            record["sources"] = result["sources"]
    return record


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
        plt = import_pyplot()
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
