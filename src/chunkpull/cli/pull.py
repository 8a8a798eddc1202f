"""``chunkpull pull``: one model or many under one budget, a progress display or JSON events, per-source figures.

Many names (arguments and ``--from-file``) are pulled together by
``Registry.pull_many``: one stream budget and one memory budget, a blob
several models share fetched once, one combined progress line, and one
model's failure never stops the others (the exit status is 1 when any
failed, and the summary names each failure).

``--json`` writes one JSON object per line on stdout instead of the display:
``start``, ``progress`` (about twice a second), ``sources`` (what the origin
and each mirror delivered), then ``done`` or ``error`` per model and a final
``summary``.  The display and errors stay off stdout, so the stream parses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..core.units import format_bytes, format_rate, plural
from ..display import Figures, run_with_progress, source_lines
from ..errors import ChunkpullError
from ..registry import PullReport, Registry

__all__ = ["cmd_pull", "read_names"]

JSON_PROGRESS_EVERY_S = 0.5


def read_names(args: argparse.Namespace) -> list[str]:
    """The names to pull: the arguments, then ``--from-file`` (one per line; blank lines and ``#`` comments skipped).

    Raises:
        ChunkpullError: the file cannot be read, or there is no name at all.
    """
    names = list(args.names)
    if args.from_file:
        try:
            text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ChunkpullError(f"cannot read the list of models {args.from_file}: {err}") from None
        names += [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not names:
        raise ChunkpullError("no model to pull: give names, or --from-file FILE")
    return list(dict.fromkeys(names))  # the same model twice is pulled once


class _JsonEvents:
    """Write events as JSON lines on stdout, progress at most every JSON_PROGRESS_EVERY_S."""

    def __init__(self) -> None:
        self._last = 0.0

    def emit(self, event: str, **fields: object) -> None:
        sys.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        sys.stdout.flush()

    def tick(self, aggregator) -> None:
        now = time.monotonic()
        if now - self._last >= JSON_PROGRESS_EVERY_S:
            self._last = now
            done, total = aggregator.totals()
            self.emit("progress", completed=done, total=total)


def cmd_pull(registry: Registry, args: argparse.Namespace, names: list[str]) -> tuple[int, int]:
    """Pull names; return (models failed, models pulled).  Raises KeyboardInterrupt on Ctrl-C (the pull has stopped)."""
    events = _JsonEvents() if args.json else None
    labels = [registry.parse(name).name.display_shortest(registry.mask) for name in names]  # bad names fail before any byte
    label = labels[0] if len(names) == 1 else f"{len(names)} models"
    report = PullReport()
    if events:
        events.emit("start", models=names)
    started = time.monotonic()

    def work(progress, cancel):
        if len(names) == 1:
            try:
                return {names[0]: registry.pull(names[0], progress=progress, cancel=cancel, report=report)}
            except ChunkpullError as err:
                return {names[0]: err}
        return registry.pull_many(names, progress=progress, cancel=cancel, report=report)

    aggregator, results = run_with_progress(work, label, quiet=args.quiet or bool(events), stream=sys.stderr,
                                            on_tick=events.tick if events else None)
    elapsed_s = time.monotonic() - started
    figures = Figures.read(aggregator)
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    if events:
        events.emit("sources", sources=report.to_json(), streams=report.streams, cuts=report.cuts, hedges=report.hedges, hedges_won=report.hedges_won)
        for name, result in results.items():
            if isinstance(result, BaseException):
                events.emit("error", model=name, error=" ".join(str(result).split()), kind=type(result).__name__)
            else:
                events.emit("done", model=name, digest=str(result.digest), size=result.size)
        events.emit("summary", models=len(names), failed=len(failed), fetched_bytes=figures.fetched, elapsed_s=round(elapsed_s, 3),
                    blobs=figures.blobs, cached_blobs=figures.cached)
        return len(failed), len(results) - len(failed)
    rate = figures.fetched / elapsed_s if elapsed_s > 0 else 0.0
    fetched = f"{format_bytes(figures.fetched)} in {elapsed_s:.2f} s ({format_rate(rate)})" if figures.fetched else f"nothing to fetch ({elapsed_s:.2f} s)"
    blobs = f"{plural(figures.blobs, 'blob')} ({figures.cached} cached)"
    if len(names) == 1:
        if not failed:
            print(f"pulled {names[0]}: {fetched}, {blobs}", flush=True)
    else:
        for name, result in results.items():
            if not isinstance(result, BaseException):
                print(f"pulled {name}: {format_bytes(result.size)}, {plural(len(result.blobs), 'blob')}", flush=True)
        print(f"{len(results) - len(failed)} of {plural(len(names), 'model')} pulled: {fetched}, {blobs}", flush=True)
    if len(report.streams) > 1:
        print(f"  streams: adaptive, {' → '.join(map(str, report.streams))}", flush=True)
    if report.cuts or report.hedges:
        print(f"  slow connections: {plural(report.cuts, 'read')} cut and resumed, {plural(report.hedges, 'chunk end')} hedged "
              f"({report.hedges_won} won by the second connection)", flush=True)
    for line in source_lines(report):
        print(line, flush=True)
    for name, err in failed.items():
        print(f"chunkpull: error: {name}: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr, flush=True)
    return len(failed), len(results) - len(failed)
