"""Adaptive streams (engine.adaptive): the controller on replayed throughput curves, the gate, the pieces that follow."""

from __future__ import annotations

import threading
import time

import pytest

from chunkpull.engine.adaptive import StreamController, StreamGate, Streams
from chunkpull.engine.pieces import PiecePool, pieces_for
from chunkpull.errors import PullCancelledError

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drive(curve, *, start: int = 8, high: int = 64, windows: int = 40) -> tuple[StreamGate, StreamController]:
    """Run the controller over a throughput curve rate(limit) (bytes/s), with every permit busy and work waiting."""
    clock = Clock()
    gate = StreamGate(start)
    ctl = StreamController(gate, high=high, window_s=0.5, clock=clock)
    total = 0.0
    for _ in range(windows * 5):
        gate.active, gate.waiting = gate.limit, 1  # saturated: as many streams as allowed, more work queued
        ctl.tick(int(total))
        clock.now += 0.1
        total += curve(gate.limit) * 0.1
    return gate, ctl


def test_grows_while_each_stream_adds_throughput_up_to_the_link():
    # 10 MB/s per connection on a 125 MB/s link: 8 streams reach 80 MB/s, 12 about fill it.
    gate, ctl = _drive(lambda n: min(10e6 * n, 125e6))
    limits = [limit for _t, limit, _r in ctl.history]
    # 12 pays; 18 is flat (a few per cent more), kept once; 27 is flat again and is stepped back from.
    assert limits[1] == 12 and limits[-1] == 18 and set(limits[3:]) <= {18, 27} and limits.count(18) > 0.7 * len(limits), limits


def test_keeps_one_flat_growth_but_does_not_creep():
    gate, ctl = _drive(lambda n: 900e6 * (1 + 0.01 * min(n, 12)))  # +1 % per stream up to 12: under the gain
    limits = [limit for _t, limit, _r in ctl.history]
    assert gate.limit == 12 and max(limits) == 18, limits


def test_does_not_creep_up_when_more_streams_do_not_pay():
    # Loopback: CPU-bound, the count makes no difference: one flat step is kept, no more.
    gate, ctl = _drive(lambda n: 900e6)
    assert gate.limit == 12 and max(limit for _t, limit, _r in ctl.history) <= 18, ctl.history


def test_steps_back_when_more_streams_cost_throughput():
    gate, _ctl = _drive(lambda n: 500e6 if n <= 8 else 300e6)
    assert gate.limit == 8


def test_stays_within_its_bounds():
    gate, _ctl = _drive(lambda n: 1e6 * n, high=20)
    assert gate.limit == 20


def test_does_not_grow_without_waiting_work():
    clock = Clock()
    gate = StreamGate(8)
    ctl = StreamController(gate, window_s=0.5, clock=clock)
    total = 0
    for _ in range(50):
        gate.active, gate.waiting = 3, 0  # only three chunks left: nothing to grow for
        ctl.tick(total)
        clock.now += 0.1
        total += 10**6
    assert gate.limit == 8


def test_wake_all_lets_cancelled_waiters_leave_before_their_poll():
    gate = StreamGate(1)
    assert gate.acquire()
    cancel = threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(cancel, poll_s=600.0)))
    waiter.start()
    while not gate.waiting:
        time.sleep(0.001)
    cancel.set()
    gate.wake_all()
    waiter.join(30)  # without the wake-up it would sleep for its 600 s poll
    assert not waiter.is_alive() and got == [False]
    assert gate.waiting == 0


def test_gate_blocks_at_its_limit_and_honours_cancel():
    gate = StreamGate(1)
    assert gate.acquire()
    cancel = threading.Event()
    cancel.set()
    assert gate.acquire(cancel, poll_s=0.01) is False
    gate.release()
    assert gate.acquire(cancel)  # a free permit is taken even when cancelled: the caller checks cancel itself
    gate.release()
    s = Streams(4, adaptive=False, memory_budget=32 * MIB, clock=Clock())
    s.gate.acquire()
    s.gate.acquire()
    s.gate.acquire()
    s.gate.acquire()
    with pytest.raises(PullCancelledError), s.slot(cancel):
        pass


def test_raising_the_limit_wakes_a_waiter():
    gate = StreamGate(1)
    gate.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(gate.acquire()))
    t.start()
    gate.set_limit(2)
    t.join(10)
    assert got == [True]


def test_pieces_follow_the_stream_count_within_the_cap():
    # A chunk per stream plus one to read into, at least 32 MiB, at most the budget.
    assert pieces_for(8, 8 * MIB, 4 * MIB, 128 * MIB) == 24
    assert pieces_for(2, 8 * MIB, 4 * MIB, 128 * MIB) == 8  # the 32 MiB floor
    assert pieces_for(64, 8 * MIB, 4 * MIB, 128 * MIB) == 66  # streams + 2 beats the cap: every stream can read
    pool = PiecePool(32, 4096)
    pool.allow(3)
    taken = [pool.acquire(), pool.acquire()]
    with pytest.raises(PullCancelledError):
        pool.acquire(cancel=_set(), poll_s=0.01)  # the allowance is out, bar the reserve
    assert pool.acquire(priority=lambda: True)  # the piece the hash waits for is always had
    for p in taken:
        p.release()


def _set() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


def test_pool_asks_for_parked_pieces_back_instead_of_waiting_on_the_hash():
    pool = PiecePool(3, 4096)
    pool.set_reserve(1)
    held = [pool.acquire(), pool.acquire()]  # the last one is the reserve: only the hash's next chunk may take it
    asked = []

    def reclaim() -> bool:
        asked.append(1)
        held.pop().release()  # what a spill does: a parked piece goes back
        return True

    pool.reclaim = reclaim
    got = pool.acquire(cancel=threading.Event())
    assert asked == [1], "the pool asks once, after a short wait"
    assert got is not None


def test_pool_without_anything_to_reclaim_waits_and_honours_cancel():
    pool = PiecePool(2, 4096)
    pool.set_reserve(1)
    pool.acquire()
    pool.reclaim = lambda: False
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(PullCancelledError):
        pool.acquire(cancel=cancel, poll_s=0.05)


def test_gate_serves_waiters_in_arrival_order():
    """A chunk must not be overtaken at the gate: the blob's in-order hash would wait on it."""
    gate = StreamGate(1)
    assert gate.acquire()
    order: list[int] = []
    threads = []
    for n in range(5):
        t = threading.Thread(target=lambda n=n: (gate.acquire(poll_s=0.001), order.append(n), gate.release()))
        t.start()
        threads.append(t)
        while gate.waiting < n + 1:  # queued in this order
            threading.Event().wait(0.001)
    gate.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_chunks_ahead_lets_every_stream_park_a_whole_chunk_when_the_allowance_covers_it():
    """At 8 streams of 8-piece chunks, chunks next..next+7 stream while a worker starts next+8 before the hash has
    left chunk next: with pieces for all of them (pieces_for's want), none is sent to the disk to be read back."""

    pool = PiecePool(80, 4096)
    pool.streams, pool.headroom, pool.reserve = 8, 8, 1
    pool.allow(pieces_for(8, 8 * 4096, 4096, 80 * 4096, floor=0))
    assert pool.allowance == 72
    assert pool.chunks_ahead() == 8
    pool.allow(32)  # the memory budget allows less: fewer chunks park
    assert pool.chunks_ahead() == 3
