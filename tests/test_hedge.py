"""RangeRace: two streams of one range merged so each byte is taken once, in order, at its own offset.

And the monitor's side: in the tail, a straggling stream with a hedge is
raced, not cut, and never judged straggling again.
"""

from __future__ import annotations

import random
import threading

import pytest
from conftest import FakeClock, FakeResp

from chunkpull.engine.hedge import LOST, RaceLost, RangeRace
from chunkpull.engine.monitor import StreamMonitor

DATA = bytes(random.Random(7).randrange(256) for _ in range(64 << 10))


class _Sink:
    """What the chunk does with bytes the race took: records (offset, bytes, aligned) and counts releases."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, bytes, bool]] = []
        self.released = 0

    def accept(self, offset: int, view: memoryview, release, aligned: bool) -> None:
        self.taken.append((offset, bytes(view), aligned))
        release()

    def release(self) -> None:
        self.released += 1

    def joined(self) -> bytes:
        pos, out = 0, b""
        for offset, data, _aligned in self.taken:
            assert offset == pos, f"bytes taken out of order: {offset} after {pos}"
            out += data
            pos += len(data)
        return out


class _Stream:
    def __init__(self) -> None:
        self.cut: list[str] = []

    def abort(self, reason: str) -> bool:
        self.cut.append(reason)
        return True


def _racers(race: RangeRace, n: int = 2):
    out = []
    for _ in range(n):
        r = race.racer()
        r.stream = _Stream()
        out.append(r)
    return out


def _offer(race, racer, sink, start, end):
    race.offer(racer, start, memoryview(DATA)[start:end], sink.release, True)


def test_bytes_behind_the_cursor_are_dropped_and_the_first_to_the_end_wins():
    sink = _Sink()
    race = RangeRace(0, 16383, sink.accept)
    owner, hedge = _racers(race)
    _offer(race, owner, sink, 0, 4096)
    _offer(race, hedge, sink, 4096, 8192)  # the hedge started at the cursor
    _offer(race, owner, sink, 4096, 8192)  # the owner brings the same bytes later: nothing new
    assert [t[0] for t in sink.taken] == [0, 4096] and race.wasted == 4096
    _offer(race, hedge, sink, 8192, 16384)
    assert race.done and race.winner is hedge
    assert sink.joined() == DATA[:16384]
    assert owner.stream.cut == [LOST] and hedge.stream.cut == [], "the loser is cut, the winner left to finish its response"
    assert sink.released == 4, "every piece is released once, taken or not"
    with pytest.raises(RaceLost):
        _offer(race, owner, sink, 8192, 12288)
    assert sink.released == 5


def test_a_piece_straddling_the_cursor_gives_only_its_new_part_aligned_only_on_a_page():
    sink = _Sink()
    race = RangeRace(0, 20000, sink.accept)
    owner, hedge = _racers(race)
    _offer(race, owner, sink, 0, 100)
    _offer(race, hedge, sink, 50, 4196)  # started at 50, overlaps the cursor at 100
    assert sink.taken[-1][:1] == (100,) and sink.taken[-1][2] is False, "a view starting off the page cannot go out with O_DIRECT"
    _offer(race, owner, sink, 100, 8292)  # owner is behind again until 4196
    # A skip of 4096 keeps the buffer on a page (the write checks the file offset itself).
    assert sink.taken[-1][0] == 4196 and sink.taken[-1][2] is True
    race2 = RangeRace(0, 20000, (sink2 := _Sink()).accept)
    a, b = _racers(race2)
    _offer(race2, a, sink2, 0, 8192)
    _offer(race2, b, sink2, 4096, 12288)
    assert sink2.taken[-1] == (8192, DATA[8192:12288], True), "a skip of whole pages keeps the piece aligned"


def test_random_interleavings_take_every_byte_once_in_order():
    rng = random.Random(11)
    for _ in range(200):
        end = rng.randrange(1, len(DATA))
        sink = _Sink()
        race = RangeRace(0, end - 1, sink.accept)
        racers = _racers(race, rng.randrange(2, 4))
        pos = {r: 0 for r in racers}
        started = {racers[0]}  # the owner from 0; hedges start at the cursor when they join
        while not race.done:
            r = rng.choice(racers)
            if r not in started:
                started.add(r)
                pos[r] = race.cursor
            n = min(rng.randrange(1, 9000), end - pos[r])
            if n <= 0:
                continue
            _offer(race, r, sink, pos[r], pos[r] + n)
            pos[r] += n
        assert sink.joined() == DATA[:end]
        assert sum(r.taken for r in racers) == end


def test_a_failing_accept_leaves_the_cursor_where_it_was():
    calls = []

    def accept(offset, view, release, aligned):
        calls.append(offset)
        release()
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    race = RangeRace(0, 8191, accept)
    owner, hedge = _racers(race)
    race.offer(owner, 0, memoryview(DATA)[:4096], lambda: None, True)
    with pytest.raises(OSError):
        race.offer(hedge, 4096, memoryview(DATA)[4096:8192], lambda: None, True)
    assert race.cursor == 4096 and not race.done, "bytes that were not written are not counted in"
    race.offer(owner, 4096, memoryview(DATA)[4096:8192], lambda: None, True)
    assert race.done and race.winner is owner


def test_closing_the_race_cuts_the_hedges_and_wakes_their_waits():
    race = RangeRace(0, 99, _Sink().accept)
    owner, hedge = _racers(race)
    assert not race.over.is_set()
    race.close()
    assert race.over.is_set() and race.done
    assert hedge.stream.cut == [LOST] and owner.stream.cut == [], "the owner closes its own race: only the hedges are cut"


def test_offers_from_many_threads_stay_in_order():
    sink = _Sink()
    end = len(DATA)
    race = RangeRace(0, end - 1, sink.accept)
    racers = _racers(race, 4)

    def run(r, step):
        pos = 0
        while pos < end and not race.done:
            try:
                _offer(race, r, sink, pos, min(end, pos + step))
            except RaceLost:
                return
            pos += step

    threads = [threading.Thread(target=run, args=(r, 1000 + 700 * k)) for k, r in enumerate(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sink.joined() == DATA


# -- the monitor: hedge in the tail instead of cutting ----------------------


def _tail_with_a_straggler(hedge):
    clock = FakeClock()
    m = StreamMonitor(stall_s=100.0, min_age_s=0.5, clock=clock)
    m.tail = True
    fast = []
    for k in range(3):
        s = m.stream(f"fast{k}")
        s.attach(FakeResp())
        fast.append(s)
    slow = m.stream("slow")
    conn = FakeResp()
    slow.attach(conn)
    slow.hedge = hedge

    def second():
        clock.t += 1.0
        for f in fast:
            f.advance(40 << 20)
        slow.advance(1 << 20)  # a fortieth of its peers' rate

    return m, slow, conn, second


def test_in_the_tail_a_straggler_with_a_hedge_is_raced_not_cut():
    calls = []
    m, slow, conn, second = _tail_with_a_straggler(lambda: calls.append(1) or True)
    second()
    assert m.check() == [] and not conn.sock.shut
    assert calls == [1] and slow.racing and m.hedged == 1
    for _ in range(3):
        second()
        assert m.check() == [] and not conn.sock.shut, "a racing stream is never cut for straggling"
    assert calls == [1], "one hedge per stream"


def test_a_hedge_that_cannot_start_falls_back_to_the_cut():
    m, slow, conn, second = _tail_with_a_straggler(lambda: False)
    second()
    assert m.check() == [slow] and conn.sock.shut and m.hedged == 0


def test_mid_pull_a_straggler_is_cut_even_with_a_hedge():
    # Before the tail other chunks wait for a stream: a fresh connection for
    # the rest of this range is what a cut gives, without two streams on it.
    calls = []
    m, slow, conn, second = _tail_with_a_straggler(lambda: calls.append(1) or True)
    m.tail = False
    second()
    second()
    assert m.check() == [slow] and calls == []


def test_settling_holds_no_hedge_back_in_the_tail():
    # Right after a growth, new streams are not judged straggling, so they are
    # not cut; but in the tail a hedge cuts nothing, and the end would wait.
    calls = []
    m, slow, conn, second = _tail_with_a_straggler(lambda: calls.append(1) or True)
    m.settle(10.0)
    second()
    assert m.check() == [] and calls == [1] and not conn.sock.shut
    m2, slow2, conn2, second2 = _tail_with_a_straggler(None)
    m2.settle(10.0)
    second2()
    assert m2.check() == [] and not conn2.sock.shut, "without a hedge, settling still spares it"
