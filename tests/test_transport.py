"""Transport: error bodies, RegistryError text, backoff, retries and ranged reads over real sockets."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from conftest import FakeClock, FakeResp

from chunkpull.errors import PullCancelledError, RegistryError, TransportError
from chunkpull.engine.transport import Backoff, RangeIgnoredError, ShortReadError, Transport, parse_error

URL = "https://example.com/v2/library/BOOM/manifests/latest"


def _json(doc) -> bytes:
    return json.dumps(doc).encode()


# -- error bodies -------------------------------------------------------------

PARSE_ERROR = [
    pytest.param(_json({"code": "UNAUTHORIZED", "error": "go away"}), "UNAUTHORIZED", "go away", id="single"),
    pytest.param(_json({"error": "boom"}), "", "boom", id="single-without-code"),
    pytest.param(_json({"code": "DENIED"}), "DENIED", "", id="single-without-message"),
    pytest.param(
        _json({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}),
        "MANIFEST_UNKNOWN", "manifest unknown", id="multiple-one",
    ),
    pytest.param(
        _json({"errors": [{"code": "FIRST", "message": "first"}, {"code": "SECOND", "message": "second"}]}),
        "FIRST", "first", id="multiple-first-counts",
    ),
    pytest.param(_json({"errors": [{"code": "manifest_unknown", "message": "x"}]}), "manifest_unknown", "x", id="lowercase-code-kept"),
    pytest.param(b"boom", "", "boom", id="raw-text"),
    pytest.param(b"  boom\n", "", "boom", id="raw-text-trimmed"),
    pytest.param(b"<html>502 Bad Gateway</html>", "", "<html>502 Bad Gateway</html>", id="raw-html"),
    pytest.param(b"", "", "", id="empty"),
    pytest.param(b'{"foo": 1}', "", '{"foo": 1}', id="json-other-object-is-raw"),
    pytest.param(b'{"errors": []}', "", '{"errors": []}', id="empty-errors-list-is-raw"),
    pytest.param(b"[1, 2]", "", "[1, 2]", id="json-list-is-raw"),
    pytest.param(b"null", "", "null", id="json-null-is-raw"),
    pytest.param(b'{"code": "X", "error', "", '{"code": "X", "error', id="truncated-json-is-raw"),
]


@pytest.mark.parametrize("body, want_code, want_message", PARSE_ERROR)
def test_parse_error(body, want_code, want_message):
    err = parse_error(418, body, URL)
    got = (err.status, err.code, err.message, err.url)
    want = (418, want_code, want_message, URL)
    assert got == want, f"parse_error(418, {body!r}) = {got!r}, want {want!r}"


def test_parse_error_binary_body():
    err = parse_error(500, b"\xff\xfeboom", URL)
    assert "boom" in err.message


def test_parse_error_caps_message():
    err = parse_error(500, b"x" * 100_000, URL)
    assert len(err.message) <= 1000


REGISTRY_ERROR_TEXT = [
    pytest.param(
        RegistryError(999, "", "boom", URL),
        f"request error {URL}: registry responded with status 999: boom",
        "registry responded with status 999: boom",
        id="raw-message",
    ),
    pytest.param(
        RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown", URL),
        f"request error {URL}: registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown",
        "registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown",
        id="with-code",
    ),
    pytest.param(
        RegistryError(500, "", "", URL),
        f"request error {URL}: registry responded with status 500",
        "registry responded with status 500",
        id="no-body",
    ),
    pytest.param(
        RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown"),
        "registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown",
        "registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown",
        id="no-url",
    ),
]


@pytest.mark.parametrize("err, want_str, want_detail", REGISTRY_ERROR_TEXT)
def test_registry_error_text(err, want_str, want_detail):
    assert str(err) == want_str, f"str(err) = {str(err)!r}, want {want_str!r}"
    assert err.detail == want_detail, f"err.detail = {err.detail!r}, want {want_detail!r}"


def test_parse_error_message_round_trip():
    err = parse_error(999, b"boom", URL)
    assert str(err) == f"request error {URL}: registry responded with status 999: boom"
    err = parse_error(404, _json({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}), URL)
    assert err.detail == "registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown"


@pytest.mark.parametrize(
    "status, want",
    [(500, True), (502, True), (503, True), (504, True), (599, True), (999, True), (429, True),
     (400, False), (401, False), (403, False), (404, False), (405, False), (416, False), (499, False)],
    ids=str,
)
def test_retryable(status, want):
    got = RegistryError(status).retryable
    assert got is want, f"RegistryError({status}).retryable = {got}, want {want}"


# -- backoff ------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(1, 12))
@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999999])
def test_backoff_bounded_with_jitter(attempt, jitter):
    b = Backoff(attempts=12, base_s=0.010, cap_s=2.0)
    base = min(2.0, attempt * attempt * 0.010)
    got = b.delay_s(attempt, lambda: jitter)
    want = base * (0.5 + jitter)
    assert got == pytest.approx(want), f"delay_s({attempt}, jitter={jitter}) = {got}, want {want}"
    assert 0.5 * base <= got < 1.5 * base + 1e-12
    assert got <= 1.5 * b.cap_s


def test_backoff_grows_then_caps():
    b = Backoff(attempts=100, base_s=0.010, cap_s=0.5)
    mids = [b.delay_s(n, lambda: 0.5) for n in range(1, 20)]
    assert mids == sorted(mids), f"delays at mid jitter are not monotone: {mids}"
    assert mids[-1] == pytest.approx(0.5), f"delay at attempt 19 = {mids[-1]}, want the cap 0.5"


def test_backoff_jitter_varies():
    import random

    rng = random.Random(1)
    delays = {Backoff().delay_s(3, rng.random) for _ in range(20)}
    assert len(delays) > 1, "jitter produced identical delays"


# -- retries against the test registry ---------------------------------------


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def transport(attempts: int = 4, **kw) -> tuple[Transport, Sleeps]:
    sleeps = Sleeps()
    t = Transport(max_streams=2, backoff=Backoff(attempts=attempts), sleep=sleeps, timeout_s=(5.0, 10.0), **kw)
    return t, sleeps


@pytest.fixture
def served(upstream):
    """A running TestRegistry with one 300 KB single-layer model; yields (upstream, blob URL, bytes)."""
    up = upstream([300_000], config=False)
    layer = json.loads(up.manifest())["layers"][0]["digest"]
    return up, f"{up.url}/v2/library/smol/blobs/{layer}", up.blob(layer)


def test_retry_gives_up_after_attempts(served):
    up, url, _ = served
    up.faults.status_times = {500: 100}
    t, sleeps = transport(attempts=3)
    with pytest.raises(RegistryError) as info:
        t.get(url)
    assert info.value.status == 500
    assert up.stats.requests["blob"] == 3, f"blob requests = {up.stats.requests['blob']}, want 3 (bounded attempts)"
    assert len(sleeps) == 2, f"slept {sleeps}, want 2 backoff waits between 3 attempts"
    assert all(s > 0 for s in sleeps)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retry_succeeds_when_transient(served, status):
    up, url, data = served
    up.faults.status_times = {status: 2}
    t, sleeps = transport(attempts=4)
    r = t.get(url)
    assert r.status == 200 and r.body == data
    assert up.stats.requests["blob"] == 3, f"blob requests = {up.stats.requests['blob']}, want 3"
    assert len(sleeps) == 2


def test_retry_uses_injected_sleep_with_cancel_event(served):
    """A cancel event must not bypass the injected sleep (tests would wait for real)."""
    up, url, data = served
    up.faults.status_times = {500: 2}
    t, sleeps = transport(attempts=4)
    r = t.get(url, cancel=threading.Event())
    assert r.body == data
    assert len(sleeps) == 2, f"injected sleep called {len(sleeps)} times, want 2"


def test_retry_cancelled(served):
    up, url, _ = served
    up.faults.status_times = {500: 100}
    t, _ = transport(attempts=10)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PullCancelledError, match="cancelled"):
        t.get(url, cancel=cancel)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_4xx_not_retried(served, status):
    up, url, _ = served
    up.faults.status_times = {status: 100}
    t, sleeps = transport(attempts=5)
    with pytest.raises(RegistryError) as info:
        t.get(url)
    assert info.value.status == status
    assert up.stats.requests["blob"] == 1, f"blob requests = {up.stats.requests['blob']}, want 1 (4xx is final)"
    assert sleeps == []


def test_404_unknown_not_retried(served):
    up, _, _ = served
    url = f"{up.url}/v2/library/smol/manifests/nope"
    t, _ = transport(attempts=5)
    with pytest.raises(RegistryError) as info:
        t.get(url)
    assert (info.value.status, info.value.code) == (404, "MANIFEST_UNKNOWN")
    assert str(info.value) == f"request error {url}: registry responded with status 404: code MANIFEST_UNKNOWN: manifest unknown"
    assert up.stats.requests["manifest"] == 1


def test_ok_statuses_returned(served):
    up, _, _ = served
    url = f"{up.url}/v2/library/smol/manifests/nope"
    t, _ = transport()
    r = t.get(url, ok=(200, 404))
    assert r.status == 404


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connection_refused():
    url = f"http://127.0.0.1:{_closed_port()}/v2/library/smol/manifests/latest"
    t, sleeps = transport(attempts=3)
    with pytest.raises(TransportError) as info:
        t.get(url)
    assert f"request error {url}" in str(info.value), f"{info.value} does not name the URL"
    assert isinstance(info.value, ConnectionError)
    assert len(sleeps) == 2
    with pytest.raises(TransportError, match="request error http://127"):
        t.request("PUT", url, data=b"x")


# -- ranged reads ------------------------------------------------------------------


def collect(t: Transport, url: str, start: int, end: int, bufsize: int = 65536) -> tuple[bytearray, list[int]]:
    out = bytearray()
    offsets: list[int] = []
    buf = memoryview(bytearray(bufsize))

    def sink(offset: int, view: memoryview) -> None:
        offsets.append(offset)
        assert offset == start + len(out), f"sink got offset {offset}, want {start + len(out)}"
        out.extend(view)

    t.read_range(url, start, end, buf, sink)
    return out, offsets


@pytest.mark.parametrize(
    "start, end, bufsize",
    [(0, 299_999, 65536), (0, 0, 16), (1000, 1999, 7), (299_999, 299_999, 4096), (12345, 200_000, 1 << 20)],
    ids=["whole", "first-byte", "tiny-buffer", "last-byte", "big-buffer"],
)
def test_read_range(served, start, end, bufsize):
    up, url, data = served
    t, _ = transport()
    got, _ = collect(t, url, start, end, bufsize)
    assert bytes(got) == data[start : end + 1], f"read_range({start}, {end}) returned wrong bytes"
    assert up.stats.ranges[-1][1:] == (start, end)


def test_read_range_resumes_after_cut(served):
    up, url, data = served
    up.faults.set(cut_after=50_000, cut_times=1)
    t, _ = transport()
    got = bytearray()

    def sink(offset, view):
        assert offset == 1000 + len(got)
        got.extend(view)

    buf = memoryview(bytearray(8192))
    with pytest.raises(ShortReadError) as info:
        t.read_range(url, 1000, 250_999, buf, sink)
    assert info.value.got == len(got) == 50_000, f"ShortReadError.got = {info.value.got}, sink saw {len(got)}, want 50000"
    t.read_range(url, 1000 + len(got), 250_999, buf, sink)
    assert bytes(got) == data[1000:251_000], "resumed read did not continue where the cut left off"
    assert [r[1:] for r in up.stats.ranges] == [(1000, 250_999), (51_000, 250_999)]


def test_read_range_server_ignores_range(served):
    up, url, data = served
    up.faults.ignore_range = True
    t, _ = transport()
    # From offset 0 the first bytes of a 200 body are the range: read them.
    got, _ = collect(t, url, 0, 99_999, 4096)
    assert bytes(got) == data[:100_000]
    # Elsewhere, skipping through the whole body per chunk would be O(n²):
    # the caller is told to switch to one stream.
    with pytest.raises(RangeIgnoredError):
        collect(t, url, 100_000, 199_999, 4096)


def test_read_range_error_status(served):
    up, url, _ = served
    up.faults.status_times = {503: 1}
    t, _ = transport()
    with pytest.raises(RegistryError) as info:
        collect(t, url, 0, 9)
    assert info.value.status == 503 and info.value.retryable
    got, _ = collect(t, url, 0, 9)  # the connection stays usable
    assert len(got) == 10


def test_read_range_retry_resumes(served):
    """Transport.retry around read_range resumes from the last byte received."""
    up, url, data = served
    up.faults.set(cut_after=30_000, cut_times=3)
    t, sleeps = transport(attempts=5)
    got = bytearray()

    def sink(offset, view):
        assert offset == len(got)
        got.extend(view)

    buf = memoryview(bytearray(16384))
    t.retry(lambda: t.read_range(url, len(got), len(data) - 1, buf, sink), url)
    assert bytes(got) == data
    assert len(sleeps) == 3
    assert [r[1] for r in up.stats.ranges] == [0, 30_000, 60_000, 90_000]


def test_read_range_fresh_buffer_per_piece(served):
    """With a buffer factory, every piece lands in its own buffer and the sink keeps it."""
    up, url, data = served
    t, _ = transport()
    handed: list[memoryview] = []
    kept: list[tuple[int, memoryview]] = []

    def acquire() -> memoryview:
        view = memoryview(bytearray(8192))
        handed.append(view)
        return view

    t.read_range(url, 5000, 104_999, acquire, lambda offset, view: kept.append((offset, view)))
    assert b"".join(bytes(v) for _, v in kept) == data[5000:105_000], "pieces kept by the sink were overwritten"
    assert [o for o, _ in kept] == [5000 + sum(len(v) for _, v in kept[:i]) for i in range(len(kept))]
    assert len({id(v.obj) for _, v in kept}) == len(kept), "two pieces shared one buffer"


# -- StreamMonitor: stalls and stragglers, on an injected clock ------------------


def _stream(monitor, label, window=4 << 20):
    from chunkpull.engine.monitor import Stream  # noqa: F401 - the type under test

    s = monitor.stream(label)
    resp = FakeResp()
    s.attach(resp)
    s.window = window
    return s, resp


def test_monitor_cuts_a_stalled_stream():
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=5.0, clock=clock)
    s, resp = _stream(m, "a")
    clock.t += 4.9
    assert m.check() == [] and not resp.sock.shut
    clock.t += 0.2
    assert m.check() == [s] and resp.sock.shut


def test_monitor_cuts_a_straggler_among_fast_peers_even_paused_ones():
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=60.0, min_age_s=0.5, clock=clock)
    slow, slow_resp = _stream(m, "slow")
    peers = [_stream(m, f"p{i}")[0] for i in range(3)]
    clock.t += 0.05
    for p in peers:
        p.advance(4 << 20)  # 80 MiB/s each
        p.pause()  # then waiting for a buffer, as behind a stalled prefix
    clock.t += 0.95
    assert m.check() == [slow], "a stream with nothing in 1 s among 80 MiB/s peers is a straggler"
    assert slow_resp.sock.shut
    assert all(not p._resp.sock.shut for p in peers), "paused streams are never cut"


def test_monitor_calls_no_stream_straggling_while_new_streams_settle():
    """Right after the stream count rises, new connections are slow to win their share: not stragglers yet."""
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=60.0, min_age_s=0.5, clock=clock)
    m.settle(4.0)
    slow, slow_resp = _stream(m, "slow")
    peers = [_stream(m, f"p{i}")[0] for i in range(3)]
    for _ in range(3):
        clock.t += 1.0
        for p in peers:
            p.advance(80 << 20)
        slow.advance(1 << 20)  # 1/80th of its peers' rate
        assert m.check() == [] and not slow_resp.sock.shut, f"cut at {clock.t - 100:.0f} s, while settling"
    clock.t += 1.5
    for p in peers:
        p.advance(120 << 20)
    assert m.check() == [slow], "once settled, a stream this far behind is a straggler"


def test_monitor_leaves_a_uniformly_slow_link_alone():
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=60.0, min_age_s=0.5, clock=clock)
    streams = [_stream(m, f"s{i}")[0] for i in range(4)]
    # Earlier streams finished at 2 MB/s; these are mid-piece, nothing counted yet.
    for _ in range(3):
        old = m.stream("old")
        old.attach(FakeResp())
        clock.t += 2.0
        old.advance(4 << 20)
        m.done(old)
    for s in streams:
        s.attach(s._resp)  # restart their clocks now
    clock.t += 1.5
    assert m.check() == [], "a 4 MiB read in flight at 2 MB/s is on time, not straggling"


def test_monitor_cuts_a_stalled_stream_every_time():
    # A stall is never "just a slow link": every attempt that stalls is cut
    # (the retry budget, not the monitor, bounds how often that may happen).
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=1.0, max_aborts=2, clock=clock)
    cut = 0
    for _ in range(4):
        s, _resp = _stream(m, "same-chunk")
        clock.t += 2.0
        cut += len(m.check())
        m.done(s)
    assert cut == 4


def test_monitor_cuts_each_straggler_label_at_most_max_aborts_times():
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=100.0, max_aborts=2, clock=clock)
    fast = [_stream(m, f"fast{i}")[0] for i in range(3)]
    cut = 0
    for _ in range(4):
        slow, _resp = _stream(m, "same-chunk")
        for _ in range(4):
            clock.t += 0.5
            for f in fast:
                f.advance(50 << 20)
            slow.advance(1 << 10)
        cut += sum(1 for v in m.check() if v is slow)
        m.done(slow)
    assert cut == 2


def test_network_errors_read_as_a_sentence(make_registry, tmp_path):
    import socket as _socket

    from chunkpull.errors import TransportError

    s = _socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    reg = make_registry()
    with pytest.raises(TransportError) as info:
        reg.pull(f"http://127.0.0.1:{port}/library/smol")
    msg = str(info.value)
    assert msg == f"request error http://127.0.0.1:{port}/v2/library/smol/manifests/latest: cannot connect: connection refused (after 4 attempts)", msg


def test_monitor_gives_a_slow_link_time_to_fill_a_slice():
    from chunkpull.engine.monitor import StreamMonitor

    clock = FakeClock()
    m = StreamMonitor(stall_s=1.0, min_age_s=0.5, clock=clock)
    for _ in range(3):  # history: streams finish at 1 MiB/s
        old = m.stream("old")
        old.attach(FakeResp())
        clock.t += 4.0
        old.advance(4 << 20)
        m.done(old)
    s, resp = _stream(m, "live", window=4 << 20)  # a 4 MiB read takes ~4 s here
    clock.t += 2.0
    assert m.check() == [], "cut a live stream that cannot have filled its read yet"
    clock.t += 11.0  # now past 3x the expected time
    assert m.check() == [s] and resp.sock.shut


def test_in_the_tail_a_few_times_slower_is_a_straggler():
    # Nothing waits for a stream: the blob's end waits on this one range, so it is cut
    # (and resumes on a fresh connection) at 4x slower than its peers, not only at 8x.
    from chunkpull.engine.monitor import StreamMonitor

    for tail, want_cut in ((False, False), (True, True)):
        clock = FakeClock()
        m = StreamMonitor(stall_s=100.0, min_age_s=0.5, clock=clock)
        m.tail = tail
        fast = [_stream(m, f"fast{i}")[0] for i in range(3)]
        slow, _resp = _stream(m, "slow", window=0)
        for _ in range(4):
            clock.t += 0.25
            for f in fast:
                f.advance(4 << 20)
            slow.advance(1 << 20)  # a quarter of the peers' rate
        assert (slow in m.check()) is want_cut, f"tail={tail}"
