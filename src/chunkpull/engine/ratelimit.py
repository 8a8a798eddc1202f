"""A process-wide bandwidth cap (``--limit-rate``): one token bucket shared by every stream and source.

``RateLimiter(rate_bps).take(n, cancel)`` blocks until n more bytes fit
under the rate.  The bucket holds at most ``burst_s`` seconds of tokens, so
an idle period does not turn into a burst above the cap; waits are sliced so
that cancelling (Ctrl-C) is honoured within a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

WAIT_SLICE_S = 0.05


class RateLimiter:
    """Admit bytes at ``rate_bps`` on average (thread-safe)."""

    def __init__(self, rate_bps: int, *, burst_s: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bps <= 0:
            raise ValueError("rate_bps must be positive")
        self.rate_bps = rate_bps
        self.capacity = max(1.0, rate_bps * burst_s)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, n: int, cancel: threading.Event | None = None) -> None:
        """Wait until n bytes may pass (they are debited at once: a read may not be undone)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_bps)
            self._at = now
            self._tokens -= n
            wait = -self._tokens / self.rate_bps if self._tokens < 0 else 0.0
        while wait > 0:
            if cancel is not None and cancel.is_set():
                return
            step = min(wait, WAIT_SLICE_S)
            self._sleep(step)
            wait -= step
