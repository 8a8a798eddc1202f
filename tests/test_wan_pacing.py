"""The built-in registry's link switches (pace, straggler, reset_after) and its stats route, over real sockets.

Pacing is checked where it is set: the server's accepted socket, read back
with getsockopt (and one lower bound on a transfer's duration, never an
upper one).  Resets are checked by what the client gets: at most the
budget, then ECONNRESET rather than a clean end of file.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chunkpull import testing
from chunkpull.testing import TestRegistry, build_model
from chunkpull.testing.handler import SO_MAX_PACING_RATE, STATS_PATH

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_MAX_PACING_RATE is Linux's"),
]

SIZE = 2 << 20
TIMEOUT = 10
UNPACED = (-1, 0xFFFFFFFF)  # ~0U, as getsockopt's C int or unsigned


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "models"
    digest = build_model(root, "registry.local/library/smol:latest", [SIZE], seed=3, config=False)
    manifest = json.loads((root / "blobs" / digest.replace(":", "-")).read_bytes())
    return root, manifest["layers"][0]["digest"]


@pytest.fixture
def serve():
    started: list[TestRegistry] = []

    def make(root: Path, **faults) -> TestRegistry:
        stats_route = faults.pop("stats_route", False)
        reg = TestRegistry(root, stats_route=stats_route)
        reg.faults.set(**faults)
        started.append(reg.start())
        return reg

    yield make
    for reg in started:
        reg.stop()


def _get(sock: socket.socket, path: str, extra: str = "") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Return (head, body bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before the headers: {data!r}"
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _open(reg: TestRegistry, count: int) -> list[socket.socket]:
    """Open count keep-alive connections one after the other, each answered once (so it is accepted and set up)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", reg.port), timeout=TIMEOUT)
        _get(s, "/v2/")
        head, body = _read_head(s)
        while len(body) < 2:  # "{}": its own segment, Nagle is off
            body += s.recv(2 - len(body))
        assert head.startswith(b"HTTP/1.1 200") and body == b"{}"
        socks.append(s)
    return socks


def _server_rates(reg: TestRegistry) -> dict[int, int]:
    """Return serial -> SO_MAX_PACING_RATE of the server's open connections."""
    with reg._server._changed:
        handlers = list(reg._server.connections)
    return {h.serial: h.connection.getsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE) for h in handlers}


def test_pace_sets_every_accepted_socket(serve, blob):
    reg = serve(blob[0], pace_bps=15_000_000)
    socks = _open(reg, 3)
    try:
        assert _server_rates(reg) == {1: 15_000_000, 2: 15_000_000, 3: 15_000_000}
        assert reg.stats.connections == 3
    finally:
        for s in socks:
            s.close()


def test_stragglers_by_serial(serve, blob):
    reg = serve(blob[0], pace_bps=2_000_000, straggler_every=3, straggler_bps=500_000)
    socks = _open(reg, 7)
    try:
        rates = _server_rates(reg)
        assert rates == {1: 2_000_000, 2: 2_000_000, 3: 500_000, 4: 2_000_000, 5: 2_000_000, 6: 500_000, 7: 2_000_000}
        # Serials start again at 1 after a reset of the counters.
        reg.stats.reset()
        more = _open(reg, 3)
        socks += more
        assert _server_rates(reg)[3] == 500_000 and reg.stats.connections == 3
    finally:
        for s in socks:
            s.close()


def test_stragglers_alone_leave_the_rest_unpaced(serve, blob):
    reg = serve(blob[0], straggler_every=2, straggler_bps=1_000_000)
    socks = _open(reg, 2)
    try:
        rates = _server_rates(reg)
        assert rates[2] == 1_000_000 and rates[1] in UNPACED
    finally:
        for s in socks:
            s.close()


def test_pace_slows_a_body(serve, blob):
    root, digest = blob
    rate = 1 << 20
    reg = serve(root, pace_bps=rate)
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"/v2/library/smol/blobs/{digest}")
        body = conn.getresponse().read()
    finally:
        conn.close()
    assert len(body) == SIZE
    # A lower bound only (half the paced time): a loaded machine is slower, never faster.
    assert time.monotonic() - t0 >= 0.5 * SIZE / rate


def _read_until_reset(sock: socket.socket, first: bytes) -> tuple[int, str]:
    got = len(first)
    try:
        while piece := sock.recv(65536):
            got += len(piece)
        return got, "eof"
    except ConnectionResetError:
        return got, "reset"


def test_reset_after_sends_an_rst(serve, blob):
    root, digest = blob
    budget = 300_000
    reg = serve(root, reset_after=budget)
    for serial in (1, 2):  # every connection has its own budget
        with socket.create_connection(("127.0.0.1", reg.port), timeout=TIMEOUT) as s:
            _get(s, f"/v2/library/smol/blobs/{digest}")
            head, rest = _read_head(s)
            assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {SIZE}".encode() in head
            got, how = _read_until_reset(s, rest)
        assert how == "reset"  # an RST, not a FIN: the client cannot take it for the end of the body
        assert 0 < got <= budget
        assert reg.stats.resets == serial
    # Counted: at most the budget per connection, less what the RST dropped.
    assert 0 < reg.stats.blob_bytes_sent <= 2 * budget


def test_reset_after_counts_keep_alive_requests(serve, blob):
    root, digest = blob
    reg = serve(root, reset_after=150_000)
    path = f"/v2/library/smol/blobs/{digest}"
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Range": "bytes=0-99999"})
        assert len(conn.getresponse().read()) == 100_000  # 100 000 sent on this connection
        conn.request("GET", path, headers={"Range": "bytes=100000-199999"})
        r = conn.getresponse()
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
            r.read()  # reset 50 000 bytes in
    finally:
        conn.close()
    assert reg.stats.resets == 1
    # A fresh connection has a fresh budget: no reset for one 100 000-byte range.
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Range": "bytes=0-99999"})
        assert len(conn.getresponse().read()) == 100_000
    finally:
        conn.close()
    assert reg.stats.resets == 1 and reg.stats.connections == 2


def test_stats_route(serve, blob):
    root, digest = blob
    reg = serve(root, stats_route=True)
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"/v2/library/smol/blobs/{digest}", headers={"Range": "bytes=0-999"})
        assert len(conn.getresponse().read()) == 1000
        conn.request("GET", STATS_PATH + "?reset=1")
        doc = json.loads(conn.getresponse().read())
        assert doc == {"connections": 1, "resets": 0, "blob_bytes_sent": 1000, "requests": {"blob": 1, "other": 1}, "open": 1}
        conn.request("GET", STATS_PATH)
        assert json.loads(conn.getresponse().read())["blob_bytes_sent"] == 0
    finally:
        conn.close()
    assert reg.stats.connections == 0  # the reset restarted the serials; no connection since


def test_stats_route_is_off_by_default(serve, blob):
    reg = serve(blob[0])
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=TIMEOUT)
    try:
        conn.request("GET", STATS_PATH)
        assert conn.getresponse().status == 404
    finally:
        conn.close()


def test_serve_main_link_options(blob):
    code = "import sys; from chunkpull.testing.main import serve_main; sys.exit(serve_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(blob[0]), "--pace", "15000000", "--straggler", "2:500K",
         "--reset-after", "128M", "--stats-route"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(testing.__file__).parents[2])},
    )
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        url = proc.stdout.readline().strip()
        host, port = url.split("://")[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        conn.request("GET", STATS_PATH)
        assert json.loads(conn.getresponse().read())["connections"] == 1
        conn.close()
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.mark.parametrize("bad", ["8", "0:1M", "x:1M", "8:"])
def test_straggler_option_refuses(bad, capsys):
    from chunkpull.testing.main import serve_main

    with pytest.raises(SystemExit):
        serve_main(["dir", "--straggler", bad])
    assert "EVERY:BPS" in capsys.readouterr().err
