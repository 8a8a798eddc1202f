"""``TqdmProgress``: a pull's progress as one tqdm bar per layer, in terminals and notebooks.

A progress callback like any other (``Registry.pull(progress=TqdmProgress())``,
or ``chunkpull.pull(name, progress="tqdm")``), so no user writes the adapter
from byte deltas to bars.  tqdm is an optional dependency
(``pip install 'chunkpull[tqdm]'``), imported only when a bar is asked for;
``tqdm.auto`` picks widgets in Jupyter and text elsewhere.  The CLI does not
use this: its own display (``display.py``) keeps a plain mode for logs.

Imports core only.
"""

from __future__ import annotations

import threading
from typing import Any

from .core.progress import BYTES, CACHED, DONE, ERROR, RESUMED, VERIFYING, Progress

__all__ = ["TqdmProgress", "tqdm_auto"]


def tqdm_auto() -> Any:
    """Return ``tqdm.auto.tqdm`` (widgets in notebooks, text in terminals).

    Raises:
        ModuleNotFoundError: tqdm is not installed (the message says how to get it).
    """
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("progress bars need tqdm: pip install 'chunkpull[tqdm]' (or pip install tqdm)", name="tqdm") from err
    return tqdm


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


class TqdmProgress:
    """A thread-safe progress callback that draws one tqdm bar per layer.

    ``tqdm_class`` is ``tqdm.tqdm``, ``tqdm.notebook.tqdm``, ``tqdm.rich.tqdm``
    or any class taking tqdm's keywords (default: ``tqdm.auto.tqdm``);
    ``tqdm_kwargs`` go to every bar (``position``, ``file``, ``disable`` ...).
    Bars read ``pulling <hex12>`` (``cached <hex12>`` for blobs already
    there) in bytes, and close when their layer is done; ``close()`` closes
    any still open (a failed or cancelled pull).

    >>> from tqdm import tqdm                                                         # doctest: +SKIP
    >>> bars = TqdmProgress(tqdm)                                                     # doctest: +SKIP
    >>> with Registry("/tmp/models") as registry:                                     # doctest: +SKIP
    ...     registry.pull("http://127.0.0.1:5000/library/smol", progress=bars)
    pulling 0bf3622b362c: 100%|██████████| 8.00M/8.00M [00:00<00:00, 95.1MB/s]
    """

    def __init__(self, tqdm_class: Any = None, **tqdm_kwargs: Any) -> None:
        self._tqdm = tqdm_class if tqdm_class is not None else tqdm_auto()
        self._kwargs = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "leave": True, **tqdm_kwargs}
        self._bars: dict[str, Any] = {}
        self._closed: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, event: Progress) -> None:
        # tqdm bars are not meant to be updated from several threads at once.
        with self._lock:
            if event.digest in self._closed:
                return
            bar = self._bars.get(event.digest)
            if bar is None:
                # A cached blob's bar starts full: one line, and no absurd rate for bytes that never moved.
                cached = event.state == CACHED
                bar = self._bars[event.digest] = self._tqdm(
                    total=event.total, initial=event.total if cached else 0,
                    desc=f"{'cached' if cached else 'pulling'} {_short(event.digest)}", **self._kwargs,
                )
            if event.state in (BYTES, RESUMED):
                bar.update(max(0, min(event.n, event.total - bar.n)))
            elif event.state == VERIFYING:
                bar.set_description(f"verifying {_short(event.digest)}", refresh=False)
            elif event.state in (CACHED, DONE):
                bar.set_description(("cached " if event.state == CACHED else "pulled ") + _short(event.digest), refresh=False)
                bar.update(event.total - bar.n)
                self._close(event.digest)
            elif event.state == ERROR:
                self._close(event.digest)

    def _close(self, digest: str) -> None:
        self._closed.add(digest)
        self._bars.pop(digest).close()

    def close(self) -> None:
        """Close every bar still open; idempotent.  The instance may then draw another pull."""
        with self._lock:
            for digest in list(self._bars):
                self._close(digest)
            self._closed.clear()
