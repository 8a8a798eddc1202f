"""Backend facade: pick the native kernels or their pure-Python twin.

``CHUNKPULL_BACKEND`` chooses, read once at first import:
  auto    (default) the native extension; if it is not built, the Python
          twin with a one-time warning;
  native  the extension or ImportError (CI uses this so a broken build
          cannot pass silently);
  python  the Python twin.
``BACKEND`` says which one is in use.  ``RunningSha256`` wraps a running
whole-blob hash whose state can be checkpointed (persistably on native).
"""

from __future__ import annotations

import errno
import os
import warnings
from typing import TYPE_CHECKING

from . import _env

__all__ = [
    "BACKEND",
    "RunningSha256",
    "SHA256_STATE_FORMAT",
    "blake3",
    "pwrite_all",
    "recv_full",
    "sha256",
    "start_writeback",
]


def _load():
    choice = _env.backend()
    if choice == "python":
        from . import _fallback

        return "python", _fallback
    try:
        from . import _native
    except ImportError as err:
        if choice == "native":
            raise ImportError(
                f"CHUNKPULL_BACKEND=native but the extension chunkpull._native is not built ({err}); "
                "reinstall with a C compiler and OpenSSL headers (libssl-dev)"
            ) from err
        warnings.warn(
            f"chunkpull: native extension unavailable ({err}); using the slower pure-Python backend",
            RuntimeWarning,
            stacklevel=3,
        )
        from . import _fallback

        return "python", _fallback
    return "native", _native


if TYPE_CHECKING:
    from . import _fallback as _impl

    BACKEND: str
else:
    BACKEND, _impl = _load()

sha256 = _impl.sha256
blake3 = _impl.blake3
pwrite_all = _impl.pwrite_all
start_writeback = _impl.start_writeback
# Receive from a plain socket until a buffer is full (the native loop runs without the GIL).
recv_full = _impl.recv_full
# The format of persistable SHA-256 states ("" when the backend has none).
SHA256_STATE_FORMAT = _impl.SHA256_STATE_FORMAT


def feed_from_file(update, fd: int, offset: int, n: int, buf: memoryview) -> None:
    """Call update(view) over n bytes of fd from offset, read in len(buf) pieces.

    Raises:
        OSError: EIO when the file ends early.
    """
    while n > 0:
        got = os.preadv(fd, [buf[: min(n, len(buf))]], offset)
        if got <= 0:
            raise OSError(errno.EIO, f"file ends before offset {offset + n}")
        update(buf[:got])
        offset += got
        n -= got


class RunningSha256:
    """An in-order SHA-256 over a stream of buffers; not thread-safe.

    ``checkpoint()`` returns the state as bytes that ``RunningSha256(state)``
    resumes from, or None when the backend cannot persist states (python).
    """

    __slots__ = ("_state", "length")

    def __init__(self, state: bytes | None = None, length: int = 0) -> None:
        if state is None:
            self._state = _impl.sha256_init()
            self.length = 0
        else:
            if BACKEND != "native" or len(state) != _impl.SHA256_STATE_SIZE:
                raise ValueError("sha256 checkpoint does not fit this backend")
            self._state = bytearray(state)
            self.length = length

    def update(self, data) -> None:
        _impl.sha256_update(self._state, data)
        self.length += len(data)

    def update_pwrite(self, fd: int, data, offset: int) -> None:
        """Write data at offset and hash it, in one pass over the bytes."""
        _impl.sha256_update_pwrite(self._state, fd, data, offset)
        self.length += len(data)

    def digest(self) -> bytes:
        return _impl.sha256_final(self._state)

    def checkpoint(self) -> bytes | None:
        return bytes(self._state) if BACKEND == "native" else None

    def update_from_file(self, fd: int, offset: int, n: int, buf: memoryview) -> None:
        """Hash n bytes of fd from offset, read through buf (reused by the caller)."""
        feed_from_file(self.update, fd, offset, n, buf)

    def snapshot(self) -> object:
        """Return an opaque in-memory copy of this hash's state."""
        if BACKEND == "native":
            return (bytes(self._state), self.length)
        return (self._state.copy(), self.length)

    @classmethod
    def from_snapshot(cls, snap: object) -> RunningSha256:
        state, length = snap
        h = cls.__new__(cls)
        h._state = bytearray(state) if isinstance(state, bytes) else state.copy()
        h.length = length
        return h

    @staticmethod
    def persistable(snap: object) -> tuple[int, bytes | None]:
        """Return (length, bytes) for a snapshot that can go to disk, else (0, None)."""
        if snap is None or not isinstance(snap[0], bytes):
            return 0, None
        return snap[1], snap[0]
