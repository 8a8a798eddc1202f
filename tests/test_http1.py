"""engine.http1, the data path's own HTTP/1.1 client, over real sockets on 127.0.0.1.

A tiny scripted server (and a tiny proxy) per test: each answer is written
byte by byte as the test says, so keep-alive, redirects, proxies, header
limits, leftovers after the headers, truncated bodies, a cut under a blocked
read and the 401 fallback are each seen on the wire.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import requests.auth

from chunkpull.engine import http1
from chunkpull.engine.http1 import HTTP1Client, HTTPFatalError, ProtocolError, ShortReadError
from chunkpull.engine.monitor import StreamMonitor
from chunkpull.engine.transport import Backoff, Transport

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * 64  # 16 KiB


def _read_head(c: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        got = c.recv(65536)
        if not got:
            return None
        buf += got
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


class Request:
    def __init__(self, conn_id: int, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.conn_id = conn_id
        self.line = lines[0]
        self.target = lines[0].split(" ")[1]
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}


def ranged(req: Request, data: bytes = DATA) -> bytes:
    """A 206 answer for the request's Range."""
    start, end = (int(x) for x in req.headers["range"].split("=", 1)[1].split("-"))
    body = data[start : end + 1]
    return (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {start}-{end}/{len(data)}\r\n\r\n").encode() + body


def _accept_each(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Hand every accepted connection to handle, until the listener is closed."""
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        handle(c)


class Server:
    """Answer each request with respond(req): bytes to send, or a callable(sock) that writes the answer itself; None closes."""

    def __init__(self, respond: Callable[[Request], bytes | Callable[[socket.socket], None] | None], tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.connections = 0
        self.open: list[socket.socket] = []
        threading.Thread(target=_accept_each, args=(self.listener, self._accepted), daemon=True).start()

    def _accepted(self, c: socket.socket) -> None:
        self.connections += 1
        threading.Thread(target=self._serve, args=(c, self.connections), daemon=True).start()

    def _serve(self, c: socket.socket, cid: int) -> None:
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
            self.open.append(c)
            buf = bytearray()
            while (head := _read_head(c, buf)) is not None:
                req = Request(cid, head)
                self.requests.append(req)
                out = self.respond(req)
                if out is None:
                    break
                if callable(out):
                    out(c)
                else:
                    c.sendall(out)
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.listener.close()
        for c in self.open:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def serve():
    made: list[Server] = []

    def make(respond, tls=None) -> Server:
        made.append(Server(respond, tls))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


def client(**kw) -> HTTP1Client:
    kw.setdefault("ca_cert", None)
    return HTTP1Client(max_idle=kw.pop("max_idle", 4), timeout_s=kw.pop("timeout_s", (5.0, 5.0)), user_agent="chunkpull/test", **kw)


def body_of(answer: http1.Answer) -> bytes:
    out = bytearray()
    view = memoryview(bytearray(4096))
    while n := answer.readinto(view):
        out += view[:n]
    answer.finish()
    return bytes(out)


def transport(**kw) -> Transport:
    return Transport(max_streams=2, backoff=Backoff(attempts=1), sleep=lambda s: None, timeout_s=(5.0, 5.0), **kw)


def collect(t: Transport, url: str, start: int, end: int, **kw) -> tuple[bytes, str]:
    out = bytearray()
    answered = t.read_range(url, start, end, memoryview(bytearray(4096)), lambda off, v: out.extend(v), **kw)
    return bytes(out), answered


# -- keep-alive, framing, limits ----------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_the_request_we_mean(serve):
    s = serve(ranged)
    c = client()
    for start in (0, 100, 5000):
        a = c.get(s.url + "/v2/x/blobs/d", {"Range": f"bytes={start}-{start + 99}"}, authorization="Bearer t")
        assert (a.status, body_of(a)) == (206, DATA[start : start + 100])
    assert s.connections == 1, f"{s.connections} connections for 3 sequential GETs: keep-alive is not reused"
    req = s.requests[0]
    assert req.line == "GET /v2/x/blobs/d HTTP/1.1"
    assert req.headers["host"] == f"127.0.0.1:{s.port}"
    assert (req.headers["accept-encoding"], req.headers["connection"], req.headers["authorization"]) == ("identity", "keep-alive", "Bearer t")
    assert req.headers["user-agent"] == "chunkpull/test"


def test_a_body_not_read_to_its_end_closes_its_connection(serve):
    s = serve(ranged)
    c = client()
    a = c.get(s.url + "/b", {"Range": "bytes=0-999"})
    a.readinto(memoryview(bytearray(10)))
    a.finish()
    body_of(c.get(s.url + "/b", {"Range": "bytes=0-9"}))
    assert s.connections == 2


def test_the_pool_keeps_at_most_max_idle_connections_per_key(serve):
    s = serve(ranged)
    c = client(max_idle=2)
    answers = [c.get(s.url + "/b", {"Range": "bytes=0-9"}) for _ in range(4)]  # four at once: four connections
    for a in answers:
        body_of(a)
    assert s.connections == 4
    assert len(c._pool._idle[next(iter(c._pool._idle))]) == 2


def test_a_kept_connection_the_server_closed_is_replaced_once(serve):
    # Answer, then close: the client's idle connection is dead when it is next used.
    s = serve(lambda req: (lambda c: (c.sendall(ranged(req)), c.shutdown(socket.SHUT_RDWR))))
    c = client()
    assert body_of(c.get(s.url + "/b", {"Range": "bytes=0-9"})) == DATA[:10]
    time.sleep(0.05)
    assert body_of(c.get(s.url + "/b", {"Range": "bytes=10-19"})) == DATA[10:20]
    assert s.connections == 2


def test_body_bytes_that_came_with_the_headers_are_read_first(serve):
    body = DATA[:3000]
    # Headers and the body's start in one segment, the rest later: the leftover must not be lost or repeated.
    def write(c: socket.socket) -> None:
        c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
        time.sleep(0.05)
        c.sendall(body[1000:])

    s = serve(lambda req: write)
    a = client().get(s.url + "/b", {})
    assert a._conn is not None and a._conn.buffered() == 1000
    assert body_of(a) == body


def test_headers_over_the_limit_are_refused(serve):
    s = serve(lambda req: b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (http1.MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
    with pytest.raises(ProtocolError, match="longer than"):
        client().get(s.url + "/b", {})


def test_a_garbled_status_line_is_a_protocol_error(serve):
    s = serve(lambda req: b"SPDY/3 banana\r\n\r\n")
    with pytest.raises(ProtocolError, match="status line"):
        client().get(s.url + "/b", {})


def test_error_bodies_chunked_or_close_delimited_are_read_bounded(serve):
    chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    s = serve(lambda req: chunked)
    a = client().get(s.url + "/b", {})
    assert (a.status, a.read_body(1000)) == (404, b"hello world")
    s2 = serve(lambda req: (lambda c: (c.sendall(b"HTTP/1.1 500 Oops\r\n\r\n" + b"x" * 5000), c.shutdown(socket.SHUT_WR))))
    a = client().get(s2.url + "/b", {})
    assert a.read_body(100) == b"x" * 100


def test_a_truncated_body_is_a_short_read(serve):
    def write(c: socket.socket) -> None:
        c.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\nContent-Range: bytes 0-999/16384\r\n\r\n" + DATA[:400])
        c.shutdown(socket.SHUT_RDWR)

    s = serve(lambda req: write)
    got = bytearray()
    with pytest.raises(ShortReadError) as info:
        transport().read_range(s.url + "/b", 0, 999, memoryview(bytearray(4096)), lambda off, v: got.extend(v))
    assert info.value.got == len(got) == 400 and bytes(got) == DATA[:400]


def test_a_data_body_without_content_length_is_retried_not_trusted(serve):
    s = serve(lambda req: (lambda c: (c.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/16384\r\n\r\n" + DATA[:10]),
                                      c.shutdown(socket.SHUT_RDWR))))
    with pytest.raises(ShortReadError, match="without a Content-Length"):
        collect(transport(), s.url + "/b", 0, 9)


def test_connection_refused_is_a_sentence():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(http1.ConnectFailed, match="cannot connect: connection refused"):
        client().get(f"http://127.0.0.1:{port}/b", {})


# -- redirects and where credentials go -------------------------------------------------


def test_redirects_are_followed_and_authorization_stays_with_its_host(serve):
    cdn = serve(ranged)
    hops = serve(lambda req: (b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\nLocation: /moved\r\n\r\n" if req.target == "/start"
                              else f"HTTP/1.1 302 Found\r\nContent-Length: 4\r\nLocation: {cdn.url}/signed?sig=1\r\n\r\nnope".encode()))
    got, answered = collect(transport(), hops.url + "/start", 0, 99, auth=_Static("Bearer secret"))
    assert got == DATA[:100]
    assert answered == f"{cdn.url}/signed?sig=1", "read_range must return the URL that answered"
    assert [r.headers.get("authorization") for r in hops.requests] == ["Bearer secret", "Bearer secret"], "same host: keep it"
    assert [r.headers.get("authorization") for r in cdn.requests] == [None], "credentials reached another host"
    assert cdn.requests[0].headers["range"] == "bytes=0-99"
    assert hops.connections == 1, "a drained redirect's connection is reused"


def test_a_redirect_loop_is_fatal(serve):
    s = serve(lambda req: b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nLocation: /again\r\n\r\n")
    with pytest.raises(HTTPFatalError, match="loop"):
        client().get(s.url + "/b", {})
    assert len(s.requests) == http1.MAX_REDIRECTS + 1


def test_a_redirect_to_a_url_that_is_not_http_is_fatal(serve):
    s = serve(lambda req: b"HTTP/1.1 301 Moved\r\nContent-Length: 0\r\nLocation: ftp://example.com/x\r\n\r\n")
    with pytest.raises(HTTPFatalError, match="not http"):
        client().get(s.url + "/b", {}, authorization="Bearer x")


class _Static(requests.auth.AuthBase):
    def __init__(self, header: str) -> None:
        self.header = header

    def __call__(self, r):
        r.headers["Authorization"] = self.header
        return r


# -- proxies ---------------------------------------------------------------------------


class Proxy:
    """A tiny HTTP proxy: answers absolute-form GETs itself, pipes CONNECT tunnels to their target."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.heads: list[Request] = []
        threading.Thread(target=_accept_each, args=(self.listener, self._accepted), daemon=True).start()

    def _accepted(self, c: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = bytearray()
        with c:
            while (head := _read_head(c, buf)) is not None:
                req = Request(0, head)
                self.heads.append(req)
                if req.line.startswith("CONNECT "):
                    host, port = req.target.rsplit(":", 1)
                    up = socket.create_connection((host, int(port)))
                    c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    threading.Thread(target=_pipe, args=(up, c), daemon=True).start()
                    _pipe(c, up)
                    return
                c.sendall(ranged(req))


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_http_targets_go_to_the_proxy_in_absolute_form(monkeypatch):
    proxy = Proxy()
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://pxuser:px%40pass@"))
    target = "http://registry.invalid:5000/v2/x/blobs/d"
    got, _ = collect(transport(), target, 10, 19, auth=_Static("Bearer reg"))
    assert got == DATA[10:20]
    req = proxy.heads[0]
    assert req.line == f"GET {target} HTTP/1.1" and req.headers["host"] == "registry.invalid:5000"
    assert req.headers["proxy-authorization"] == "Basic cHh1c2VyOnB4QHBhc3M="  # pxuser:px@pass


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], cwd=d, check=True, capture_output=True)
    return d


def _server_tls(d) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


def test_https_targets_go_through_a_connect_tunnel(serve, tls_files, monkeypatch):
    s = serve(ranged, tls=_server_tls(tls_files))
    proxy = Proxy()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://u:p@"))
    got, _ = collect(transport(ca_cert=str(tls_files / "cert.pem")), s.url + "/v2/x/blobs/d", 0, 99, auth=_Static("Bearer reg"))
    assert got == DATA[:100]
    assert proxy.heads[0].line == f"CONNECT 127.0.0.1:{s.port} HTTP/1.1"
    assert proxy.heads[0].headers["proxy-authorization"] == "Basic dTpw"
    assert "authorization" not in proxy.heads[0].headers, "the registry's credentials went to the proxy"
    assert s.requests[0].headers["authorization"] == "Bearer reg"


def test_tls_trust_is_checked_and_can_be_turned_off(serve, tls_files):
    s = serve(ranged, tls=_server_tls(tls_files))
    with pytest.raises(HTTPFatalError, match="--ca-cert"):
        client().get(s.url + "/b", {"Range": "bytes=0-9"})
    assert body_of(client().get(s.url + "/b", {"Range": "bytes=0-9"}, verify_tls=False)) == DATA[:10]


def test_a_dead_proxy_is_named_without_its_credentials(monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HTTP_PROXY", f"http://user:hunter2@127.0.0.1:{port}")
    with pytest.raises(http1.ConnectFailed) as info:
        client().get("http://registry.invalid/b", {})
    assert f"127.0.0.1:{port}" in str(info.value) and "hunter2" not in str(info.value)


# -- the monitor cuts an owned connection ---------------------------------------------------


def test_abort_unblocks_a_read_at_once(serve):
    release = threading.Event()

    def write(c: socket.socket) -> None:
        c.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\nContent-Range: bytes 0-999/16384\r\n\r\n" + DATA[:10])
        release.wait(10)

    s = serve(lambda req: write)
    m = StreamMonitor(stall_s=60.0)
    stream = m.stream("x")
    t = transport()
    threading.Timer(0.3, lambda: stream.abort("cancelled")).start()
    began = time.monotonic()
    with pytest.raises(ShortReadError, match="cut, cancelled") as info:
        t.read_range(s.url + "/b", 0, 999, memoryview(bytearray(4096)), lambda off, v: None, stream=stream)
    release.set()
    assert time.monotonic() - began < 3, "a blocked read outlived the cut"
    assert info.value.got == 10


def test_the_monitor_sees_the_kernel_figures_of_an_owned_connection(serve):
    s = serve(ranged)
    a = client().get(s.url + "/b", {"Range": "bytes=0-9"})
    m = StreamMonitor()
    stream = m.stream("x")
    stream.attach(a)
    assert stream._tcp_base is not None, "TCP_INFO was not read from the owned socket"
    stream.detach()
    body_of(a)


# -- 401: one attempt through requests, then the owned connection with the new token ----------


class _Rotating(requests.auth.AuthBase):
    """Like auth.RegistryAuth: a header per request, and a 401 hook that gets a new token and sends again."""

    def __init__(self) -> None:
        self.token = "old"
        self.refreshed = 0

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self.token}"
        r.register_hook("response", self._on_401)
        return r

    def _on_401(self, r, **kwargs):
        if r.status_code != 401:
            return r
        self.token, self.refreshed = "new", self.refreshed + 1
        r.content  # noqa: B018
        prep = r.request.copy()
        prep.headers["Authorization"] = "Bearer new"
        return r.connection.send(prep, **kwargs)


def test_a_401_falls_back_once_through_requests_then_the_owned_path_has_the_new_token(serve):
    def respond(req: Request) -> bytes:
        if req.headers.get("authorization") != "Bearer new":
            return b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="x"\r\nContent-Length: 2\r\n\r\n{}'
        return ranged(req)

    s = serve(respond)
    t = transport()
    auth = _Rotating()
    got, _ = collect(t, s.url + "/v2/x/blobs/d", 0, 99, auth=auth)
    assert got == DATA[:100] and auth.refreshed == 1
    got, _ = collect(t, s.url + "/v2/x/blobs/d", 100, 199, auth=auth)
    assert got == DATA[100:200]
    assert [r.headers.get("authorization") for r in s.requests] == ["Bearer old", "Bearer old", "Bearer new", "Bearer new"]
    ids = [r.conn_id for r in s.requests]
    assert ids[-1] == ids[0] != ids[1], f"connections {ids}: the later range did not go over the owned (kept) connection"
    assert auth.refreshed == 1


# -- the receive kernel, on both backends ------------------------------------------------


@pytest.fixture(params=["python", "native"])
def recv_full(request):
    if request.param == "python":
        from chunkpull import _fallback

        return _fallback.recv_full
    return pytest.importorskip("chunkpull._native", reason="native extension not built").recv_full


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "timeout"])
def test_recv_full_fills_stops_at_n_eof_and_times_out(recv_full, blocking):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(True) if blocking else a.settimeout(0.2)
        buf = bytearray(1000)
        b.sendall(DATA[:100])
        assert recv_full(a.fileno(), buf, 60, 0.2) == 60 and buf[:60] == DATA[:60]
        threading.Timer(0.05, lambda: b.sendall(DATA[100:300])).start()
        # 40 buffered bytes, then 200 more later: one call gathers all it can before the wait times out.
        began = time.monotonic()
        assert recv_full(a.fileno(), memoryview(buf)[:500], -1, 0.3) == 240 and buf[:240] == DATA[60:300]
        assert time.monotonic() - began >= 0.25
        with pytest.raises(TimeoutError):
            recv_full(a.fileno(), buf, -1, 0.1)
        b.sendall(b"xyz")
        b.shutdown(socket.SHUT_WR)
        assert recv_full(a.fileno(), buf, -1, 1.0) == 3  # EOF ends the fill
        assert recv_full(a.fileno(), buf, -1, 1.0) == 0


def test_recv_full_returns_when_the_socket_is_shut_down_under_it(recv_full):
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(10)
        threading.Timer(0.1, lambda: a.shutdown(socket.SHUT_RDWR)).start()
        began = time.monotonic()
        assert recv_full(a.fileno(), bytearray(100), -1, 10.0) == 0
        assert time.monotonic() - began < 2


def test_recv_full_raises_oserror_on_a_bad_fd(recv_full):
    with pytest.raises(OSError):
        recv_full(-1, bytearray(10), -1, 0.1)


def test_the_observer_sees_ranges_on_our_connections_and_control_requests(serve):
    """What chunkpull bench times: the owned data path itself, and the control plane, one record each."""
    cdn = serve(ranged)
    front = serve(lambda req: (f"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\nLocation: {cdn.url}/blob\r\n\r\n".encode()
                               if req.target == "/v2/r/blobs/x" else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    t = transport()
    seen = []
    t.observer = seen.append
    got, _ = collect(t, front.url + "/v2/r/blobs/x", 0, 99)
    assert got == DATA[:100]
    t.get(front.url + "/v2/r/manifests/latest")
    ranged_, control = seen
    assert (ranged_.ranged, ranged_.status, ranged_.url, ranged_.answered) == (True, 206, front.url + "/v2/r/blobs/x", cdn.url + "/blob")
    assert ranged_.start <= ranged_.first <= ranged_.end
    assert (control.ranged, control.status) == (False, 200)
