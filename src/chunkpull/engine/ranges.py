"""The one range-streaming loop every byte of a pull moves through.

``RangeStreamer.stream`` streams bytes start..end of a URL into a sink,
credits new bytes to the blob's progress once, and retries from where it
was (``Transport.retry`` bounds the attempts).  A stream that is one racer
of a ``RangeRace`` (``engine.hedge``) also stops, quietly and at once, when
the race is over, and a retry of it starts at the race's cursor rather
than re-fetching bytes another racer already brought.

Imports core, errors and the engine's transport, monitor and hedge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..core.progress import BYTES, Progress, ProgressCallback
from .adaptive import Streams
from .blob import BlobPull
from .config import Source
from .hedge import RaceLost, RangeRace, Racer
from .monitor import StreamMonitor
from .pieces import PoolPieces, ReusedBuffer
from .transport import RangeIgnoredError, ShortReadError, Transport

__all__ = ["RangeStreamer"]


class RangeStreamer:
    """Stream ranges for one pull: its transport, monitor, stream counter, progress callback and cancel event."""

    def __init__(self, transport: Transport, monitor: StreamMonitor, streams: Streams, report: ProgressCallback, cancel: threading.Event) -> None:
        self.transport = transport
        self.monitor = monitor
        self.streams = streams
        self.report = report
        self.cancel = cancel

    def stream(
        self,
        blob: BlobPull,
        url: str,
        start: int,
        end: int,
        buffers: ReusedBuffer | PoolPieces,
        sink: Callable[[int, memoryview], None],
        *,
        label: object,
        resume: bool = True,
        restart: Callable[[], None] | None = None,
        on_answer: Callable[[str], None] | None = None,
        source: Source | None = None,
        attempts: int | None = None,
        active: list[float] | None = None,
        race: tuple[RangeRace, Racer] | None = None,
        hedge: Callable[[], bool] | None = None,
    ) -> str:
        """Stream bytes start..end (inclusive) of url into sink(offset, view), retrying until done; return the URL that answered.

        A retry resumes where the last attempt stopped (the sink has every
        byte before it), unless ``resume`` is False (a registry that ignores
        Range can only start over).  When the registry ignores Range on a
        resumed request, ``restart()`` (if given) resets the sink and the
        stream starts over; without it, RangeIgnoredError reaches the caller.
        New bytes are credited to the blob and reported once.  ``source``
        (default the blob's origin) supplies TLS and auth; ``attempts`` caps
        the retries (a mirror gets one); ``active`` collects reading time.
        ``race`` makes this stream a racer (the sink offers to that race);
        ``hedge`` is what the monitor may call instead of cutting it.

        Raises:
            RangeIgnoredError, RegistryError, TransportError, PullCancelledError, and whatever sink raises.
        """
        pos = start
        credited = start  # how far the retry budget counts this transfer as having got
        answered = url
        source = source or blob.source

        def deliver(offset: int, view: memoryview) -> None:
            nonlocal pos
            sink(offset, view)
            pos = offset + len(view)
            new = blob.credit(offset, len(view))
            if new:
                self.streams.bytes += new
                self.report(Progress(blob.key, blob.layer.size, BYTES, new))

        def attempt() -> None:
            nonlocal pos, credited, answered
            if not resume:
                pos = start
            if race is not None:
                if race[0].done:
                    return  # another racer brought the rest (or the owner gave up)
                pos = max(pos, race[0].cursor)
            if pos > end:
                return
            before = pos
            try:
                answered = self.transport.read_range(
                    url, pos, end, buffers, deliver, verify_tls=source.verify_tls, auth=source.auth, stream=stream, on_answer=on_answer
                )
            except RaceLost:
                return
            except RangeIgnoredError:
                if restart is None:
                    raise
                restart()
                pos = start
                raise ShortReadError(f"{url}: cannot resume (Range ignored); starting over", 0) from None
            except Exception:
                if race is not None and race[0].done:
                    return  # cut because the race is over: nothing is left to fetch
                raise
            finally:
                buffers.drop()
                # An attempt the monitor cut (stalled, dripping, straggling)
                # does not renew the retry budget: a registry that sends a
                # little and then stalls, on every connection, fails within
                # the budget.  A reset after some bytes does renew it.
                if not stream.aborted and pos > before:
                    credited = pos

        stream = self.monitor.stream(label, self.cancel)
        stream.hedge = hedge
        if race is not None:
            race[1].stream = stream
        try:
            # Progress renews the retry budget only where a retry keeps it.
            self.transport.retry(attempt, url, cancel=self.cancel, position=(lambda: credited) if resume else None, attempts=attempts)
        finally:
            self.monitor.done(stream)
            if active is not None:
                active.append(stream.active_s)  # reading time only: waits for pieces are not the source's
        return answered
