"""Aggregator.wait and touch: the version a stream waits on moves with every event and every touch()."""

from __future__ import annotations

import threading

from chunkpull.core.progress import BYTES, START, Aggregator, Progress


def test_events_and_touch_move_the_version():
    agg = Aggregator(clock=lambda: 0.0)
    v0 = agg.wait(-1, 0)  # a version other than the current one returns at once
    agg(Progress("sha256:aa", 10, START))
    v1 = agg.wait(v0, 0)
    assert v1 != v0, "an event must move the version"
    agg.touch()
    v2 = agg.wait(v1, 0)
    assert v2 != v1, "touch() must move the version"
    assert agg.wait(v2, 0) == v2, "nothing happened: the version stays"
    assert [(l.digest, l.completed) for l in agg.layers()] == [("sha256:aa", 0)], "touch() changes no figures"


def test_touch_wakes_a_waiter():
    agg = Aggregator(clock=lambda: 0.0)
    agg(Progress("sha256:aa", 10, BYTES, n=3))
    seen = agg.wait(-1, 0)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(agg.wait(seen, 60)))
    waiter.start()
    agg.touch()
    waiter.join(60)
    assert got and got[0] != seen, f"wait({seen}) = {got}, want a newer version"
