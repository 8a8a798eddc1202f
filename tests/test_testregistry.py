"""The built-in registry server, over real sockets with requests.

Every request carries a timeout and every server is stopped by a fixture
finalizer, so a broken server fails a test instead of hanging the run.  No
test asserts a duration: stalls and throttles are checked by what arrives.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import requests

from chunkpull import testing
from chunkpull.core.units import parse_size
from chunkpull.testing import faults as testing_faults
from chunkpull.testing import main as testing_main
from chunkpull.testing import TestRegistry, build_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024
# Layer 0 spans four chunks (the last one short), layer 1 is below one chunk.
SIZES = [3 * CHUNK + 1000, 500]
TIMEOUT = 10


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}, separators=(",", ":")).encode()


@dataclass
class Model:
    root: Path
    digest: str
    data: bytes

    @property
    def manifest(self) -> dict:
        return json.loads(self.data)

    def layer(self, i: int = 0) -> str:
        return self.manifest["layers"][i]["digest"]

    def blob(self, digest: str) -> bytes:
        return (self.root / "blobs" / digest.replace(":", "-")).read_bytes()


@pytest.fixture
def model(tmp_path: Path) -> Model:
    root = tmp_path / "models"
    digest = build_model(root, "registry.local/library/smol:latest", SIZES, seed=7)
    return Model(root, digest, (root / "blobs" / digest.replace(":", "-")).read_bytes())


@pytest.fixture
def serve():
    """Start TestRegistry instances; all are stopped when the test ends.

    (Not conftest's ``upstream``: these tests need bare servers on models
    directories they build themselves.)
    """
    started: list[TestRegistry] = []

    def make(root: Path, **kwargs) -> TestRegistry:
        reg = TestRegistry(root, **kwargs).start()
        started.append(reg)
        return reg

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture
def reg(serve, model: Model) -> TestRegistry:
    return serve(model.root, chunk_size=CHUNK)


def get(reg: TestRegistry, path: str, **kwargs) -> requests.Response:
    return requests.get(reg.url + path, timeout=TIMEOUT, **kwargs)


def blob_path(d: str) -> str:
    return f"/v2/library/smol/blobs/{d}"


# -- manifests ---------------------------------------------------------------


def test_manifest_by_tag(reg, model):
    r = get(reg, "/v2/library/smol/manifests/latest")
    assert r.status_code == 200
    assert r.content == model.data
    assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert r.headers["Docker-Content-Digest"] == model.digest == _sha256(r.content)
    m = r.json()
    assert m["schemaVersion"] == 2
    assert m["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert m["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["size"] for layer in m["layers"]] == SIZES
    assert {layer["mediaType"] for layer in m["layers"]} == {"application/vnd.ollama.image.model"}


@pytest.mark.parametrize("section", ["blobs", "manifests"])
def test_manifest_by_digest(reg, model, section):
    r = get(reg, f"/v2/library/smol/{section}/{model.digest}")
    assert r.status_code == 200
    assert r.content == model.data


@pytest.mark.parametrize(
    "path",
    [
        "/v2/Library/SMOL/manifests/Latest",
        "/v2/LIBRARY/smol/manifests/LATEST",
        "/v2/library/Smol/manifests/latest",
    ],
)
def test_manifest_case_insensitive(reg, model, path):
    r = get(reg, path)
    assert r.status_code == 200, f"GET {path} = {r.status_code}, want 200"
    assert r.content == model.data


def test_manifest_under_any_host(reg, model):
    digest = build_model(model.root, "example.com/Other/MiXed:V1", [10], seed=1)
    r = get(reg, "/v2/other/mixed/manifests/v1")
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/nope/manifests/latest",
        "/v2/library/smol/manifests/nope",
        "/v2/nope/smol/manifests/latest",
        "/v2/library/smol/manifests/sha256:" + "0" * 64,
    ],
    ids=["model", "tag", "namespace", "digest"],
)
def test_manifest_unknown(reg, path):
    r = get(reg, path)
    assert r.status_code == 404
    assert r.content == b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'


def test_head(reg, model):
    r = requests.head(reg.url + "/v2/library/smol/manifests/latest", timeout=TIMEOUT)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(model.data)
    assert r.headers["Docker-Content-Digest"] == model.digest
    assert r.content == b""
    r = requests.head(reg.url + blob_path(model.layer()), timeout=TIMEOUT)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == SIZES[0]
    assert r.headers["Accept-Ranges"] == "bytes"
    assert requests.head(reg.url + blob_path("sha256:" + "1" * 64), timeout=TIMEOUT).status_code == 404
    assert reg.stats.blob_bytes_sent == 0


def test_unknown_path_and_method(reg):
    assert get(reg, "/v2/").status_code == 200
    assert get(reg, "/nope").status_code == 404
    r = requests.delete(reg.url + "/v2/library/smol/manifests/latest", timeout=TIMEOUT)
    assert r.status_code == 405


# -- blobs -------------------------------------------------------------------


def test_blob_full(reg, model):
    d = model.layer()
    r = get(reg, blob_path(d))
    assert r.status_code == 200
    assert r.content == model.blob(d)
    assert r.headers["Docker-Content-Digest"] == d
    assert "Content-Range" not in r.headers


S = SIZES[0]


@pytest.mark.parametrize(
    "header, start, end",
    [
        ("bytes=0-9", 0, 9),
        ("bytes=5-5", 5, 5),
        ("bytes=10-", 10, S - 1),
        (f"bytes={S - 1}-", S - 1, S - 1),
        ("bytes=-5", S - 5, S - 1),
        (f"bytes=100-{S * 10}", 100, S - 1),
        (f"bytes={CHUNK}-{2 * CHUNK - 1}", CHUNK, 2 * CHUNK - 1),
    ],
)
def test_blob_range(reg, model, header, start, end):
    d = model.layer()
    r = get(reg, blob_path(d), headers={"Range": header})
    assert r.status_code == 206, f"Range {header}: status {r.status_code}, want 206"
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{S}"
    assert r.content == model.blob(d)[start : end + 1]
    assert reg.stats.ranges == [(d, start, end)]


@pytest.mark.parametrize("header", [f"bytes={S}-", f"bytes={S + 10}-{S + 20}", "bytes=-0"])
def test_blob_range_unsatisfiable(reg, model, header):
    r = get(reg, blob_path(model.layer()), headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{S}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-9", "bytes=9-1"])
def test_blob_range_ignored_when_not_simple(reg, model, header):
    d = model.layer()
    r = get(reg, blob_path(d), headers={"Range": header})
    assert r.status_code == 200
    assert r.content == model.blob(d)


def test_blob_unknown_and_invalid(reg):
    r = get(reg, blob_path("sha256:" + "1" * 64))
    assert r.status_code == 404
    assert r.content == b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
    r = get(reg, blob_path("sha256:XYZ"))
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"


def test_empty_blob(serve, tmp_path):
    root = tmp_path / "m"
    build_model(root, "library/empty", [0])
    reg = serve(root, chunk_size=CHUNK)
    d = json.loads(get(reg, "/v2/library/empty/manifests/latest").content)["layers"][0]["digest"]
    r = get(reg, blob_path(d).replace("smol", "empty"))
    assert (r.status_code, r.content) == (200, b"")
    assert get(reg, f"/v2/library/empty/blobs/{d}", headers={"Range": "bytes=0-"}).status_code == 416
    r = get(reg, f"/v2/library/empty/chunksums/{d}")
    assert (r.status_code, r.content) == (200, b"")


def test_keep_alive_reuses_connection(reg, model):
    # Many requests over one session must all succeed on one connection; a
    # server that mis-frames a body would break the next request.
    with requests.Session() as s:
        paths = [blob_path(model.layer()), "/v2/library/smol/manifests/latest"]
        paths.append(blob_path("sha256:" + "2" * 64))  # a 404 in between
        for path in paths * 3:
            s.get(reg.url + path, timeout=TIMEOUT, headers={"Range": "bytes=0-99"})
        r = s.get(reg.url + blob_path(model.layer(1)), timeout=TIMEOUT)
        assert r.content == model.blob(model.layer(1))


# -- chunksums ---------------------------------------------------------------


def parse_chunksums(body: bytes) -> list[tuple[str, int, int]]:
    out = []
    for line in body.decode().splitlines():
        digest, span = line.split()
        start, end = span.split("-")
        out.append((digest, int(start), int(end)))
    return out


@pytest.mark.parametrize("alg", ["sha256", "blake3"])
def test_chunksums(serve, model, alg):
    reg = serve(model.root, chunk_size=CHUNK, chunk_digest=alg)
    d = model.layer()
    data = model.blob(d)
    r = get(reg, f"/v2/library/smol/chunksums/{d}")
    assert r.status_code == 200
    assert r.headers["Content-Location"] == reg.url + blob_path(d)
    assert r.text.endswith("\n")
    chunks = parse_chunksums(r.content)
    assert [(s, e) for _, s, e in chunks] == [
        (0, CHUNK - 1),
        (CHUNK, 2 * CHUNK - 1),
        (2 * CHUNK, 3 * CHUNK - 1),
        (3 * CHUNK, S - 1),
    ]
    for digest, start, end in chunks:
        piece = data[start : end + 1]
        want = hashlib.sha256(piece).hexdigest() if alg == "sha256" else blake3.blake3(piece).hexdigest()
        assert digest == f"{alg}:{want}", f"chunk {start}-{end}: {digest}, want {alg}:{want}"
    # The Content-Location URL serves the bytes.
    assert requests.get(r.headers["Content-Location"], timeout=TIMEOUT).content == data


def test_chunksums_small_blob_is_one_chunk(serve, model):
    # Served for a blob of any size: the chunking threshold is the client's.
    reg = serve(model.root, chunk_size=CHUNK)
    d = model.layer(1)
    r = get(reg, f"/v2/library/smol/chunksums/{d}")
    assert r.status_code == 200
    assert parse_chunksums(r.content) == [(_sha256(model.blob(d)), 0, SIZES[1] - 1)]


def test_chunksums_memoized(reg, model, monkeypatch):
    calls = []
    compute = reg._compute_chunksums

    def counting(digest):
        calls.append(digest)
        return compute(digest)

    monkeypatch.setattr(reg, "_compute_chunksums", counting)
    d = model.layer()
    bodies = []
    threads = [
        threading.Thread(target=lambda: bodies.append(get(reg, f"/v2/library/smol/chunksums/{d}").content))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(bodies) == 4 and len(set(bodies)) == 1
    assert calls == [d]
    assert reg.chunksums(d) == bodies[0]
    assert reg.stats.requests["chunksums"] == 4


def test_chunksums_unknown_blob(reg):
    r = get(reg, "/v2/library/smol/chunksums/sha256:" + "3" * 64)
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


# -- faults ------------------------------------------------------------------


def test_fault_corrupt_chunk_full_blob(reg, model):
    d = model.layer()
    data = model.blob(d)
    reg.faults.corrupt_chunk = {1: 1}
    got = get(reg, blob_path(d)).content
    diff = [i for i in range(len(data)) if got[i] != data[i]]
    assert len(got) == len(data)
    assert len(diff) == 1 and CHUNK <= diff[0] < 2 * CHUNK, diff
    assert reg.faults.corrupt_chunk == {1: 0}
    assert get(reg, blob_path(d)).content == data


def test_fault_corrupt_chunk_ranges(reg, model):
    d = model.layer()
    data = model.blob(d)
    reg.faults.corrupt_chunk = {2: 2}

    def fetch(start, end):
        return get(reg, blob_path(d), headers={"Range": f"bytes={start}-{end}"}).content

    assert fetch(0, CHUNK - 1) == data[:CHUNK]  # other chunk: clean, not counted
    assert reg.faults.corrupt_chunk[2] == 2
    lo, hi = 2 * CHUNK + 100, 2 * CHUNK + 200  # inside chunk 2
    assert fetch(lo, hi) != data[lo : hi + 1]
    assert reg.faults.corrupt_chunk[2] == 1
    assert fetch(2 * CHUNK, 3 * CHUNK - 1) != data[2 * CHUNK : 3 * CHUNK]
    assert reg.faults.corrupt_chunk[2] == 0
    assert fetch(2 * CHUNK, 3 * CHUNK - 1) == data[2 * CHUNK : 3 * CHUNK]


def test_fault_cut_after(reg, model):
    d = model.layer()
    small = model.layer(1)  # 500 bytes: shorter than the cut, served whole
    reg.faults.set(cut_after=1000, cut_times=2)
    assert get(reg, blob_path(small)).content == model.blob(small)
    assert reg.faults.cut_times == 2
    for _ in range(2):
        with pytest.raises(requests.exceptions.RequestException):
            _ = get(reg, blob_path(d)).content
    assert reg.faults.cut_times == 0
    assert get(reg, blob_path(d)).content == model.blob(d)
    assert reg.stats.blob_bytes_sent == SIZES[1] + 2 * 1000 + SIZES[0]


def test_fault_cut_after_partial_bytes_arrive(reg, model):
    d = model.layer()
    reg.faults.cut_after = 4096  # cut_times defaults to one response
    r = get(reg, blob_path(d), stream=True)
    got = bytearray()
    with pytest.raises(requests.exceptions.RequestException):
        for piece in r.iter_content(1024):
            got += piece
    assert bytes(got) == model.blob(d)[:4096]
    assert get(reg, blob_path(d)).content == model.blob(d)


def test_fault_stall_then_rest(reg, model):
    d = model.layer()
    reg.faults.set(stall_s=0.05, stall_times=1, stall_after=100)
    assert get(reg, blob_path(d)).content == model.blob(d)
    assert reg.faults.stall_times == 0


def test_fault_stall_read_timeout_and_stop_aborts(reg, model):
    d = model.layer()
    reg.faults.set(stall_s=300.0, stall_times=1, stall_after=100)
    r = requests.get(reg.url + blob_path(d), stream=True, timeout=(TIMEOUT, 0.2))
    assert r.status_code == 200
    got = bytearray()
    with pytest.raises(requests.exceptions.ConnectionError):
        # one byte at a time: urllib3 holds back a partial larger read
        for piece in r.iter_content(1):
            got += piece
    assert bytes(got) == model.blob(d)[:100]
    thread = reg.thread
    reg.stop()  # must not wait out the 300 s stall
    assert not thread.is_alive()
    assert not reg._conns


@pytest.mark.parametrize("status, times", [(500, 2), (429, 1), (503, 1)])
def test_fault_status(reg, model, status, times):
    d = model.layer()
    reg.faults.status_times = {status: times}
    # HEAD is not a GET: it does not use up the fault.
    assert requests.head(reg.url + blob_path(d), timeout=TIMEOUT).status_code == 200
    for _ in range(times):
        r = get(reg, blob_path(d))
        assert r.status_code == status
        assert r.content == b'{"errors":[{"code":"UNAVAILABLE","message":"try again"}]}'
        assert r.headers.get("Retry-After") == ("0" if status == 429 else None)
    assert get(reg, blob_path(d)).status_code == 200
    assert reg.faults.status_times == {status: 0}
    # manifests are not blob GETs
    reg.faults.status_times = {500: 1}
    assert get(reg, "/v2/library/smol/manifests/latest").status_code == 200
    assert reg.faults.status_times == {500: 1}


def test_fault_ignore_range(reg, model):
    d = model.layer()
    reg.faults.ignore_range = True
    r = get(reg, blob_path(d), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200
    assert "Content-Range" not in r.headers
    assert r.content == model.blob(d)
    assert reg.stats.ranges == [(d, 0, S - 1)]


def test_fault_throttle_still_correct(reg, model):
    d = model.layer(1)
    reg.faults.throttle_bps = 50_000  # 500 bytes: about 10 ms
    assert get(reg, blob_path(d)).content == model.blob(d)


def test_fault_throttle_limits(reg, model):
    d = model.layer()
    reg.faults.throttle_bps = 1000
    r = get(reg, blob_path(d), stream=True)
    got = 0
    deadline = time.monotonic() + 0.3
    for piece in r.iter_content(64):
        got += len(piece)
        if time.monotonic() > deadline:
            break
    r.close()
    # Unthrottled, all of the 197608 bytes would have arrived at once.
    assert 0 < got < S // 2


def test_fault_no_chunksums(reg, model):
    reg.faults.no_chunksums = True
    r = get(reg, f"/v2/library/smol/chunksums/{model.layer()}")
    assert r.status_code == 404
    assert reg.stats.requests["chunksums"] == 1


def test_fault_chunksums_override(reg, model):
    d = model.layer()
    reg.faults.chunksums_override[d] = "sha256:abc 0-9\nsha256:def 5-20\n"
    r = get(reg, f"/v2/library/smol/chunksums/{d}")
    assert (r.status_code, r.text) == (200, "sha256:abc 0-9\nsha256:def 5-20\n")
    assert r.headers["Content-Location"] == reg.url + blob_path(d)
    # also for a digest the registry does not have
    ghost = "sha256:" + "4" * 64
    reg.faults.chunksums_override[ghost] = "garbage"
    assert get(reg, f"/v2/library/smol/chunksums/{ghost}").text == "garbage"


def test_fault_content_location(reg, model):
    reg.faults.content_location = "http://elsewhere.invalid/blob"
    r = get(reg, f"/v2/library/smol/chunksums/{model.layer()}")
    assert r.headers["Content-Location"] == "http://elsewhere.invalid/blob"


def test_fault_routes_999(reg):
    reg.faults.routes["/v2/library/BOOM/manifests/latest"] = (999, b'{"error": "boom"}')
    r = get(reg, "/v2/library/BOOM/manifests/latest")
    assert r.status_code == 999
    assert r.content == b'{"error": "boom"}'
    assert reg.stats.requests["manifest"] == 1
    # answered before anything else, even for a path that exists
    reg.faults.routes["/v2/library/smol/manifests/latest"] = (500, b"nope")
    assert get(reg, "/v2/library/smol/manifests/latest").status_code == 500


def test_fault_only_digest(reg, model):
    target, other = model.layer(0), model.layer(1)
    reg.faults.set(only_digest=target, status_times={500: 1}, corrupt_chunk={0: 1})
    assert get(reg, blob_path(other)).content == model.blob(other)
    assert get(reg, blob_path(target)).status_code == 500
    assert get(reg, blob_path(target)).content != model.blob(target)
    assert get(reg, blob_path(target)).content == model.blob(target)


def test_fault_redirect_blobs(serve, reg, model):
    cdn = serve(model.root, chunk_size=CHUNK)
    reg.faults.redirect_blobs = cdn.url
    d = model.layer()
    r = get(reg, blob_path(d), headers={"Range": "bytes=0-9"})
    assert [h.status_code for h in r.history] == [307]
    assert (r.status_code, r.content) == (206, model.blob(d)[:10])
    assert r.url == cdn.url + blob_path(d)
    assert cdn.stats.requests["blob"] == 1


def test_faults_set_and_reset(reg):
    with pytest.raises(AttributeError):
        reg.faults.set(no_such_switch=1)
    reg.faults.set(ignore_range=True, throttle_bps=5, status_times={500: 1})
    reg.faults.reset()
    assert reg.faults == testing_faults.Faults()


# -- stats -------------------------------------------------------------------


def test_stats(reg, model):
    d = model.layer()
    get(reg, "/v2/library/smol/manifests/latest")
    get(reg, blob_path(d))
    get(reg, blob_path(d), headers={"Range": "bytes=0-9"})
    get(reg, f"/v2/library/smol/chunksums/{d}")
    requests.post(reg.url + f"/v2/library/smol/blobs/uploads/?digest={d}", timeout=TIMEOUT)
    assert reg.stats.requests == {"manifest": 1, "blob": 2, "chunksums": 1, "upload": 1}
    assert reg.stats.blob_bytes_sent == S + 10
    assert reg.stats.ranges == [(d, 0, S - 1), (d, 0, 9)]
    assert [status for _, _, status in reg.stats.log] == [200, 200, 206, 200, 202]
    reg.stats.reset()
    assert (reg.stats.requests, reg.stats.blob_bytes_sent, reg.stats.ranges, reg.stats.log) == ({}, 0, [], [])


# -- pushing -----------------------------------------------------------------


def _upload(reg, ns_model: str, data: bytes, *, digest: str | None = None, body=None) -> requests.Response:
    digest = digest or _sha256(data)
    r = requests.post(reg.url + f"/v2/{ns_model}/blobs/uploads/?digest={digest}", timeout=TIMEOUT)
    assert r.status_code == 202
    loc = r.headers["Location"]
    assert loc.startswith(f"/v2/{ns_model}/blobs/uploads/") and loc.endswith(f"?digest={digest}")
    return requests.put(reg.url + loc, data=data if body is None else body, timeout=TIMEOUT)


def test_push_flow(serve, tmp_path):
    root = tmp_path / "empty"
    reg = serve(root)
    layer = b"layer bytes " * 1000
    config = b'{"model_format":"gguf"}'

    bad = _upload(reg, "library/pushed", layer, digest=_sha256(b"something else"))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert not list((root / "blobs").iterdir())

    r = _upload(reg, "library/pushed", layer)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == _sha256(layer)
    # a chunked (streamed) request body works too
    r = _upload(reg, "library/pushed", config, body=iter([config[:5], config[5:]]))
    assert r.status_code == 201
    assert (root / "blobs" / _sha256(layer).replace(":", "-")).read_bytes() == layer

    # a blob that is there already: 202 and no Location
    r = requests.post(reg.url + f"/v2/library/pushed/blobs/uploads/?digest={_sha256(layer)}", timeout=TIMEOUT)
    assert r.status_code == 202 and "Location" not in r.headers

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.ollama.image.model",
                    "digest": _sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    r = requests.put(reg.url + "/v2/library/pushed/manifests/latest", data=manifest, timeout=TIMEOUT)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == _sha256(manifest)
    assert (root / "manifests/registry.local/library/pushed/latest").read_bytes() == manifest
    assert (root / "blobs" / _sha256(manifest).replace(":", "-")).read_bytes() == manifest
    r = get(reg, "/v2/library/pushed/manifests/latest")
    assert r.content == manifest
    assert get(reg, f"/v2/library/pushed/blobs/{_sha256(layer)}").content == layer
    assert reg.stats.requests["upload"] == 8


def test_push_manifest_rejected(reg, model):
    missing = {"layers": [{"digest": "sha256:" + "5" * 64, "size": 1}]}
    r = requests.put(reg.url + "/v2/library/x/manifests/latest", data=json.dumps(missing), timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    r = requests.put(reg.url + "/v2/library/x/manifests/latest", data=b"not json", timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert reg.find_manifest("library", "x", "latest") is None


def test_push_manifest_keeps_existing_copy(serve, tmp_path):
    root = tmp_path / "m"
    build_model(root, "example.com/library/smol:latest", [10])
    new = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    reg = serve(root)
    r = requests.put(reg.url + "/v2/Library/SMOL/manifests/LATEST", data=new, timeout=TIMEOUT)
    assert r.status_code == 201
    assert (root / "manifests/example.com/library/smol/latest").read_bytes() == new
    assert not (root / "manifests/registry.local").exists()


def test_push_unknown_upload(reg):
    url = reg.url + "/v2/library/x/blobs/uploads/nope?digest=sha256:" + "6" * 64
    r = requests.put(url, data=b"x", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


# -- life cycle --------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        return True
    except ConnectionRefusedError:
        return False


def test_stop_closes_everything(model):
    reg = TestRegistry(model.root).start()
    assert reg.url.startswith("http://127.0.0.1:")
    port, thread = reg.port, reg.thread
    session = requests.Session()  # leaves an idle keep-alive connection
    assert session.get(reg.url + "/v2/library/smol/manifests/latest", timeout=TIMEOUT).status_code == 200
    idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)  # never sends a request
    reg.stop()
    assert not thread.is_alive()
    assert not reg._conns
    assert not _port_open(port)
    reg.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = reg.url
    idle.close()
    session.close()


def test_stop_while_client_does_not_read(serve, tmp_path):
    root = tmp_path / "big"
    build_model(root, "library/big", [32 << 20])  # more than the socket buffers hold
    reg = TestRegistry(root).start()
    d = json.loads(get(reg, "/v2/library/big/manifests/latest").content)["layers"][0]["digest"]
    sock = socket.create_connection(("127.0.0.1", reg.port), timeout=TIMEOUT)
    sock.sendall(f"GET /v2/library/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(12) == b"HTTP/1.1 200"
    reg.stop()
    assert not reg._conns
    sock.close()


def test_context_manager(model):
    with TestRegistry(model.root) as reg:
        thread, port = reg.thread, reg.port
        assert get(reg, "/v2/library/smol/manifests/latest").status_code == 200
    assert not thread.is_alive()
    assert not _port_open(port)


def test_bad_arguments(model):
    with pytest.raises(ValueError):
        TestRegistry(model.root, chunk_size=0)
    with pytest.raises(ValueError):
        TestRegistry(model.root, chunk_digest="md5")


# -- TLS ---------------------------------------------------------------------


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(crt), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return crt, key


def test_tls(serve, model, cert):
    crt, key = cert
    reg = serve(model.root, chunk_size=CHUNK, certfile=crt, keyfile=key)
    assert reg.url.startswith("https://127.0.0.1:")
    d = model.layer()
    data = model.blob(d)
    with requests.Session() as s:
        s.verify = str(crt)
        s.trust_env = False  # else REQUESTS_CA_BUNDLE would replace s.verify
        assert s.get(reg.url + "/v2/library/smol/manifests/latest", timeout=TIMEOUT).content == model.data
        assert s.get(reg.url + blob_path(d), timeout=TIMEOUT).content == data
        r = s.get(reg.url + blob_path(d), headers={"Range": f"bytes={CHUNK}-"}, timeout=TIMEOUT)
        assert (r.status_code, r.content) == (206, data[CHUNK:])
        r = s.get(reg.url + f"/v2/library/smol/chunksums/{d}", timeout=TIMEOUT)
        assert r.headers["Content-Location"] == reg.url + blob_path(d)
        reg.faults.corrupt_chunk = {0: 1}
        assert s.get(reg.url + blob_path(d), timeout=TIMEOUT).content != data
        reg.faults.cut_after = 10
        with pytest.raises(requests.exceptions.RequestException):
            _ = s.get(reg.url + blob_path(d), timeout=TIMEOUT).content
        assert s.get(reg.url + blob_path(d), timeout=TIMEOUT).content == data
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(reg.url + "/v2/", timeout=TIMEOUT, verify=True)  # untrusted certificate


# -- build_model and the command line ----------------------------------------


def test_build_model_deterministic(tmp_path):
    a = build_model(tmp_path / "a", "example.com/library/m:v1", [1000, 1000, 9 << 20], seed=3)
    b = build_model(tmp_path / "b", "example.com/library/m:v1", [1000, 1000, 9 << 20], seed=3)
    c = build_model(tmp_path / "c", "example.com/library/m:v1", [1000, 1000, 9 << 20], seed=4)
    assert a == b != c
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    data = (tmp_path / "a/manifests/example.com/library/m/v1").read_bytes()
    assert _sha256(data) == a
    layers = json.loads(data)["layers"]
    assert [layer["size"] for layer in layers] == [1000, 1000, 9 << 20]
    assert layers[0]["digest"] != layers[1]["digest"]  # equal sizes, different bytes
    for layer in layers:
        blob = (tmp_path / "a/blobs" / layer["digest"].replace(":", "-")).read_bytes()
        assert _sha256(blob) == layer["digest"] and len(blob) == layer["size"]
    assert not [p for p in (tmp_path / "a").rglob("*.tmp")]


@pytest.mark.parametrize(
    "name, path",
    [
        ("smol", "registry.local/library/smol/latest"),
        ("ns/smol:v2", "registry.local/ns/smol/v2"),
        ("127.0.0.1:5000/library/smol:latest", "127.0.0.1:5000/library/smol/latest"),
    ],
)
def test_build_model_names(tmp_path, name, path):
    build_model(tmp_path, name, [1], config=False)
    manifest = json.loads((tmp_path / "manifests" / path).read_bytes())
    assert "config" not in manifest


def test_build_model_bad_name(tmp_path):
    with pytest.raises(ValueError):
        build_model(tmp_path, "", [1])


@pytest.mark.parametrize(
    ("text", "want"),
    [("1G", 1 << 30), ("512M", 512 << 20), ("256K", 256 << 10), ("256KiB", 256 << 10), ("1GiB", 1 << 30), ("4096", 4096),
     ("4096B", 4096), (" 2 g ", 2 << 30)],
)
def test_parse_size(text, want):
    assert parse_size(text) == want, f"parse_size({text!r})"


@pytest.mark.parametrize("text", ["", "1.5G", "-1M", "12X", "G", "1GB", "8mb", "1kB"])
def test_parse_size_rejects(text):
    # Decimal-looking units are refused rather than read as binary ones.
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_make_main(tmp_path, capsys):
    argv = [str(tmp_path / "x"), "example.com/library/x:v1", "--size", "1K,2KiB,3", "--seed", "5"]
    assert testing_main.make_main(argv) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == build_model(tmp_path / "y", "example.com/library/x:v1", [1024, 2048, 3], seed=5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_main(model, sig):
    code = "import sys; from chunkpull.testing.main import serve_main; sys.exit(serve_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model.root), "--chunk-size", "64KiB"]
        + ["--status", "500:1", "--corrupt-chunk", "0"],
        stdout=subprocess.PIPE,
        text=True,
        # import chunkpull from where this test did (src/ or site-packages)
        env={**os.environ, "PYTHONPATH": str(Path(testing.__file__).parents[2])},
    )
    try:
        # readline cannot hang for long: the watchdog kills a silent server.
        watchdog = threading.Timer(TIMEOUT, proc.kill)
        watchdog.start()
        url = proc.stdout.readline().strip()
        watchdog.cancel()
        assert url.startswith("http://127.0.0.1:")
        d = model.layer()
        assert requests.get(url + blob_path(d), timeout=TIMEOUT).status_code == 500
        assert requests.get(url + blob_path(d), timeout=TIMEOUT).content != model.blob(d)
        assert requests.get(url + blob_path(d), timeout=TIMEOUT).content == model.blob(d)
        lines = requests.get(url + f"/v2/library/smol/chunksums/{d}", timeout=TIMEOUT).text.splitlines()
        assert len(lines) == 4
        proc.send_signal(sig)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# -- testdata and layering ---------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_testdata_is_current(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends src/
    spec = importlib.util.spec_from_file_location("make_testdata", REPO / "testdata" / "make_testdata.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.generate(tmp_path)
    for tree in ("models", "registry"):
        assert _tree(tmp_path / tree) == _tree(REPO / "testdata" / tree), (
            f"testdata/{tree} is stale: run python testdata/make_testdata.py"
        )
    assert sum(len(b) for t in ("models", "registry") for b in _tree(tmp_path / t).values()) < 1 << 20


def test_testdata_registry_serves_chunked(serve, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(REPO / "testdata" / "registry", root)
    reg = serve(root, chunk_size=CHUNK)
    manifest = get(reg, "/v2/library/chunked/manifests/latest").json()
    (layer,) = manifest["layers"]
    assert layer["size"] == 200 * 1024
    lines = get(reg, f"/v2/library/chunked/chunksums/{layer['digest']}").text.splitlines()
    assert len(lines) == 4
    assert get(reg, "/v2/library/smol/manifests/latest").status_code == 200


