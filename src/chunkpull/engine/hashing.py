"""The one thread that advances every chunked blob's in-order whole-blob hash.

Workers park pieces with the assembler and return to their sockets; this
thread drains each active blob's parked pieces into its SHA-256 in byte
order (``BlobAssembler.drain``), woken whenever a piece lands.  A blob whose
hash fails is handed to ``on_error`` and dropped from the loop.  When the
piece pool runs dry, ``spill()`` frees parked pieces (``BlobAssembler.spill``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .blob import BlobPull

__all__ = ["HashThread"]


class HashThread:
    """Started on the first blob; ``stop()`` ends it once the pull is over."""

    def __init__(self, on_error: Callable[[BlobPull, BaseException], None]) -> None:
        self.on_error = on_error
        self.wakeup = threading.Event()
        self._blobs: list[BlobPull] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, blob: BlobPull) -> None:
        with self._lock:
            self._blobs.append(blob)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="chunkpull-hash", daemon=True)
                self._thread.start()

    def remove(self, blob: BlobPull) -> None:
        with self._lock:
            if blob in self._blobs:
                self._blobs.remove(blob)

    def spill(self) -> bool:
        """The piece pool ran dry: have one blob give back the parked pieces of its chunk farthest ahead of its hash."""
        with self._lock:
            blobs = list(self._blobs)
        return any(blob.assembler.spill() for blob in blobs)

    def _loop(self) -> None:
        while True:
            self.wakeup.wait(0.05)
            self.wakeup.clear()
            with self._lock:
                blobs = list(self._blobs)
                if self._thread is None:
                    return
            for blob in blobs:
                try:
                    blob.assembler.drain()
                except BaseException as err:  # noqa: BLE001 - fails that blob only
                    self.remove(blob)
                    self.on_error(blob, err)

    def stop(self) -> None:
        with self._lock:
            t, self._thread = self._thread, None
        if t is not None:
            self.wakeup.set()
            t.join()
