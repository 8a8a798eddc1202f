"""The terminal progress display of a pull, shared by ``chunkpull pull`` and the bench child.

``ProgressBar`` renders one pull's ``Aggregator`` (a live line on a terminal,
plain lines in logs); ``pull_with_progress`` runs a pull on its own thread
while the calling thread draws, so that Ctrl-C lands in the wait loop and
cancels the pull cleanly.  The figures come from the Aggregator; this
module only reads snapshots and formats them (``core.units``).

Imports registry and core; never cli or bench (both import it).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO, TypeVar

from .core.progress import CACHED, DONE, Aggregator
from .core.units import format_bytes, format_duration, format_rate, plural
from .registry import PullReport, Registry

__all__ = ["Figures", "ProgressBar", "is_tty", "pull_with_progress", "run_cancellable", "run_with_progress", "source_lines"]

T = TypeVar("T")


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
# A pull that has moved bytes and then gets none for this long says it is
# waiting (a stalled registry) instead of showing a stale rate.
WAIT_NOTE_S = RATE_WINDOW_S


# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    """What the CLI shows, read from one Aggregator at one moment."""

    completed: int  # bytes done, cached layers included
    total: int
    fetched: int  # bytes this pull moved (not cached, not resumed): what the rate is of
    blobs: int
    cached: int
    resumed: int = 0  # bytes an earlier pull had fetched
    # Every layer still to come has no byte yet: the registry has not
    # started sending them (it may be preparing their chunk lists).
    awaiting: bool = False

    @classmethod
    def read(cls, aggregator: Aggregator) -> Figures:
        completed, total = aggregator.totals()
        layers = aggregator.layers()
        # Resumed bytes came from an earlier pull: not traffic of this one.
        fetched, resumed, _cached_bytes = aggregator.byte_counts()
        cached = sum(1 for l in layers if l.state == CACHED)
        pending = [l for l in layers if l.state not in (CACHED, DONE)]
        awaiting = bool(pending) and all(l.completed == 0 for l in pending)
        return cls(completed, total, fetched, len(layers), cached, resumed, awaiting)


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


def _percent(figures: Figures) -> int:
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
        self._last_fetched = 0
        self._last_byte_at = clock()  # when fetched bytes last grew (or the bar was made)
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
        figures = Figures.read(self.aggregator)
        self._sample(figures, now)
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
        figures = Figures.read(self.aggregator)
        self._sample(figures, now)
        if self.is_tty:
            if figures.blobs or self._drawn:
                self._draw(figures, now, force=True)
                self._write("\n")
        else:
            self._plain_events()

    def _sample(self, figures: Figures, now: float) -> None:
        self._meter.add(now, figures.fetched)
        if figures.fetched != self._last_fetched:
            self._last_fetched, self._last_byte_at = figures.fetched, now

    def _waiting(self, figures: Figures, now: float) -> str | None:
        """Return what the pull waits for, when no byte is moving; None while bytes flow (or all is done)."""
        if not figures.blobs:
            return "resolving"  # the manifest is not in yet
        if figures.completed >= figures.total:
            return None
        # Before a layer's first byte the registry may be preparing its
        # chunk list (the built-in one hashes a fresh blob first): say so at
        # once, even when small blobs have already come.
        if figures.awaiting or now - self._last_byte_at >= WAIT_NOTE_S:
            return f"waiting for the registry {format_duration(now - self._last_byte_at)}"
        return None

    # -- terminal ---------------------------------------------------------

    def _draw(self, figures: Figures, now: float, *, force: bool = False) -> None:
        self._last_draw = now
        line = self._render(figures, self._width(), self._waiting(figures, now))
        if line == self._last_line and not force:
            return  # nothing visible changed: spare the terminal a write
        self._last_line = line
        self._drawn = True
        self._write("\r" + line + "\x1b[K")

    def _render(self, figures: Figures, width: int, waiting: str | None = None) -> str:
        """Return the terminal line for figures, at most ``width - 3`` characters; ``waiting`` replaces rate and ETA."""
        # Stop short of the last columns: a line reaching the edge wraps
        # (and "\r" then redraws only its last row), and the terminal's
        # own "^C" echo must fit after the line so the final redraw erases it.
        limit = max(1, width - 3)
        if not figures.blobs:
            # Nothing announced yet: no figures to show (0 of 0 is not 100%).
            line = f"{self.label}  resolving…" if self.label else "resolving…"
            return line[:limit]
        head = f"{_percent(figures):3d}% "
        sizes = f"{format_bytes(figures.completed):>7}/{format_bytes(figures.total)}"
        # Every field has a fixed width ("1h02m" is the longest ETA) so the
        # bar's length, and the fields after it, do not shift between frames.
        if waiting is not None:
            tail = f"  {sizes}  {waiting}"
        else:
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

    def _eta_text(self, figures: Figures) -> str:
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

    def _summary(self, figures: Figures) -> str:
        waiting = self._waiting(figures, self.clock())
        return (
            f"{format_bytes(figures.completed)}/{format_bytes(figures.total)} ({_percent(figures)}%), "
            + (waiting if waiting is not None else f"{self._rate_text()}, ETA {self._eta_text(figures)}")
        )

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def pull_with_progress(registry: Registry, name: str, label: str, *, quiet: bool, stream: TextIO,
                       report: PullReport | None = None) -> Aggregator:
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
    aggregator, _ = run_with_progress(lambda progress, cancel: registry.pull(name, progress=progress, cancel=cancel, report=report),
                                      label, quiet=quiet, stream=stream)
    return aggregator


def run_with_progress(work: Callable[[Aggregator, threading.Event], T], label: str, *, quiet: bool, stream: TextIO,
                      on_tick: Callable[[Aggregator], None] | None = None) -> tuple[Aggregator, T]:
    """Run ``work(progress, cancel)`` in a thread while this one draws the bar (and calls ``on_tick``); return (aggregator, its result).

    Raises what ``work`` raised, and KeyboardInterrupt as ``pull_with_progress`` does.
    """
    aggregator = Aggregator()
    bar = ProgressBar(aggregator, stream, is_tty=is_tty(stream), label=label)

    def tick() -> None:
        if not quiet:
            bar.tick()
        if on_tick is not None:
            on_tick(aggregator)

    result = run_cancellable(lambda cancel: work(aggregator, cancel), on_tick=tick, on_end=None if quiet else bar.finish)
    return aggregator, result


def run_cancellable(work: Callable[[threading.Event], T], *, on_tick: Callable[[], None] | None = None,
                    on_end: Callable[[], None] | None = None, cancel: threading.Event | None = None) -> T:
    """Run ``work(cancel)`` on its own thread while this one waits; return its result.

    ``on_tick`` is called every ~50 ms while it runs, ``on_end`` once it has
    stopped (returned, raised, or was cancelled).  Ctrl-C here sets
    ``cancel`` (the one given, else a new one) and waits for ``work`` to
    stop (a second Ctrl-C stops waiting), so a pull never dies in the
    middle of its bookkeeping.

    >>> run_cancellable(lambda cancel: 6 * 7)
    42

    Raises:
        What ``work`` raised; KeyboardInterrupt after cancelling it.
    """
    stop = cancel if cancel is not None else threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = work(stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    # The pull runs in its own thread so that Ctrl-C lands here, in the
    # wait loop, and never in the middle of the registry's bookkeeping
    # (a commit or the manifest write); the pull then stops cleanly on
    # its cancel event.  Daemon, so a second Ctrl-C can abandon it.
    worker = threading.Thread(target=run, name="chunkpull-pull", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
            if on_tick is not None:
                on_tick()
    except KeyboardInterrupt:
        stop.set()
        try:
            worker.join()  # workers notice cancel within one buffer's read
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
        if on_end is not None:
            on_end()
        raise
    except BaseException:
        stop.set()  # e.g. stderr closed under us: do not leave the pull running
        raise
    if on_end is not None:
        on_end()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def source_lines(report: PullReport) -> list[str]:
    """Per-source summary lines (only when mirrors took part): bytes, rate, chunks, failures, refusals, demotion."""
    if len(report.sources) < 2:
        return []
    out = []
    for s in report.sources:
        rate = f" at {format_rate(s.rate_bps)}" if s.rate_bps else ""
        extra = [f"{plural(s.failures, 'failed request')}"] if s.failures else []
        extra += [f"{plural(s.refused_chunks, 'chunk')} refused (bad bytes)"] if s.refused_chunks else []
        extra += [f"dropped: {s.demoted}"] if s.demoted else []
        what = "origin" if s.origin else "mirror"
        out.append(f"  {what} {s.name}: {format_bytes(s.bytes)}{rate}, {plural(s.chunks, 'chunk')}" + (f"; {'; '.join(extra)}" if extra else ""))
    return out
