"""The ``chunkpull`` command line: argument parsing, and formatting of progress, results and errors.

Subcommands::

    chunkpull pull NAME... [--models DIR] [--streams N] [--verify blob|chunks] [--quiet]
    chunkpull ls   [--models DIR]
    chunkpull rm   NAME... [--models DIR]
    chunkpull serve [--host H] [--port P] [--models DIR] [--streams N]
    chunkpull registry serve|make ...      (the built-in test registry)
    chunkpull bench [NAME] [--compare] ...  (the benchmark harness, bench.py)
    chunkpull --version

This module owns nothing else: pulling, caching and serving live in
``registry``, ``cache``, ``api`` and ``testregistry``.  Progress figures come
from a ``progress.Aggregator``; the CLI only reads its snapshots and formats
them (sizes in decimal units as Ollama shows them: kB, MB, GB).

Exit status: 0 on success, 1 on an error (one line on stderr,
``chunkpull: error: <message>``, no traceback), 2 on a usage error, 130 when
interrupted with Ctrl-C.

Imports the package (for ``__version__``), registry, cache, progress,
errors, _env, _hashio and testregistry; ``api`` only inside ``serve`` and
``bench`` only inside ``bench`` (the package itself loads neither).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from . import __version__, testregistry
from ._env import MAX_MAX_STREAMS
from ._hashio import BACKEND
from .cache import DiskCache
from .errors import ChunkpullError, ModelNotFoundError
from .progress import CACHED, DONE, Aggregator
from .registry import VERIFY_MODES, Registry

__all__ = [
    "ProgressBar",
    "format_age",
    "format_bytes",
    "format_duration",
    "format_rate",
    "main",
    "pull_with_progress",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# A terminal bar is redrawn at most this often: faster is invisible and
# costs a write per frame to a (possibly remote) terminal.
REDRAW_INTERVAL_S = 0.1
# Without a terminal (logs, CI) a progress line at most this often.
PLAIN_INTERVAL_S = 5.0
# The rate shown is the average over this trailing window, so one slow
# or fast read does not make the figure jump.
RATE_WINDOW_S = 3.0
# Below this much sampled time a rate is mostly noise; show "--" instead.
RATE_MIN_SPAN_S = 0.5
# Narrowest bar worth drawing; below it the bar is left out.
_MIN_BAR = 10
# How often the main thread wakes while a pull runs; the bar's own
# throttle decides whether a wake-up draws.
_POLL_S = 0.05


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def _three_digits(value: float) -> str:
    # Three significant digits: "1.07", "12.3", "512".
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def format_bytes(n: float) -> str:
    """Return n bytes in decimal units with three significant digits ("1.07 GB", "512 MB", "999 B")."""
    if n < 1000:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1000
        # 999.5 and up would print as "1000": step up to the next unit.
        if value < 999.5 or unit == _UNITS[-1]:
            return f"{_three_digits(value)} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float) -> str:
    """Return a transfer rate in GB/s from 1 GB/s up, else in MB/s ("1.26 GB/s", "312 MB/s")."""
    if bytes_per_s >= 0.9995e9:
        return f"{_three_digits(bytes_per_s / 1e9)} GB/s"
    return f"{_three_digits(max(0.0, bytes_per_s) / 1e6)} MB/s"


def format_duration(seconds: float) -> str:
    """Return a short duration for an ETA: "42s", "3m05s", "1h02m"."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_age(seconds: float) -> str:
    """Return how long ago something happened, as ``ls`` shows it ("3 minutes ago")."""
    s = int(seconds)
    if s < 60:
        return "just now"  # also for a clock set back since the write
    for below, size, unit in (
        (3600, 60, "minute"),
        (86400, 3600, "hour"),
        (14 * 86400, 86400, "day"),
        (60 * 86400, 7 * 86400, "week"),
        (730 * 86400, 30 * 86400, "month"),
        (None, 365 * 86400, "year"),
    ):
        if below is None or s < below:
            return f"{_plural(s // size, unit)} ago"
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _one_line(err: BaseException) -> str:
    # A registry's error body can span lines; the contract is one line.
    text = " ".join(str(err).split())
    return text or type(err).__name__


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Figures:
    """What the CLI shows, read from one Aggregator at one moment."""

    completed: int  # bytes done, cached layers included
    total: int
    fetched: int  # bytes this pull moved (not cached, not resumed): what the rate is of
    blobs: int
    cached: int

    @classmethod
    def read(cls, aggregator: Aggregator) -> _Figures:
        completed, total = aggregator.totals()
        layers = aggregator.layers()
        # Resumed bytes came from an earlier pull: not traffic of this one.
        fetched = sum(l.completed - l.resumed for l in layers if l.state != CACHED)
        cached = sum(1 for l in layers if l.state == CACHED)
        return cls(completed, total, fetched, len(layers), cached)


class _RateMeter:
    """Average bytes per second over the trailing ``window_s`` of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S, min_span_s: float = RATE_MIN_SPAN_S) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._window_s = window_s
        self._min_span_s = min_span_s

    def add(self, t: float, n: int) -> None:
        self._samples.append((t, n))
        # Keep one sample at or before the window's start so the average
        # always spans the whole window once there is that much history.
        while len(self._samples) > 2 and self._samples[1][0] <= t - self._window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Return bytes per second, or None until the samples span ``min_span_s``."""
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 - t0 < self._min_span_s:
            return None
        return (n1 - n0) / (t1 - t0)


def _percent(figures: _Figures) -> int:
    # Rounded down, so "100%" never shows before the last byte is in.
    return 100 if figures.total == 0 else figures.completed * 100 // figures.total


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


def _short_digest(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


class ProgressBar:
    """Render one pull's progress from an Aggregator to a stream.

    On a terminal (``is_tty``) ``tick()`` redraws a single line in place
    (carriage return, then the line, then erase-to-end-of-line so a shorter
    line leaves no debris) at most every ``REDRAW_INTERVAL_S`` of ``clock``:
    label, percent, bar, bytes done/total, rate over the last
    ``RATE_WINDOW_S``, ETA.  Cached layers count as done.  The line is kept
    narrower than the terminal so it never wraps, which would
    break the carriage-return redraw; a frame identical to the last one
    is not written.

    Otherwise ``tick()`` writes plain lines: one per layer as it starts, is
    found cached, or is done, and a progress line at most every
    ``PLAIN_INTERVAL_S``.

    ``clock`` (seconds, monotonic) and ``width`` (columns, or a function
    returning them; default: the stream's terminal) are injectable so tests
    need no real time or terminal.  Not thread-safe: call ``tick()`` and
    ``finish()`` from one thread.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        stream: TextIO,
        *,
        is_tty: bool,
        clock: Callable[[], float] = time.monotonic,
        label: str = "",
        width: int | Callable[[], int] | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.stream = stream
        self.is_tty = is_tty
        self.clock = clock
        self.label = label
        if width is None:
            self._width: Callable[[], int] = lambda: _terminal_width(stream)
        elif callable(width):
            self._width = width
        else:
            self._width = lambda: width
        self._meter = _RateMeter()
        self._last_draw: float | None = None
        self._last_plain = clock()
        self._announced: set[str] = set()
        self._done: set[str] = set()
        self._last_line: str | None = None
        self._drawn = False
        self._finished = False

    def tick(self) -> None:
        """Sample the aggregator and draw if a redraw is due."""
        now = self.clock()
        figures = _Figures.read(self.aggregator)
        self._meter.add(now, figures.fetched)
        if self.is_tty:
            if self._last_draw is None or now - self._last_draw >= REDRAW_INTERVAL_S:
                self._draw(figures, now)
        else:
            self._plain_events()
            if now - self._last_plain >= PLAIN_INTERVAL_S and figures.total and figures.completed < figures.total:
                self._last_plain = now
                self._write(f"progress: {self._summary(figures)}\n")

    def finish(self) -> None:
        """Draw the final state and end the bar's line; idempotent.

        Writes nothing if no layer was ever announced (the pull failed
        before knowing its blobs), so an error stays the only line.
        """
        if self._finished:
            return
        self._finished = True
        now = self.clock()
        figures = _Figures.read(self.aggregator)
        self._meter.add(now, figures.fetched)
        if self.is_tty:
            if figures.blobs or self._drawn:
                self._draw(figures, now, force=True)
                self._write("\n")
        else:
            self._plain_events()

    # -- terminal ---------------------------------------------------------

    def _draw(self, figures: _Figures, now: float, *, force: bool = False) -> None:
        self._last_draw = now
        line = self._render(figures, self._width())
        if line == self._last_line and not force:
            return  # nothing visible changed: spare the terminal a write
        self._last_line = line
        self._drawn = True
        self._write("\r" + line + "\x1b[K")

    def _render(self, figures: _Figures, width: int) -> str:
        """Return the terminal line for figures, at most ``width - 3`` characters."""
        # Stop short of the last columns: a line reaching the edge wraps
        # (and "\r" then redraws only its last row), and the terminal's
        # own "^C" echo must fit after the line so the final redraw erases it.
        limit = max(1, width - 3)
        head = f"{_percent(figures):3d}% "
        sizes = f"{format_bytes(figures.completed):>7}/{format_bytes(figures.total)}"
        # Every field has a fixed width ("1h02m" is the longest ETA) so the
        # bar's length, and the fields after it, do not shift between frames.
        tail = f"  {sizes}  {self._rate_text():>9}  ETA {self._eta_text(figures):<5}"
        # A long label yields to a bar of at least _MIN_BAR columns and is
        # cut from the left: the model and tag are at its end.
        label = self.label
        keep = max(8, min(limit // 3, limit - len(head) - len(tail) - _MIN_BAR - 4))
        if len(label) > keep:
            label = "~" + label[len(label) - keep + 1 :]
        label = f"{label}  " if label else ""
        # The bar gets what the text leaves, up to 40 columns; on a narrow
        # terminal it goes first, then the label, then the line is cut.
        room = min(40, limit - len(label) - len(head) - len(tail) - 2)
        bar = ""
        if room >= _MIN_BAR:
            filled = room if figures.total == 0 else room * figures.completed // figures.total
            bar = "[" + "#" * filled + "." * (room - filled) + "]"
        line = label + head + bar + tail
        if len(line) > limit:
            line = head + tail
        return line[:limit]

    def _rate_text(self) -> str:
        rate = self._meter.rate()
        return "--" if rate is None else format_rate(rate)

    def _eta_text(self, figures: _Figures) -> str:
        if figures.total and figures.completed >= figures.total:
            return "0s"
        rate = self._meter.rate()
        if not rate or rate <= 0:
            return "--"
        eta_s = (figures.total - figures.completed) / rate
        return format_duration(eta_s) if eta_s < 100 * 3600 else "--"

    # -- plain lines --------------------------------------------------------

    def _plain_events(self) -> None:
        for layer in self.aggregator.layers():
            short = _short_digest(layer.digest)
            size = format_bytes(layer.total)
            if layer.digest not in self._announced:
                self._announced.add(layer.digest)
                state = "cached" if layer.state == CACHED else "start"
                self._write(f"layer {short} {size}: {state}\n")
            if layer.state == DONE and layer.digest not in self._done:
                self._done.add(layer.digest)
                self._write(f"layer {short} {size}: done\n")

    def _summary(self, figures: _Figures) -> str:
        return (
            f"{format_bytes(figures.completed)}/{format_bytes(figures.total)} ({_percent(figures)}%), "
            f"{self._rate_text()}, ETA {self._eta_text(figures)}"
        )

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _open_registry(args: argparse.Namespace, *, create: bool = True) -> Registry:
    return Registry(
        DiskCache.open(args.models, create=create),
        max_streams=getattr(args, "streams", None),
        verify=getattr(args, "verify", None),
    )


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _cmd_pull(args: argparse.Namespace) -> int:
    registry = _open_registry(args)
    try:
        # Reject every bad name before moving a byte of any model.
        labels = [registry.parse(name).name.display_shortest(registry.mask) for name in args.names]
        for name, label in zip(args.names, labels):
            code = _pull_one(registry, name, label, quiet=args.quiet)
            if code != EXIT_OK:
                return code
        return EXIT_OK
    finally:
        registry.close()


def pull_with_progress(registry: Registry, name: str, label: str, *, quiet: bool, stream: TextIO) -> Aggregator:
    """Pull one model while this thread draws its progress bar on stream; return the pull's Aggregator.

    The bar is a terminal line when stream is a terminal, plain lines
    otherwise, and nothing with ``quiet`` (the Aggregator still counts, for
    a summary).  Also the ``chunkpull bench`` child's pull, so that what is
    measured is what ``chunkpull pull`` does.

    Raises:
        KeyboardInterrupt: Ctrl-C; the pull was cancelled and has stopped
            (a second Ctrl-C stops waiting for it), so the next pull resumes.
        ChunkpullError: whatever ``registry.pull`` raised.
    """
    aggregator = Aggregator()
    bar = ProgressBar(aggregator, stream, is_tty=_is_tty(stream), label=label)
    cancel = threading.Event()
    outcome: dict[str, BaseException] = {}

    def work() -> None:
        try:
            registry.pull(name, progress=aggregator, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    # The pull runs in its own thread so that Ctrl-C lands here, in the
    # wait loop, and never in the middle of the registry's bookkeeping
    # (a commit or the manifest write); the pull then stops cleanly on
    # its cancel event.  Daemon, so a second Ctrl-C can abandon it.
    worker = threading.Thread(target=work, name="chunkpull-pull", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
            if not quiet:
                bar.tick()
    except KeyboardInterrupt:
        cancel.set()
        try:
            worker.join()  # workers notice cancel within one buffer's read
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
        if not quiet:
            bar.finish()
        raise
    except BaseException:
        cancel.set()  # e.g. stderr closed under us: do not leave the pull running
        raise
    if not quiet:
        bar.finish()
    if "error" in outcome:
        raise outcome["error"]
    return aggregator


def _pull_one(registry: Registry, name: str, label: str, *, quiet: bool) -> int:
    """Pull one model with a progress display; print its summary line."""
    try:
        aggregator = pull_with_progress(registry, name, label, quiet=quiet, stream=sys.stderr)
    except KeyboardInterrupt:
        print("chunkpull: interrupted; the next pull resumes", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    # Bytes and rate count what this pull brought in, not cached blobs, so
    # the rate is a real transfer rate (a fully cached pull shows 0 B);
    # the model's size is what ``ls`` shows.
    figures = _Figures.read(aggregator)
    elapsed_s = aggregator.elapsed_s()
    rate = figures.fetched / elapsed_s if elapsed_s > 0 else 0.0
    print(
        f"pulled {name}: {format_bytes(figures.fetched)} in {elapsed_s:.2f} s ({format_rate(rate)}), "
        f"{_plural(figures.blobs, 'blob')} ({figures.cached} cached)",
        flush=True,
    )
    return EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    registry = _open_registry(args, create=False)
    try:
        now = time.time()
        mtimes = {}
        for name, path in registry.cache.links():
            try:
                mtimes[name] = path.stat().st_mtime
            except OSError:
                continue
        rows = [("NAME", "DIGEST", "SIZE", "MODIFIED")]
        for name, manifest in registry.list_local():
            modified = format_age(now - mtimes[name]) if name in mtimes else "?"
            rows.append((name.display_shortest(registry.mask), manifest.digest.short(), format_bytes(manifest.size), modified))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "   " + row[3])
        return EXIT_OK
    finally:
        registry.close()


def _cmd_rm(args: argparse.Namespace) -> int:
    registry = _open_registry(args, create=False)
    status = EXIT_OK
    try:
        # Like rm(1): a missing model is reported and the others still go.
        for name in args.names:
            try:
                if not registry.unlink(name):
                    raise ModelNotFoundError(name, f'model "{name}" not found in {registry.cache.root} (see chunkpull ls)')
            except ChunkpullError as exc:
                _print_error(exc)
                status = EXIT_ERROR
                continue
            print(f"deleted {name}", flush=True)
        return status
    finally:
        registry.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the API server is only needed by this command.
    from . import api

    # api logs each request to the "chunkpull.api" logger and leaves the
    # handlers to its caller; show them on stderr, and only chunkpull's.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("chunkpull")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    registry = _open_registry(args)
    try:
        api.serve(registry, args.host, args.port, ready=lambda server: print(f"chunkpull: serving on {server.url}", file=sys.stderr, flush=True))
    finally:
        registry.close()
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench  # heavy and rarely used: only when asked for

    return bench.bench_main(args.rest)


def _cmd_registry(args: argparse.Namespace) -> int:
    entry = testregistry.serve_main if args.action == "serve" else testregistry.make_main
    return entry(args.rest)


# --------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------


def _streams(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_MAX_STREAMS:
        raise argparse.ArgumentTypeError(f"want a whole number from 1 to {MAX_MAX_STREAMS}, not {text!r}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"want a port number from 0 to 65535, not {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chunkpull",
        description="Pull model blobs from Ollama-style registries into an Ollama models directory, fast and verified.",
    )
    p.add_argument("--version", action="version", version=f"chunkpull {__version__} (backend: {BACKEND})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    models_help = "models directory (default: $OLLAMA_MODELS, else ~/.ollama/models)"
    streams_help = "concurrent connections per pull (default: $OLLAMA_REGISTRY_MAXSTREAMS, else 8)"

    pull = sub.add_parser("pull", help="pull models into the models directory", description="Pull models into the models directory.")
    pull.add_argument("names", nargs="+", metavar="NAME", help="model name, e.g. llama3.2 or http://127.0.0.1:5000/library/smol:latest")
    pull.add_argument("--models", metavar="DIR", help=models_help)
    pull.add_argument("--streams", type=_streams, metavar="N", help=streams_help)
    pull.add_argument("--verify", choices=VERIFY_MODES, help="blob: one whole-blob SHA-256 pass (default); chunks: also check every chunk as it arrives")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress display; only the summary line")
    pull.set_defaults(run=_cmd_pull)

    ls = sub.add_parser("ls", help="list local models", description="List the models in the models directory.")
    ls.add_argument("--models", metavar="DIR", help=models_help)
    ls.set_defaults(run=_cmd_ls)

    rm = sub.add_parser("rm", help="remove local models", description="Remove models and the blobs no other model uses.")
    rm.add_argument("names", nargs="+", metavar="NAME", help="model name as pulled or as ls shows it")
    rm.add_argument("--models", metavar="DIR", help=models_help)
    rm.set_defaults(run=_cmd_rm)

    serve = sub.add_parser("serve", help="serve the Ollama-compatible local API", description="Serve the Ollama-compatible local API (/api/pull, /api/delete, ...).")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=11434, help="port to bind (default 11434)")
    serve.add_argument("--models", metavar="DIR", help=models_help)
    serve.add_argument("--streams", type=_streams, metavar="N", help=streams_help)
    serve.set_defaults(run=_cmd_serve)

    reg = sub.add_parser(
        "registry",
        help="run the built-in registry (tests and demos)",
        description="The built-in registry: 'serve DIR ...' serves a models directory, 'make DIR NAME --size ...' writes a model. "
        "Run 'chunkpull registry serve --help' for the options.",
    )
    reg.add_argument("action", choices=("serve", "make"))
    reg.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS", help="passed on unchanged")
    reg.set_defaults(run=_cmd_registry)

    bench = sub.add_parser(
        "bench",
        add_help=False,
        help="benchmark pulls (an embedded 1 GiB model by default, or a registry name)",
        description="Benchmark pulls; run 'chunkpull bench --help' for the options.",
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS", help="passed on to the benchmark harness")
    bench.set_defaults(run=_cmd_bench)
    return p


def _print_error(err: BaseException) -> None:
    print(f"chunkpull: error: {_one_line(err)}", file=sys.stderr, flush=True)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") convention
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line with argv (default ``sys.argv[1:]``); return the exit status.

    Never raises for an expected failure: errors become one line on stderr
    and status 1, usage errors status 2, Ctrl-C status 130.  Unexpected
    exceptions (bugs) keep their traceback.
    """
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # bench owns its whole option set (its --help included): hand it over.
        args = argparse.Namespace(command="bench", rest=argv[1:], run=_cmd_bench) if argv[:1] == ["bench"] else parser.parse_args(argv)
        if args.command is None:
            parser.print_usage(sys.stderr)
            print("chunkpull: error: a command is required", file=sys.stderr)
            return EXIT_USAGE
        return args.run(args)
    except SystemExit as exc:  # argparse (ours, or testregistry's) exits; main returns instead
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("chunkpull: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (ChunkpullError, OSError, ValueError) as err:
        _print_error(err)
        return EXIT_ERROR
