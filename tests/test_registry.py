"""Registry client against the built-in TestRegistry, over real sockets.

Layers are small (a 3 MiB layer in 256 KiB chunks, a 100 KB layer below the
1 MiB chunking threshold, and the config blob) so that every path of a
multi-GB pull runs in milliseconds.  Faults come from ``TestRegistry.faults``
and are observed through ``TestRegistry.stats``; nothing is mocked and no
assertion depends on timing.
"""

from __future__ import annotations

import collections
import faulthandler
import hashlib
import json
import shutil
import socket
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest
import requests

import dataclasses

from chunkpull.engine import assembler as assembler_mod
from chunkpull.store.cache import DiskCache
from chunkpull.core.digest import Digest
from chunkpull.errors import (
    IncompletePullError,
    IntegrityError,
    InvalidManifestError,
    ModelNotFoundError,
    RegistryError,
    TransportError,
)
from chunkpull.core.names import Name
from chunkpull.core.progress import BYTES, CACHED, DONE, ERROR, RESUMED, START, Progress

from chunkpull.testing import build_model
from chunkpull.engine.transport import Backoff
from conftest import CHUNK_SIZE, CHUNKING_THRESHOLD, MODEL

pytestmark = pytest.mark.integration

BIG = 3 << 20  # 12 chunks of 256 KiB
SMALL = 100_000  # below the chunking threshold: one request
SIZES = [BIG, SMALL]
NAME = Name("registry.local", "library", "smol", "latest")
MANIFEST_PATH = "/v2/library/smol/manifests/latest"


# A hung pull must fail the run loudly, not stall CI: dump every thread's
# stack and exit if one test runs this long (never reached by a healthy test).
HANG_GUARD_S = 120


@pytest.fixture(autouse=True)
def hang_guard():
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# -- helpers ---------------------------------------------------------------------


class Events:
    """A thread-safe progress recorder."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[Progress] = []

    def __call__(self, ev: Progress) -> None:
        with self.lock:
            self.events.append(ev)

    def of(self, digest: str) -> list[Progress]:
        return [e for e in self.events if e.digest == digest]

    def states(self, digest: str) -> list[str]:
        return [e.state for e in self.of(digest)]


def manifest_doc(up, name: str = MODEL) -> dict:
    return json.loads(up.manifest(name))


def layer_digests(up, name: str = MODEL) -> list[str]:
    doc = manifest_doc(up, name)
    return [layer["digest"] for layer in doc["layers"]]


def all_blob_digests(up, name: str = MODEL) -> list[str]:
    doc = manifest_doc(up, name)
    return layer_digests(up, name) + ([doc["config"]["digest"]] if doc.get("config") else [])


def blob_names(cache: DiskCache) -> set[str]:
    return {p.name for p in cache.blobs_dir.iterdir()}


def assert_pulled(cache: DiskCache, up, name: str = MODEL) -> None:
    """Every blob of the model is in the cache with the upstream's bytes, and the manifest is linked."""
    for d in all_blob_digests(up, name):
        path = cache.blob_path(Digest.parse(d))
        assert path.exists(), f"blob {d[:19]} missing from the cache"
        assert path.read_bytes() == up.blob(d), f"blob {d[:19]} differs from the upstream's"
    n = local_name(up.ref(name))
    assert cache.manifest_bytes(n) == up.manifest(name), "linked manifest differs from the upstream's"
    assert cache.resolve(n) == Digest.parse(up.digests[name])
    leftovers = [p.name for p in cache.ingest_dir.iterdir()]
    assert leftovers == [], f"work files left after a successful pull: {leftovers}"


def local_name(ref: str) -> Name:
    """The name a pull of ref is stored under: its host is the registry's host:port."""
    return Name.parse(ref.split("://", 1)[1])


def assert_nothing_committed(cache: DiskCache, digest: str, manifest_digest: str) -> None:
    assert cache.get(Digest.parse(digest)) is None, f"blob {digest[:19]} was committed"
    assert Digest.parse(digest).filename not in blob_names(cache)
    assert cache.get(Digest.parse(manifest_digest)) is None, "the manifest blob was stored"
    links = list(cache.links())
    assert links == [], f"a manifest was linked after a failed pull: {links}"


def range_starts(up, digest: str) -> collections.Counter:
    return collections.Counter(start for d, start, _end in up.stats.ranges if d == digest)


def chunksums_requests(up) -> list[str]:
    return [path for method, path, _status in up.stats.log if "/chunksums/" in path]


def raises_cause(excinfo, kind) -> bool:
    """True when the error, or every per-blob error of an IncompletePullError, is a kind."""
    err = excinfo.value
    if isinstance(err, IncompletePullError):
        return all(isinstance(e, kind) for e in err.errors.values())
    return isinstance(err, kind)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- plain pulls -------------------------------------------------------------------


def test_pull_not_cached(upstream, make_registry, hashio_backend):
    up = upstream(SIZES, seed=1)
    reg = make_registry()
    m = reg.pull(up.ref()).manifest
    assert str(m.digest) == up.digests[MODEL]
    assert m.data == up.manifest()
    assert [str(b.digest) for b in m.blobs()] == all_blob_digests(up)
    assert_pulled(reg.cache, up)
    assert reg.resolve_local(up.ref()).digest == m.digest


def test_pull_cached(upstream, make_registry):
    up = upstream(SIZES, seed=2)
    reg = make_registry()
    reg.pull(up.ref())
    up.stats.reset()
    ev = Events()
    reg.pull(up.ref(), progress=ev)
    assert up.stats.blob_bytes_sent == 0, f"second pull fetched {up.stats.blob_bytes_sent} blob bytes, want 0"
    assert up.stats.requests["blob"] == 0 and up.stats.requests["chunksums"] == 0
    for d in all_blob_digests(up):
        assert ev.states(d) == [CACHED], f"events for cached {d[:19]} = {ev.states(d)}, want [cached]"
    assert_pulled(reg.cache, up)


def test_pull_mixed(upstream, make_registry):
    up = upstream(SIZES, seed=3)
    reg = make_registry()
    big, small = layer_digests(up)
    reg.cache.put(Digest.parse(big), up.blob(big))
    ev = Events()
    reg.pull(up.ref(), progress=ev)
    assert range_starts(up, big) == {}, "the pre-cached layer was fetched"
    assert range_starts(up, small) == {0: 1}
    assert ev.states(big) == [CACHED]
    assert ev.states(small)[0] == START and ev.states(small)[-1] == DONE
    assert_pulled(reg.cache, up)


def test_pull_twice_concurrently_same_cache(upstream, make_registry):
    up = upstream(SIZES, seed=4)
    reg = make_registry()
    errors = []

    def pull():
        try:
            reg.pull(up.ref())
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert_pulled(reg.cache, up)


# -- progress --------------------------------------------------------------------------


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("fault", ["none", "corrupt", "cut"])
def test_progress_events(upstream, make_registry, verify, fault):
    up = upstream(SIZES, seed=5)
    big = layer_digests(up)[0]
    reg = make_registry(verify=verify)
    pre = all_blob_digests(up)[1]  # the small layer comes from the cache
    reg.cache.put(Digest.parse(pre), up.blob(pre))
    up.faults.only_digest = big
    if fault == "corrupt":
        up.faults.corrupt_chunk = {2: 1, 7: 1}
    elif fault == "cut":
        up.faults.set(cut_after=100_000, cut_times=3)
    ev = Events()
    m = reg.pull(up.ref(), progress=ev).manifest

    blobs = {str(b.digest): b.size for b in m.blobs()}
    first_bytes = next((i for i, e in enumerate(ev.events) if e.state == BYTES), len(ev.events))
    announced = {e.digest: e.state for e in ev.events[:first_bytes] if e.state in (START, CACHED)}
    assert set(announced) == set(blobs), f"announced before any bytes: {sorted(announced)}, want every blob {sorted(blobs)}"
    assert announced[pre] == CACHED and announced[big] == START
    for d, total in blobs.items():
        evs = ev.of(d)
        assert all(e.total == total for e in evs), f"{d[:19]}: totals vary: {[e.total for e in evs]}"
        assert all(e.n >= 0 for e in evs), f"{d[:19]}: negative delta in {[e.n for e in evs]}"
        assert [e for e in evs if e.state == ERROR] == []
        if d == pre:
            continue
        got = sum(e.n for e in evs if e.state == BYTES)
        assert got == total, f"{d[:19]}: byte deltas sum to {got}, want {total} (re-fetched bytes count once)"
        states = [e.state for e in evs]
        assert states[0] == START and states[-1] == DONE, f"{d[:19]}: states {states}"


# -- chunking decisions --------------------------------------------------------------


def test_small_layers_one_request_large_layers_chunked(upstream, make_registry):
    up = upstream(SIZES, seed=6)
    big, small = layer_digests(up)
    config = all_blob_digests(up)[-1]
    reg = make_registry()
    reg.pull(up.ref())
    asked = chunksums_requests(up)
    assert asked == [f"/v2/library/smol/chunksums/{big}"], f"chunksums requested for {asked}, want only the large layer"
    assert range_starts(up, small) == {0: 1}, "the small layer did not come in one request"
    assert range_starts(up, config) == {0: 1}
    starts = range_starts(up, big)
    want = {k * CHUNK_SIZE: 1 for k in range(BIG // CHUNK_SIZE)}
    assert starts == want, f"large layer ranges {sorted(starts.items())}, want one per 256 KiB chunk"


def test_threshold_boundary(upstream, make_registry):
    """A layer of exactly the threshold is chunked; one byte less is not."""
    up = upstream([CHUNKING_THRESHOLD, CHUNKING_THRESHOLD - 1], seed=7, config=False)
    at, below = layer_digests(up)
    make_registry().pull(up.ref())
    asked = chunksums_requests(up)
    assert asked == [f"/v2/library/smol/chunksums/{at}"], f"chunksums requested for {asked}"


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("chunk_digest", ["sha256", "blake3"])
def test_verify_modes_and_chunk_digests(upstream, make_registry, hashio_backend, verify, chunk_digest):
    up = upstream(SIZES, seed=8, chunk_digest=chunk_digest)
    reg = make_registry(verify=verify)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert len(chunksums_requests(up)) == 1


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_tiny_chunks(upstream, make_registry, verify):
    """1-byte chunks from the registry still assemble the right blob."""
    up = upstream([48], seed=9, config=False, chunk_size=1)
    reg = make_registry(chunking_threshold=1, verify=verify)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    layer = layer_digests(up)[0]
    assert range_starts(up, layer) == {i: 1 for i in range(48)}


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_no_chunksums_endpoint(upstream, make_registry, monkeypatch, verify):
    up = upstream(SIZES, seed=10)
    up.faults.no_chunksums = True
    big = layer_digests(up)[0]
    # The client splits the layer itself; a small split size makes it several ranges.
    reg = make_registry(verify=verify)
    reg.config = dataclasses.replace(reg.config, split_chunk_size=1 << 20)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert range_starts(up, big) == {0: 1, 1 << 20: 1, 2 << 20: 1}


# -- bad chunksums -------------------------------------------------------------------


def _sums(up, digest: str) -> list[str]:
    return requests.get(f"{up.url}/v2/library/smol/chunksums/{digest}", timeout=10).text.splitlines()


def _bad_sums(kind: str, lines: list[str]) -> str:
    if kind == "gap":
        del lines[3]
    elif kind == "overlap":
        d, rng = lines[3].split()
        s, e = map(int, rng.split("-"))
        lines[3] = f"{d} {s - 1}-{e}"
    elif kind == "missing-end":
        del lines[-1]
    elif kind == "past-end":
        d, rng = lines[-1].split()
        s, e = map(int, rng.split("-"))
        lines[-1] = f"{d} {s}-{e + 1}"
    elif kind == "bad-line":
        lines[5] = lines[5].replace(" ", " x")
    elif kind == "bad-digest":
        lines[5] = "sha256:zz" + lines[5][9:]
    elif kind == "extra-field":
        lines[0] += " extra"
    elif kind == "empty":
        lines = []
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["gap", "overlap", "missing-end", "past-end", "bad-line", "bad-digest", "extra-field", "empty"])
def test_bad_chunksums_fail_the_layer(upstream, make_registry, kind):
    up = upstream(SIZES, seed=11)
    big = layer_digests(up)[0]
    up.faults.chunksums_override = {big: _bad_sums(kind, _sums(up, big))}
    reg = make_registry()
    with pytest.raises((IntegrityError, IncompletePullError)) as info:
        reg.pull(up.ref())
    assert raises_cause(info, IntegrityError), f"{kind}: pull raised {info.value!r}, want IntegrityError"
    assert_nothing_committed(reg.cache, big, up.digests[MODEL])
    assert range_starts(up, big) == {}, f"{kind}: chunks were fetched from a bad chunk list"


# -- manifests and names -----------------------------------------------------------------

INVALID_MANIFESTS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="blank"),
    pytest.param(b"null", id="null"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"schemaVersion":2', id="truncated-json"),
    pytest.param(b"[]", id="json-list"),
    pytest.param(b'"manifest"', id="json-string"),
    pytest.param(b'{"schemaVersion":2}', id="no-layers-key"),
    pytest.param(b'{"schemaVersion":2,"layers":[]}', id="empty-layers"),
    pytest.param(b'{"schemaVersion":2,"layers":null}', id="null-layers"),
    pytest.param(b'{"schemaVersion":2,"layers":[null]}', id="null-layer"),
    pytest.param(b'{"layers":[{"digest":"sha256:' + b"a" * 64 + b'","size":1},null]}', id="second-layer-null"),
    pytest.param(b'{"layers":[{"size":1}]}', id="layer-without-digest"),
    pytest.param(b'{"layers":[{"digest":"sha256:xyz","size":1}]}', id="layer-bad-digest"),
    pytest.param(b'{"layers":[{"digest":"sha256:' + b"a" * 64 + b'"}]}', id="layer-without-size"),
    pytest.param(b'{"layers":[{"digest":"sha256:' + b"a" * 64 + b'","size":-1}]}', id="layer-negative-size"),
    pytest.param(b'{"layers":[{"digest":"sha256:' + b"a" * 64 + b'","size":"1"}]}', id="layer-size-string"),
]


@pytest.mark.parametrize("body", INVALID_MANIFESTS)
def test_invalid_manifest(upstream, make_registry, body):
    up = upstream(SIZES, seed=12)
    up.faults.routes = {MANIFEST_PATH: (200, body)}
    reg = make_registry()
    with pytest.raises(InvalidManifestError):
        reg.pull(up.ref())
        pytest.fail(f"pull with manifest {body!r} did not raise")
    assert up.stats.requests["blob"] == 0
    assert list(reg.cache.links()) == [] and blob_names(reg.cache) == set()


@pytest.mark.parametrize(
    "status, body",
    [
        pytest.param(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', id="multiple-form"),
        pytest.param(404, b'{"errors":[{"code":"manifest_unknown","message":"x"}]}', id="lowercase"),
        pytest.param(404, b'{"code":"Manifest_Unknown","error":"x"}', id="single-form-mixed-case"),
    ],
)
def test_manifest_unknown_is_model_not_found(upstream, make_registry, status, body):
    up = upstream(SIZES, seed=13)
    up.faults.routes = {MANIFEST_PATH: (status, body)}
    reg = make_registry()
    with pytest.raises(ModelNotFoundError):
        reg.pull(up.ref())
    assert up.stats.requests["manifest"] == 1, "a 404 was retried"


def test_unknown_model(upstream, make_registry):
    up = upstream(SIZES, seed=14)
    reg = make_registry()
    name = up.ref("registry.local/library/unknown:latest")
    with pytest.raises(ModelNotFoundError) as info:
        reg.pull(name)
    assert str(info.value) == f'model "{name}" not found'
    assert up.stats.requests["manifest"] == 1


def test_manifest_error_message(upstream, make_registry):
    up = upstream(SIZES, seed=15)
    up.faults.routes = {MANIFEST_PATH: (400, b"boom")}
    reg = make_registry()
    with pytest.raises(RegistryError) as info:
        reg.pull(up.ref())
    want = f"request error {up.url}{MANIFEST_PATH}: registry responded with status 400: boom"
    assert str(info.value) == want, f"error = {str(info.value)!r}, want {want!r}"


def test_resolve_by_digest(upstream, make_registry):
    up = upstream(SIZES, seed=16)
    digest = up.digests[MODEL]
    reg = make_registry()
    m = reg.resolve(f"{up.ref()}@{digest}")
    assert str(m.digest) == digest and m.data == up.manifest()
    assert up.stats.log[-1][1] == f"/v2/library/smol/manifests/{digest}", "a pin is fetched from /manifests/<digest> (distribution spec)"
    # A registry that keeps manifests only as blobs (Ollama's) is asked there next.
    up.faults.routes = {f"/v2/library/smol/manifests/{digest}": (404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')}
    assert reg.resolve(f"{up.ref()}@{digest}").data == up.manifest()
    assert up.stats.log[-1][1] == f"/v2/library/smol/blobs/{digest}", "the Ollama /blobs/ form is the fallback"
    up.faults.routes = {}
    other = up.ref("registry.local/library/smol:other")
    reg.pull(f"{other}@{digest}")
    assert reg.cache.resolve(local_name(other)) == Digest.parse(digest)
    unknown = "sha256:" + "0" * 64
    with pytest.raises(ModelNotFoundError):
        reg.resolve(f"{up.ref()}@{unknown}")


def test_resolve_by_digest_rejects_other_bytes(upstream, make_registry):
    """A registry that answers a digest request with other manifest bytes is caught."""
    up = upstream(SIZES, seed=17)
    digest = up.digests[MODEL]
    other = "sha256:" + hashlib.sha256(b"x").hexdigest()
    up.faults.routes = {f"/v2/library/smol/manifests/{other}": (200, up.manifest())}
    reg = make_registry()
    with pytest.raises(IntegrityError):
        reg.resolve(f"{up.ref()}@{other}")
    assert reg.resolve(f"{up.ref()}@{digest}").data == up.manifest()


# -- remote errors and network failures -------------------------------------------------


def test_retries_use_injected_sleep(upstream, make_registry):
    """Pulls wait through the injected sleep, so tests never wait for real."""
    up = upstream([SMALL], seed=42)
    sleeps: list[float] = []
    up.faults.status_times = {500: 2}
    reg = make_registry(backoff=Backoff(attempts=4), sleep=sleeps.append)
    reg.pull(up.ref())
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps), f"injected sleep got {sleeps}, want 2 backoff delays"


def test_remote_5xx_transient(upstream, make_registry):
    up = upstream(SIZES, seed=18)
    reg = make_registry()
    # attempts - 1 failures in all: even if every one hits the same request, it succeeds.
    up.faults.status_times = {500: 2, 503: reg.transport.backoff.attempts - 3}
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert up.faults.status_times == {500: 0, 503: 0}, "the 5xx faults never fired"


@pytest.mark.parametrize("sizes", [[SMALL], [BIG]], ids=["one-request", "chunked"])
def test_remote_5xx_persistent(upstream, make_registry, sizes):
    up = upstream(sizes, seed=19, config=False)
    layer = layer_digests(up)[0]
    up.faults.status_times = {500: 10_000}
    reg = make_registry()
    attempts = reg.transport.backoff.attempts
    with pytest.raises(RegistryError) as info:
        reg.pull(up.ref())
    assert info.value.status == 500
    n_chunks = -(-sizes[0] // CHUNK_SIZE) if sizes[0] >= CHUNKING_THRESHOLD else 1
    served = up.stats.requests["blob"]
    assert 0 < served <= attempts * n_chunks, f"{served} blob requests for {n_chunks} chunks, want at most {attempts} each"
    assert_nothing_committed(reg.cache, layer, up.digests[MODEL])


def test_connection_refused(make_registry):
    reg = make_registry()
    name = f"http://127.0.0.1:{closed_port()}/library/smol:latest"
    with pytest.raises(TransportError) as info:
        reg.pull(name)
    assert "request error http://127.0.0.1:" in str(info.value) and "/manifests/latest" in str(info.value)


def test_blob_host_unreachable(upstream, make_registry):
    """Blobs redirect to a host that refuses connections: TransportError, nothing committed."""
    up = upstream(SIZES, seed=20)
    up.faults.redirect_blobs = f"http://127.0.0.1:{closed_port()}"
    reg = make_registry()
    with pytest.raises((TransportError, IncompletePullError)) as info:
        reg.pull(up.ref())
    assert raises_cause(info, TransportError), f"pull raised {info.value!r}, want TransportError"
    for d in layer_digests(up):
        assert_nothing_committed(reg.cache, d, up.digests[MODEL])


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("layer", [0, 1], ids=["chunked", "one-request"])
def test_cut_connections_recover(upstream, make_registry, verify, layer):
    up = upstream(SIZES, seed=21)
    target = layer_digests(up)[layer]
    reg = make_registry(verify=verify)
    # attempts - 1 cuts: even if every cut hits one chunk, its last attempt succeeds.
    cuts = reg.transport.backoff.attempts - 1
    up.faults.set(cut_after=50_000, cut_times=cuts, only_digest=target)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert up.faults.cut_times < cuts, "the cut fault never fired"
    starts = range_starts(up, target)
    if layer == 0:
        # A retry resumes inside its chunk instead of fetching the chunk again.
        resumed = [s for s in starts if s % CHUNK_SIZE]
        assert resumed, f"no retry resumed inside a chunk: {sorted(starts)}"
    else:
        # A one-request blob resumes where the cut left it, not from byte 0
        # (its stream hash holds every byte before that point).
        assert sorted(starts) == [0, 50_000], f"want a resume at the cut: {sorted(starts)}"


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_server_ignores_range(upstream, make_registry, verify):
    up = upstream(SIZES, seed=22)
    up.faults.ignore_range = True
    reg = make_registry(verify=verify)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    if r.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {r.stderr.strip()[-200:]}")
    return cert, key


@pytest.mark.parametrize("ca_env", [None, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_https_insecure_self_signed(upstream, make_registry, self_signed, monkeypatch, ca_env):
    """https+insecure skips verification, even when a CA bundle is set in the environment."""
    cert, key = self_signed
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    if ca_env:
        monkeypatch.setenv(ca_env, requests.certs.where())
    up = upstream(SIZES, seed=23, certfile=cert, keyfile=key)
    assert up.url.startswith("https://")
    reg = make_registry()
    reg.pull(up.ref(scheme="https+insecure"))
    assert_pulled(reg.cache, up)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_https_verifying_rejects_self_signed(upstream, make_registry, self_signed, scheme):
    cert, key = self_signed
    up = upstream(SIZES, seed=24, certfile=cert, keyfile=key)
    reg = make_registry()
    with pytest.raises(TransportError) as info:
        reg.pull(up.ref(scheme=scheme))
    if scheme == "https":
        cause = info.value.__cause__
        assert isinstance(cause, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(info.value), f"not a TLS error: {info.value!r}"
    assert list(reg.cache.links()) == []


# -- push ---------------------------------------------------------------------------


def upload_puts(up) -> list[str]:
    return [path for method, path, _ in up.stats.log if method == "PUT" and "/blobs/uploads/" in path]


def test_push_then_pull_back(upstream, make_registry, tmp_path):
    local = make_registry()
    build_model_digest = build_model(local.cache.root, MODEL, SIZES, seed=25)
    target = upstream(None)  # an empty registry
    dest = target.ref()
    local.push(dest, source=MODEL)
    m = local.resolve_local(MODEL)
    for b in m.blobs():
        assert target.blob_path(str(b.digest)).read_bytes() == local.cache.blob_path(b.digest).read_bytes()
    assert len(upload_puts(target)) == len(m.blobs()), f"uploads: {upload_puts(target)}"
    # A second push uploads nothing new.
    target.stats.reset()
    local.push(dest, source=MODEL)
    assert upload_puts(target) == [], f"second push uploaded {upload_puts(target)}"
    # Pull it back into another cache.
    other = make_registry()
    got = other.pull(dest).manifest
    assert str(got.digest) == build_model_digest
    for b in got.blobs():
        assert other.cache.blob_path(b.digest).read_bytes() == local.cache.blob_path(b.digest).read_bytes()


def test_push_partial_upstream(upstream, make_registry):
    """Blobs the registry already has are skipped; the rest are uploaded."""
    local = make_registry()
    up = upstream(SIZES, seed=26)
    local.pull(up.ref())
    m = local.resolve_local(up.ref())
    target = upstream(None)
    big = layer_digests(up)[0]
    shutil.copy(up.blob_path(big), target.blob_path(big))
    local.push(target.ref(), source=up.ref())
    uploaded = upload_puts(target)
    assert len(uploaded) == len(m.blobs()) - 1, f"uploads: {uploaded}"
    assert not any(big in path for path in uploaded)


def test_push_unknown_local_model(upstream, make_registry):
    target = upstream(None)
    with pytest.raises(ModelNotFoundError):
        make_registry().push(target.ref("registry.local/library/nothing:latest"))
    assert target.stats.requests["upload"] == 0


def test_push_rejected(upstream, make_registry):
    local = make_registry()
    up = upstream(SIZES, seed=27)
    local.pull(up.ref())
    target = upstream(None)
    target.faults.routes = {"/v2/library/smol/blobs/uploads/": (403, b'{"errors":[{"code":"DENIED","message":"no"}]}')}
    with pytest.raises(RegistryError) as info:
        local.push(target.ref(), source=up.ref())
    assert (info.value.status, info.value.code) == (403, "DENIED")


# -- unlink -------------------------------------------------------------------------------


def test_unlink_prunes_unshared_blobs(upstream, make_registry):
    up = upstream([SMALL, 2000], seed=28, name="registry.local/library/a:latest")
    # Same seed and first size: layer 0 is shared between a and b.
    up.add("registry.local/library/b:latest", [SMALL, 3000], seed=28)
    reg = make_registry()
    a, b = up.ref("registry.local/library/a:latest"), up.ref("registry.local/library/b:latest")
    ma, mb = reg.pull(a).manifest, reg.pull(b).manifest
    shared = ma.layers[0].digest
    assert shared == mb.layers[0].digest
    only_a = {ma.digest, ma.layers[1].digest, ma.config.digest}

    assert reg.unlink(a) is True
    assert [n for n, _ in reg.cache.links()] == [local_name(b)]
    have = blob_names(reg.cache)
    assert shared.filename in have, "a blob still used by b was pruned"
    assert not ({d.filename for d in only_a} & have), "blobs only a used were kept"
    assert {d.filename for d in (mb.digest, *[x.digest for x in mb.blobs()])} <= have

    assert reg.unlink(a) is False
    with pytest.raises(ModelNotFoundError):
        reg.resolve_local(a)
    assert reg.unlink(b.upper().replace("HTTP://", "http://")) is True, "unlink is not case-insensitive"
    assert blob_names(reg.cache) == set()
    assert list(reg.cache.manifests_dir.iterdir()) == []


# -- integrity ------------------------------------------------------------------------------


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("k", [0, 5, 11])
def test_corrupted_chunk_is_refetched(upstream, make_registry, hashio_backend, verify, k):
    up = upstream(SIZES, seed=29)
    big = layer_digests(up)[0]
    up.faults.only_digest = big
    up.faults.corrupt_chunk = {k: 1}
    reg = make_registry(verify=verify)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert up.faults.corrupt_chunk == {k: 0}, "the corruption never fired"
    starts = range_starts(up, big)
    want = {i * CHUNK_SIZE: 2 if i == k else 1 for i in range(BIG // CHUNK_SIZE)}
    assert starts == want, f"fetches per chunk start {sorted(starts.items())}, want only chunk {k} twice"


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_corrupted_small_layer_is_refetched(upstream, make_registry, verify):
    up = upstream(SIZES, seed=30)
    small = layer_digests(up)[1]
    up.faults.only_digest = small
    up.faults.corrupt_chunk = {0: 1}
    reg = make_registry(verify=verify)
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert range_starts(up, small) == {0: 2}


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("layer", [0, 1], ids=["chunked", "one-request"])
def test_persistently_corrupted_chunk_fails(upstream, make_registry, verify, layer):
    up = upstream(SIZES, seed=31)
    target = layer_digests(up)[layer]
    up.faults.only_digest = target
    up.faults.corrupt_chunk = {0: 100}
    reg = make_registry(verify=verify)
    with pytest.raises((IntegrityError, IncompletePullError)) as info:
        reg.pull(up.ref())
    assert raises_cause(info, IntegrityError), f"pull raised {info.value!r}, want IntegrityError"
    assert_nothing_committed(reg.cache, target, up.digests[MODEL])
    fetched = range_starts(up, target)[0]
    assert 2 <= fetched <= 4, f"chunk 0 fetched {fetched} times, want a bounded number of re-fetches"


def _serve_under_wrong_digest(up, index: int) -> str:
    """Make the upstream's manifest name layer `index` by a digest its bytes do not have.

    The bytes (and so the chunksums the server computes from them) are the
    real ones: every chunk verifies, only the whole-blob digest does not.
    """
    real = layer_digests(up)[index]
    fake = "sha256:" + hashlib.sha256(b"not these bytes" + real.encode()).hexdigest()
    shutil.copy(up.blob_path(real), up.blob_path(fake))
    data = up.manifest().replace(real.encode(), fake.encode())
    (up.root / "manifests" / "registry.local" / "library" / "smol" / "latest").write_bytes(data)
    up.blob_path("sha256:" + hashlib.sha256(data).hexdigest()).write_bytes(data)
    up.digests[MODEL] = "sha256:" + hashlib.sha256(data).hexdigest()
    return fake


@pytest.mark.parametrize("verify", ["blob", "chunks"])
@pytest.mark.parametrize("layer", [0, 1], ids=["chunked", "one-request"])
def test_chunks_verify_but_whole_digest_does_not(upstream, make_registry, hashio_backend, verify, layer):
    up = upstream(SIZES, seed=32)
    fake = _serve_under_wrong_digest(up, layer)
    reg = make_registry(verify=verify)
    with pytest.raises((IntegrityError, IncompletePullError)) as info:
        reg.pull(up.ref())
    assert raises_cause(info, IntegrityError), f"pull raised {info.value!r}, want IntegrityError"
    assert_nothing_committed(reg.cache, fake, up.digests[MODEL])
    assert not list(reg.cache.ingest_dir.glob(Digest.parse(fake).filename + "*")), "untrustworthy work file kept"


# -- memory -------------------------------------------------------------------------------


def _traced_peak(reg, ref: str) -> int:
    tracemalloc.start()
    try:
        reg.pull(ref)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_pull_memory_bounded(upstream, make_registry):
    """The Python-heap peak of a pull does not grow with the blob: buffers are reused, not allocated per read."""
    small, big = 16 << 20, 64 << 20
    up = upstream([small], seed=33, config=False, chunk_size=4 << 20, name="registry.local/library/small:latest")
    up.add("registry.local/library/big:latest", [big], seed=34, config=False)
    streams, buffer_size, memory_budget = 4, 1 << 20, 8 << 20
    peaks = {}
    for name in ("small", "big"):
        reg = make_registry(max_streams=streams, buffer_size=buffer_size, memory_budget=memory_budget)
        ref = up.ref(f"registry.local/library/{name}:latest")
        peaks[name] = _traced_peak(reg, ref)
        assert_pulled(reg.cache, up, f"registry.local/library/{name}:latest")
    # The piece pool (memory_budget), one small-blob buffer per worker, the
    # in-order hash's read-back buffer, and slack for sockets and bookkeeping.
    budget = memory_budget + streams * buffer_size + getattr(assembler_mod, "_HASH_READ", 4 << 20) + (4 << 20)
    mib = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["big"] < budget, f"peak {mib} MiB, want below {budget >> 20} MiB for any blob size"
    assert peaks["big"] < peaks["small"] + (2 << 20), f"peak grew with the blob: {mib} MiB for 16 vs 64 MiB"


# -- more edges ---------------------------------------------------------------------------


def test_failed_pull_resumes_where_it_stopped(upstream, make_registry):
    """Chunks verified by a failed pull are not fetched again by the next one."""
    up = upstream(SIZES, seed=35)
    big = layer_digests(up)[0]
    reg = make_registry(verify="chunks", max_streams=1)
    up.faults.set(only_digest=big, corrupt_chunk={7: 100})
    with pytest.raises((IntegrityError, IncompletePullError)):
        reg.pull(up.ref())
    assert reg.cache.get(Digest.parse(big)) is None
    first = set(range_starts(up, big))
    up.faults.reset()
    up.stats.reset()
    ev = Events()
    reg.pull(up.ref(), progress=ev)
    assert_pulled(reg.cache, up)
    second = set(range_starts(up, big))
    assert 7 * CHUNK_SIZE in second, "the failed chunk was not fetched again"
    done_before = {s for s in first if s != 7 * CHUNK_SIZE}
    assert not (second & done_before), f"chunks verified by the failed pull were fetched again: {sorted(second & done_before)}"
    resumed = sum(e.n for e in ev.of(big) if e.state == RESUMED)
    fetched = sum(e.n for e in ev.of(big) if e.state == BYTES)
    assert resumed == len(done_before) * CHUNK_SIZE, f"resumed {resumed} bytes, want {len(done_before)} chunks"
    assert resumed + fetched == BIG, f"resumed pull reported {resumed} + {fetched} bytes for the layer, want {BIG}"


def test_empty_layer(upstream, make_registry):
    up = upstream([0, SMALL], seed=36)
    reg = make_registry()
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert reg.cache.get(Digest.parse(layer_digests(up)[0])).size == 0


def test_duplicate_layer_pulled_once(upstream, make_registry):
    up = upstream(SIZES, seed=37)
    doc = manifest_doc(up)
    doc["layers"].append(doc["layers"][0])
    data = json.dumps(doc).encode()
    up.faults.routes = {MANIFEST_PATH: (200, data)}
    reg = make_registry()
    m = reg.pull(up.ref()).manifest
    assert m.data == data
    big = layer_digests(up)[0]
    assert sum(range_starts(up, big).values()) == BIG // CHUNK_SIZE, "a layer listed twice was fetched twice"


@pytest.mark.parametrize("layer", [0, 1], ids=["chunked", "one-request"])
@pytest.mark.parametrize("delta", [-1, 1], ids=["size-too-small", "size-too-big"])
def test_manifest_size_disagrees_with_blob(upstream, make_registry, layer, delta):
    up = upstream(SIZES, seed=38)
    doc = manifest_doc(up)
    target = doc["layers"][layer]["digest"]
    doc["layers"][layer]["size"] += delta
    up.faults.routes = {MANIFEST_PATH: (200, json.dumps(doc).encode())}
    reg = make_registry()
    with pytest.raises((IntegrityError, TransportError, RegistryError, IncompletePullError)):
        reg.pull(up.ref())
    assert reg.cache.get(Digest.parse(target)) is None
    assert list(reg.cache.links()) == []


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_chunksums_content_location_elsewhere(upstream, make_registry, form):
    """Chunk bytes come from the Content-Location of the chunksums answer (a CDN)."""
    up = upstream(SIZES, seed=39)
    cdn = upstream(None, root=up.root)
    big = layer_digests(up)[0]
    path = f"/v2/library/smol/blobs/{big}"
    up.faults.content_location = f"{cdn.url}{path}" if form == "absolute" else path
    reg = make_registry()
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    if form == "absolute":
        assert range_starts(up, big) == {}, "chunks came from the registry, not the Content-Location"
        assert len(range_starts(cdn, big)) == BIG // CHUNK_SIZE
    else:
        assert len(range_starts(up, big)) == BIG // CHUNK_SIZE


def test_chunksums_content_location_unusable(upstream, make_registry):
    up = upstream(SIZES, seed=40)
    big = layer_digests(up)[0]
    up.faults.content_location = "ftp://example.com/blob"
    reg = make_registry()
    with pytest.raises(Exception) as info:
        reg.pull(up.ref())
    assert "Content-Location" in str(info.value), f"error does not explain: {info.value}"
    assert_nothing_committed(reg.cache, big, up.digests[MODEL])


def test_blob_redirect_to_cdn(upstream, make_registry):
    up = upstream(SIZES, seed=41)
    cdn = upstream(None, root=up.root)
    up.faults.redirect_blobs = cdn.url
    reg = make_registry()
    reg.pull(up.ref())
    assert_pulled(reg.cache, up)
    assert up.stats.blob_bytes_sent == 0 and cdn.stats.blob_bytes_sent >= BIG + SMALL


@pytest.mark.parametrize("name", ["", "ftp://host/library/smol", "http://127.0.0.1:1/library/../x", "smol@sha256:bad"])
def test_invalid_names(make_registry, name):
    from chunkpull.errors import InvalidNameError

    reg = make_registry()
    for call in (reg.pull, reg.resolve, reg.unlink, reg.resolve_local):
        with pytest.raises(InvalidNameError):
            call(name)
            pytest.fail(f"{call.__name__}({name!r}) did not raise")


@pytest.mark.parametrize("kwargs", [{"verify": "bogus"}, {"max_streams": -1}])  # 0 means adaptive
def test_bad_options(make_registry, kwargs):
    with pytest.raises(ValueError):
        make_registry(**kwargs)


def test_manifest_bytes_are_checked_against_docker_content_digest(upstream, make_registry):
    up = upstream(SIZES, seed=18)
    up.faults.manifest_digest_header = "sha256:" + "0" * 64  # what a cache that served other bytes would say
    reg = make_registry()
    with pytest.raises(IntegrityError, match="hashes to"):
        reg.pull(up.ref())
    assert not list(reg.cache.manifests_dir.rglob("latest")), "a manifest was linked from bytes that failed their digest"
    up.faults.manifest_digest_header = None
    reg.pull(up.ref())


def test_index_parsing_and_platform_choice():
    from chunkpull.core.index import Index, Platform, is_index

    entry = lambda d, plat: {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + d * 64, "size": 10, **plat}
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        entry("a", {"platform": {"os": "linux", "architecture": "amd64"}}),
        entry("b", {"platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}),
        entry("c", {"platform": {"os": "unknown", "architecture": "unknown"}}),
    ]}
    data = json.dumps(doc).encode()
    assert is_index(data) and is_index(b"{}", "application/vnd.docker.distribution.manifest.list.v2+json")
    assert not is_index(json.dumps({"layers": [], "config": {}}).encode())
    idx = Index.parse(data)
    assert idx.choose(Platform.parse("linux/amd64")).digest.hex == "a" * 64
    assert idx.choose(Platform.parse("linux/arm/v7")).digest.hex == "b" * 64
    assert idx.choose(Platform.parse("linux/arm")).digest.hex == "b" * 64  # no variant asked: any
    with pytest.raises(ModelNotFoundError, match="linux/arm/v6"):
        idx.choose(Platform.parse("linux/arm/v6"))
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(ValueError):
            Platform.parse(bad)
