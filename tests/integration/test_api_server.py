"""chunkpull.api over real sockets: Server on 127.0.0.1:0 against a TestRegistry upstream.

Covers the seed's matrix over HTTP, the official ``ollama`` Python package as
a real client, streaming line by line, disconnects cancelling pulls (while
bytes flow, and while the upstream is stalled), two clients sharing one
download, other requests answered during a pull, keep-alive, and ``serve()``
stopping cleanly on SIGINT/SIGTERM in a child process.  Pulls are held in
place by a gate on blob requests or slowed by the test registry's throttle;
no assertion depends on timings (waits have generous upper bounds only).
The fixtures below build on conftest's local API world (``models_dir``,
``api_upstream``, ``gate``, ``api_registry``).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import ollama
import pytest
from conftest import child_env
import requests

from chunkpull.serve import Local, Server
from chunkpull.store.cache import DiskCache
from chunkpull.errors import PullCancelledError, TransportError
from chunkpull.registry import Registry
from chunkpull.testing import TestRegistry

pytestmark = pytest.mark.integration

WAIT_S = 60  # generous upper bound for waits that normally end at once
BOOM = "request error https://example.com/v2/library/BOOM/manifests/latest: registry responded with status 999: boom"


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture
def local(api_registry: Registry) -> Local:
    return Local(api_registry, logger=logging.getLogger("test.chunkpull.api.server"))


@pytest.fixture
def server(local: Local):
    with Server(local, "127.0.0.1", 0) as srv:
        yield srv


def blob_of(upstream: TestRegistry, model: str) -> tuple[str, int]:
    m = json.loads(upstream.find_manifest("library", model, "latest").read_bytes())
    return m["layers"][0]["digest"], m["layers"][0]["size"]


# --- a raw HTTP/1.1 client, to see the wire and to hang up at will -------------------------


class RawClient:
    """One keep-alive connection; reads chunked NDJSON line by line as it arrives."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=WAIT_S)
        self.file = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunks(self):
        """Yield each chunk of a chunked body (the server sends one line per chunk)."""
        while True:
            size = int(self.file.readline().strip(), 16)
            if size == 0:
                assert self.file.readline() == b"\r\n"
                return
            data = self.file.read(size)
            assert self.file.readline() == b"\r\n"
            yield data

    def body(self, headers: dict[str, str]) -> bytes:
        return self.file.read(int(headers["content-length"]))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def pull_lines(url: str, body: dict) -> list[dict]:
    with requests.post(url + "/api/pull", json=body, stream=True, timeout=WAIT_S) as r:
        assert r.status_code == 200, r.text
        return [json.loads(x) for x in r.iter_lines() if x]


def check_error(r: requests.Response, status: int, code: str, msg: str) -> None:
    assert r.status_code == status, f"Code = {r.status_code}; want {status}\n{r.text}"
    assert r.headers["Content-Type"] == "application/json"
    e = r.json()
    assert e["code"] == code, e
    assert msg in e["error"], e


# --- the seed's matrix over HTTP --------------------------------------------------------------


def test_seed_matrix_over_http(server: Server, api_registry: Registry) -> None:
    url = server.url
    body = requests.post(url + "/api/pull", json={"model": "BOOM"}, timeout=WAIT_S).text
    assert '"status":"error:' not in body, body  # one error line only (SPEC; the seed's older form sent two)
    assert body.endswith('{"error":"' + BOOM + '"}\n'), body

    lines = pull_lines(url, {"model": "smol"})
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}

    body = requests.post(url + "/api/pull", json={"model": "unknown"}, timeout=WAIT_S).text
    assert '"status":"error:' not in body, body
    assert body.endswith(r'{"error":"model \"unknown\" not found"}' + "\n")

    check_error(requests.delete(url + "/api/pull", json={"model": "smol"}), 405, "method_not_allowed", "method not allowed")
    check_error(requests.post(url + "/api/pull", data=b"!"), 400, "bad_request", "Expecting value")
    check_error(requests.post(url + "/api/pull", data=b""), 400, "bad_request", "empty request body")
    body = requests.post(url + "/api/pull", json={"model": "://"}).text
    assert body.endswith(r'{"error":"invalid or missing name: \"\""}' + "\n"), body
    check_error(requests.post(url + "/api/pull", json={"model": "://", "stream": False}), 400, "bad_request", "invalid or missing name")
    r = requests.post(url + "/api/pull", json={"model": "smol", "stream": False})
    assert (r.status_code, r.json()) == (200, {"status": "success"})
    check_error(requests.post(url + "/api/pull", json={"model": "unknown", "stream": False}), 404, "not_found", "model not found")

    assert requests.delete(url + "/api/delete", json={"model": "smol"}).status_code == 200
    with pytest.raises(LookupError):
        api_registry.resolve_local("smol")
    check_error(requests.delete(url + "/api/delete", data=b"!"), 400, "bad_request", "Expecting value")
    check_error(requests.get(url + "/api/delete", json={"model": "smol"}), 405, "method_not_allowed", "method not allowed")
    check_error(requests.delete(url + "/api/delete", data=b""), 400, "bad_request", "empty request body")
    check_error(requests.delete(url + "/api/delete", json={"model": "://"}), 400, "bad_request", "invalid or missing name")
    check_error(requests.delete(url + "/unknown_path", json={}), 404, "not_found", "not found")
    check_error(requests.delete(url + "/api/delete", json={"model": "smol"}), 404, "not_found", "model not found")


def test_fallback_over_http(server: Server, local: Local) -> None:
    local.fallback = lambda environ, start_response: (start_response("418 I'm a teapot", [("Content-Type", "text/plain")]), [b"tea"])[1]
    r = requests.get(server.url + "/v1/models")
    assert (r.status_code, r.text) == (418, "tea")
    assert r.headers.get("Connection", "").lower() != "close"  # the connection is kept


def test_chunked_request_body_is_read_within_the_cap(server: Server) -> None:
    # waitress de-chunks a chunked body (Ollama's clients send a length); one
    # over the body cap is refused unread, and the server goes on.
    r = requests.post(server.url + "/api/pull", data=iter([b'{"model": ', b'"smol", "stream": false}']), timeout=WAIT_S)
    assert (r.status_code, r.json()) == (200, {"status": "success"}), r.text
    big = iter([b'{"model": "smol", "pad": "', b"x" * (2 << 20), b'"}'])
    r = requests.post(server.url + "/api/pull", data=big, timeout=WAIT_S)
    assert r.status_code == 413, r.text
    assert requests.get(server.url + "/").status_code == 200, "the server goes on"


def test_root_head_and_version(server: Server) -> None:
    r = requests.get(server.url + "/")
    assert (r.status_code, r.text) == (200, "chunkpull is running")
    r = requests.head(server.url + "/")
    assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"", "20")
    assert "version" in requests.get(server.url + "/api/version").json()


def test_full_names_without_a_mask_route(tmp_path: Path, api_upstream: TestRegistry) -> None:
    # The natural configuration: the mask cannot carry a scheme, so an
    # http:// registry is named in full.
    reg = Registry(DiskCache(tmp_path / "plain", fsync=False), max_streams=2)
    host = urlsplit(api_upstream.url).netloc
    with Server(Local(reg)) as srv:
        lines = pull_lines(srv.url, {"model": f"http://{host}/library/smol:latest"})
        assert lines[-1] == {"status": "success"}
        names = [m["name"] for m in requests.get(srv.url + "/api/tags").json()["models"]]
        assert names == [f"{host}/library/smol:latest"]
    reg.close()


# --- the official ollama client ---------------------------------------------------------------


def test_ollama_client(server: Server) -> None:
    client = ollama.Client(host=server.url)

    parts = list(client.pull("chunked", stream=True))
    assert parts[0].status == "pulling manifest"
    assert parts[-1].status == "success"
    assert any(p.completed for p in parts), "no progress reported"
    # Every item has a status, layer items Ollama's "pulling <hex12>".
    assert [p for p in parts if not p.status] == []
    assert all(p.status == "pulling " + p.digest[7:19] for p in parts if p.digest), [p for p in parts if p.digest][:2]

    seen = []
    with pytest.raises(ollama.ResponseError) as info:
        for p in client.pull("unknown", stream=True):
            seen.append(p.status)
    assert info.value.error == 'model "unknown" not found'
    assert seen == ["pulling manifest"], f"items before the error: {seen}; no item may read as an error"

    assert client.pull("smol").status == "success"  # stream=False
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("unknown")
    assert (info.value.status_code, info.value.error) == (404, "model not found")

    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"smol:latest", "chunked:latest"}, listed
    assert listed["chunked:latest"].size == sum(p.total for p in parts if p.total and not p.completed)
    assert listed["smol:latest"].details.format == "gguf"

    assert client.delete("smol").status == "success"
    assert [m.model for m in client.list().models] == ["chunked:latest"]
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("smol")
    assert (info.value.status_code, info.value.error) == (404, "model not found")


# --- streaming and concurrency ------------------------------------------------------------------


def test_lines_arrive_while_the_pull_runs(server: Server, local: Local, gate: threading.Event) -> None:
    gate.clear()  # the pull cannot finish until we say so
    client = RawClient(server.url)
    try:
        status, headers = client.request("POST", "/api/pull", b'{"model": "chunked"}')
        assert (status, headers["transfer-encoding"], headers["content-type"]) == (200, "chunked", "application/x-ndjson")
        chunks = client.chunks()
        assert json.loads(next(chunks)) == {"status": "pulling manifest"}  # flushed, not buffered
        (flight,) = local.in_flight()
        assert not flight.done.is_set()

        # Other requests are answered while the pull runs.
        r = requests.get(server.url + "/api/tags", timeout=WAIT_S)
        assert r.status_code == 200 and [m["name"] for m in r.json()["models"]] == ["smol:latest"]

        gate.set()
        rest = [json.loads(x) for x in chunks]
        assert rest[-1] == {"status": "success"}
        # A stream has no length, so the server ends its connection after it
        # (waitress's rule); the next request comes on a new one.
        assert headers.get("connection") == "close"
        r = requests.get(server.url + "/api/tags", timeout=WAIT_S)
        assert {m["name"] for m in r.json()["models"]} == {"smol:latest", "chunked:latest"}
    finally:
        client.close()


def test_two_clients_share_one_download(server: Server, local: Local, api_upstream: TestRegistry, gate: threading.Event) -> None:
    gate.clear()
    api_upstream.stats.reset()
    a, b = RawClient(server.url), RawClient(server.url)
    try:
        a.request("POST", "/api/pull", b'{"model": "chunked"}')
        ca = a.chunks()
        assert json.loads(next(ca))["status"] == "pulling manifest"
        b.request("POST", "/api/pull", b'{"model": "chunked"}')
        cb = b.chunks()
        assert json.loads(next(cb))["status"] == "pulling manifest"
        (flight,) = local.in_flight()
        assert flight.listeners == 2
        gate.set()
        assert json.loads(list(ca)[-1]) == {"status": "success"}
        assert json.loads(list(cb)[-1]) == {"status": "success"}
    finally:
        a.close()
        b.close()
    assert api_upstream.stats.requests["manifest"] == 1, api_upstream.stats.requests
    ranges = api_upstream.stats.ranges
    assert len(ranges) == len(set(ranges)), f"a chunk was served twice: {ranges}"
    digest, size = blob_of(api_upstream, "chunked")
    assert sum(e - s + 1 for d, s, e in ranges if d == digest) == size


@pytest.mark.slow
def test_disconnect_mid_pull_cancels(server: Server, local: Local, api_upstream: TestRegistry, models_dir: Path) -> None:
    # 4 MiB in 64 KiB chunks at 128 KiB/s per connection: 16 s or more of work,
    # and the client hangs up at its first reported bytes.
    big, _ = blob_of(api_upstream, "big")
    api_upstream.faults.throttle_bps = 128 * 1024
    client = RawClient(server.url)
    try:
        client.request("POST", "/api/pull", b'{"model": "big"}')
        for raw in client.chunks():
            line = json.loads(raw)
            if line.get("digest") == big and line.get("completed"):
                break
        (flight,) = local.in_flight()
    finally:
        client.close()
    assert flight.done.wait(WAIT_S), "the pull was not cancelled when its only client hung up"
    assert flight.cancel.is_set()
    assert isinstance(flight.error, (PullCancelledError, TransportError)), repr(flight.error)
    hexd = big.split(":")[1]
    assert (models_dir / ".chunkpull" / "ingest" / f"sha256-{hexd}.partial").exists(), "work in progress must be kept"
    assert not (models_dir / "blobs" / f"sha256-{hexd}").exists()
    assert not (models_dir / "manifests" / "example.com" / "library" / "big").exists()

    # The next pull resumes and completes.
    api_upstream.faults.throttle_bps = None
    assert pull_lines(server.url, {"model": "big"})[-1] == {"status": "success"}
    assert (models_dir / "blobs" / f"sha256-{hexd}").exists()


@pytest.mark.slow
def test_disconnect_while_stalled_cancels(server: Server, local: Local, gate: threading.Event) -> None:
    # No bytes move, so no write can fail: the server must notice the
    # closed socket by itself.
    gate.clear()
    client = RawClient(server.url)
    try:
        client.request("POST", "/api/pull", b'{"model": "chunked"}')
        assert json.loads(next(client.chunks()))["status"] == "pulling manifest"
        (flight,) = local.in_flight()
    finally:
        client.close()
    assert flight.cancel.wait(WAIT_S), "a stalled pull was not cancelled after its client left"
    gate.set()
    assert flight.done.wait(WAIT_S)


def test_shutdown_ends_streams(local: Local, gate: threading.Event) -> None:
    gate.clear()
    srv = Server(local, "127.0.0.1", 0).start()
    client = RawClient(srv.url)
    try:
        client.request("POST", "/api/pull", b'{"model": "chunked"}')
        chunks = client.chunks()
        next(chunks)
        (flight,) = local.in_flight()
        stopper = threading.Thread(target=srv.shutdown)
        stopper.start()
        assert flight.cancel.wait(WAIT_S)
        gate.set()
        last = json.loads(list(chunks)[-1])
        assert "error" in last, last
        stopper.join(WAIT_S)
        assert not stopper.is_alive()
    finally:
        client.close()
        gate.set()
        srv.shutdown()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()


# --- serve(): a child process stopped by a signal ---------------------------------------------------

SERVE = """
import sys
from chunkpull.serve import serve
from chunkpull.store.cache import DiskCache
from chunkpull.registry import Registry, Tuning

serve(Registry(DiskCache(sys.argv[1]), max_streams=2, tuning=Tuning(chunking_threshold=65536)), port=0,
      ready=lambda server: print(server.url, flush=True))
print("stopped", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_serve_stops_on_signal(tmp_path: Path, api_upstream: TestRegistry, sig: int) -> None:
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path / "models")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        assert requests.get(url + "/", timeout=WAIT_S).text == "chunkpull is running"

        # A pull in flight when the signal comes: it is cancelled and its
        # stream ends with an error line, work kept.
        api_upstream.faults.throttle_bps = 128 * 1024
        host = urlsplit(api_upstream.url).netloc
        client = RawClient(url)
        try:
            client.request("POST", "/api/pull", json.dumps({"model": f"http://{host}/library/big"}).encode())
            chunks = client.chunks()
            for raw in chunks:
                if json.loads(raw).get("completed"):
                    break
            proc.send_signal(sig)
            last = json.loads(list(chunks)[-1])
        finally:
            client.close()
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "stopped", (out, err)
    assert "error" in last and "cancelled" in last["error"], last
    assert list((tmp_path / "models" / ".chunkpull" / "ingest").glob("*.partial")), "work in progress must be kept"
