"""The bandwidth cap's token bucket, on a fake clock."""

from __future__ import annotations

import threading

import pytest

from chunkpull.engine.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_average_rate_is_the_cap():
    t = FakeTime()
    lim = RateLimiter(1000, burst_s=0.1, clock=t.clock, sleep=t.sleep)
    for _ in range(100):
        lim.take(100)
    # 10,000 bytes at 1,000 B/s, less the 100-byte burst allowance.
    assert t.now == pytest.approx(9.9, rel=0.01)


def test_idle_time_does_not_become_a_burst():
    t = FakeTime()
    lim = RateLimiter(1000, burst_s=0.1, clock=t.clock, sleep=t.sleep)
    t.now += 100.0  # idle for a long time
    start = t.now
    lim.take(1100)
    assert t.now - start == pytest.approx(1.0, rel=0.01)  # only 0.1 s worth was saved up


def test_cancel_ends_the_wait():
    t = FakeTime()
    cancel = threading.Event()
    cancel.set()
    lim = RateLimiter(10, clock=t.clock, sleep=t.sleep)
    lim.take(10**6, cancel)
    assert t.now < 0.1


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)
