"""The one-call library API: ``chunkpull.pull`` and, for asyncio, ``chunkpull.apull``.

``pull(name)`` is what ``hf_hub_download`` is to the Hub: it opens a
``Registry`` with the given settings, pulls, closes the connections, and
returns a ``PullResult`` whose ``model_path`` is the file to load.
``progress`` takes a callback, ``"tqdm"``, or ``tqdm_class=`` for bars.

``apull(name)`` runs the same pull on a thread and hands its progress to
the event loop: ``await`` it for the ``PullResult``, or ``async for`` over
it for ``LayerProgress`` items (as ``ollama.AsyncClient().pull(stream=True)``
yields ``ProgressResponse``).  Cancelling the task cancels the pull; the
work files stay, and the next pull resumes them.

Imports registry, bars, display (its cancellable runner) and core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

from .bars import TqdmProgress
from .core.index import Platform
from .core.progress import Aggregator, LayerProgress, Progress, ProgressCallback, State
from .display import run_cancellable
from .registry import PullResult, Registry
from .store.cache import DiskCache
from .tuning import Tuning, VerifyMode

if TYPE_CHECKING:
    import asyncio  # at run time imported by the async path only: it costs a CLI pull ~50 ms of start-up

__all__ = ["AsyncPull", "PullProgress", "RegistryOptions", "apull", "pull"]

# How long a cancelled apull waits for its pull's threads to stop (they
# notice within one buffer's read; this only bounds a wedged file system).
STOP_WAIT_S = 30.0

PullProgress = ProgressCallback | Literal["tqdm"] | None


class RegistryOptions(TypedDict, total=False):
    """The ``Registry`` settings ``pull`` and ``apull`` pass on (see ``Registry``).

    >>> options: RegistryOptions = {"max_streams": 4, "verify": "chunks"}
    >>> chunkpull.pull("http://127.0.0.1:5000/library/smol", **options)  # doctest: +SKIP
    """

    max_streams: int | None
    verify: VerifyMode | None
    mask: str | None
    limit_rate: int | None
    mirrors: Sequence[str] | None
    credentials: Mapping[str, tuple[str, str]] | None
    ca_cert: str | os.PathLike[str] | None
    platform: str | Platform | None
    tuning: Tuning | None


def _callbacks(progress: PullProgress, tqdm_class: Any) -> tuple[ProgressCallback | None, TqdmProgress | None]:
    """Return (the callback to hand the pull, the bars to close after it)."""
    bars = TqdmProgress(tqdm_class) if tqdm_class is not None or progress == "tqdm" else None
    user = progress if callable(progress) else None
    if progress is not None and not callable(progress) and progress != "tqdm":
        raise ValueError(f"progress={progress!r}: want a callable taking a Progress, 'tqdm', or None")
    if bars is None or user is None:
        return bars or user, bars

    def both(event: Progress) -> None:
        bars(event)
        user(event)

    return both, bars


def pull(
    name: str,
    *,
    models: str | os.PathLike[str] | DiskCache | None = None,
    progress: PullProgress = None,
    tqdm_class: Any = None,
    cancel: threading.Event | None = None,
    **options: Unpack[RegistryOptions],
) -> PullResult:
    """Pull a model into a models directory and return where its files are.

    ``models`` is the directory (``$OLLAMA_MODELS``, else ``~/.ollama/models``).
    ``progress`` is a callback taking each ``Progress`` event (called from
    worker threads: thread-safe, never blocking), or ``"tqdm"`` for one bar
    per layer (``tqdm.auto``; ``pip install 'chunkpull[tqdm]'``); ``tqdm_class``
    picks the bar class instead.  ``cancel``, when set from another thread,
    stops the pull soon after; Ctrl-C sets it (or a private one) too.  Other keywords are
    ``Registry``'s (``max_streams``, ``verify``, ``mirrors``, ``credentials``,
    ``tuning`` ...).

    >>> import chunkpull
    >>> r = chunkpull.pull("http://127.0.0.1:5000/library/smol", models="/tmp/models")  # doctest: +SKIP
    >>> r.model_path, r.fetched_bytes                                                 # doctest: +SKIP
    (PosixPath('/tmp/models/blobs/sha256-0bf3622b362c…'), 8389632)

    Raises:
        InvalidNameError, ModelNotFoundError, RegistryError, TransportError,
        IntegrityError, IncompletePullError, InsufficientSpaceError (all
        ``ChunkpullError``); PullCancelledError when ``cancel`` was set;
        KeyboardInterrupt after Ctrl-C stopped the pull; ValueError for a
        bad setting; ModuleNotFoundError when bars are asked for without tqdm.
    """
    callback, bars = _callbacks(progress, tqdm_class)
    try:
        with Registry(models, **options) as registry:
            return run_cancellable(lambda stop: registry.pull(name, progress=callback, cancel=stop), cancel=cancel)
    finally:
        if bars is not None:
            bars.close()


class AsyncPull:
    """A pull seen from asyncio: ``await`` it for its ``PullResult``, or ``async for`` its progress.

    Iterating yields a ``LayerProgress`` (``digest``, ``total``,
    ``completed``, ``state``) whenever a layer's state or byte count changed,
    layers in announcement order, never going backwards; after the loop,
    ``result`` holds the ``PullResult``.  The pull runs on its own threads,
    so the event loop never blocks.  Cancelling the task that awaits or
    iterates it (or ``aclose()``) stops the pull; breaking out of the loop
    and dropping the object does too, once it is collected.  One consumer
    per AsyncPull.

    >>> async def main() -> None:                                                   # doctest: +SKIP
    ...     pulling = chunkpull.apull("http://127.0.0.1:5000/library/smol", models="/tmp/models")
    ...     async for p in pulling:
    ...         print(p.state, p.digest[7:19], p.completed, p.total)
    ...     print(pulling.result.model_path)
    """

    def __init__(self, start: Callable[[ProgressCallback, threading.Event], PullResult], progress: ProgressCallback | None) -> None:
        self._start = start
        self._user = progress
        self._updates: AsyncGenerator[LayerProgress, None] | None = None
        self._result: PullResult | None = None

    @property
    def result(self) -> PullResult:
        """Return the pull's result, once the iteration (or the await) has ended.

        Raises:
            RuntimeError: the pull has not finished (or failed: the loop raised its error).
        """
        if self._result is None:
            raise RuntimeError("the pull has not finished: iterate over it (async for) or await it first")
        return self._result

    def __aiter__(self) -> AsyncIterator[LayerProgress]:
        if self._updates is None:
            self._updates = self._run()
        return self._updates

    def __await__(self) -> Generator[Any, None, PullResult]:
        return self._wait().__await__()

    async def _wait(self) -> PullResult:
        async for _ in self:
            pass
        return self.result

    async def aclose(self) -> None:
        """Stop the pull if it is still running, and wait for it to stop."""
        if self._updates is not None:
            await self._updates.aclose()

    async def _run(self) -> AsyncGenerator[LayerProgress, None]:
        import asyncio

        loop = asyncio.get_running_loop()
        aggregator = Aggregator()
        cancel = threading.Event()
        changed = asyncio.Event()
        done: asyncio.Future[PullResult] = loop.create_future()
        scheduled = threading.Lock()  # held while a wake-up is on its way to the loop: one at a time

        def wake() -> None:
            scheduled.release()
            changed.set()

        def report(event: Progress) -> None:
            aggregator(event)
            if self._user is not None:
                self._user(event)
            if scheduled.acquire(blocking=False):
                _call_soon(loop, wake)

        def run() -> None:
            try:
                result = self._start(report, cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
                _call_soon(loop, _settle, done, None, exc)
            else:
                _call_soon(loop, _settle, done, result, None)

        threading.Thread(target=run, name="chunkpull-apull", daemon=True).start()
        sent: dict[str, tuple[State, int]] = {}
        try:
            while True:
                finished = done.done()
                for layer in aggregator.layers():
                    if sent.get(layer.digest) != (layer.state, layer.completed):
                        sent[layer.digest] = (layer.state, layer.completed)
                        yield layer
                if finished:
                    break
                waiter = asyncio.ensure_future(changed.wait())
                either: list[asyncio.Future[Any]] = [done, waiter]
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                # Cleared before the next read: an event after it sets it again.
                changed.clear()
            self._result = done.result()
        finally:
            if not done.done():
                cancel.set()
                await asyncio.wait({done}, timeout=STOP_WAIT_S)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: a cancelled pull's PullCancelledError is expected, not "never retrieved"


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop has closed: nobody is listening any more


def _settle(future: asyncio.Future[PullResult], result: PullResult | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def apull(
    name: str,
    *,
    models: str | os.PathLike[str] | DiskCache | None = None,
    progress: PullProgress = None,
    tqdm_class: Any = None,
    **options: Unpack[RegistryOptions],
) -> AsyncPull:
    """Pull a model from asyncio: ``await apull(...)`` returns the ``PullResult``, ``async for`` yields progress.

    Takes what ``pull`` takes (``progress`` callbacks run on the pull's
    threads, not the loop's).  Nothing starts until the result is awaited
    or iterated; settings are checked then.

    >>> result = await chunkpull.apull("http://127.0.0.1:5000/library/smol", models="/tmp/models")  # doctest: +SKIP
    >>> result.model_path                                                                           # doctest: +SKIP
    PosixPath('/tmp/models/blobs/sha256-0bf3622b362c…')

    Raises (when awaited or iterated):
        what ``pull`` raises; asyncio.CancelledError when the task was
        cancelled (the pull has stopped, or STOP_WAIT_S passed).
    """
    callback, bars = _callbacks(progress, tqdm_class)

    def start(report: ProgressCallback, cancel: threading.Event) -> PullResult:
        try:
            with Registry(models, **options) as registry:
                return registry.pull(name, progress=report, cancel=cancel)
        finally:
            if bars is not None:
                bars.close()

    return AsyncPull(start, callback)
