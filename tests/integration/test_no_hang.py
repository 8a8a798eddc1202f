"""No pull can hang, and a failing pull says what failed: drips, half-then-silence, cancel, bad encodings.

Every case runs against the built-in registry over real sockets with its
fault switches; the client gets a short stall timeout so the cases take
seconds, and pytest-timeout is the guard that would catch a hang.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from chunkpull.core.digest import Digest
from chunkpull.errors import InvalidNameError, PullCancelledError, TransportError

pytestmark = pytest.mark.integration

MIB = 1 << 20
STALL_S = 0.5  # the client's stall timeout in these tests (the default is 5 s)


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


@pytest.mark.slow
def test_a_chunk_that_drips_on_every_connection_ends_the_pull(upstream, make_registry):
    up = upstream([3 * MIB], seed=50)
    layer = _layer(up)
    up.faults.set(drip_chunk={5: 1}, only_digest=layer)  # chunk 5 comes at 1 byte/s, whoever asks
    reg = make_registry(stall_timeout_s=STALL_S)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        reg.pull(up.ref())
    elapsed = time.monotonic() - started
    text = str(info.value)
    # The error names the blob, the range and the registry, and says why.
    assert layer[:19] in text and "1310720-1572863" in text and up.url in text, text
    assert "minimum rate" in text or "stalled" in text, text
    assert not reg.cache.blob_path(Digest.parse(layer)).exists()
    print(f"drip: failed after {elapsed:.1f} s with stall timeout {STALL_S} s")


@pytest.mark.slow
def test_half_then_silence_ends_the_pull(upstream, make_registry):
    up = upstream([3 * MIB], seed=51)
    layer = _layer(up)
    # Every body: half of it, then nothing (until the registry stops).
    up.faults.set(stall_s=3600.0, stall_times=10**6, stall_after=1 << 40, only_digest=layer)
    reg = make_registry(stall_timeout_s=STALL_S)
    started = time.monotonic()
    with pytest.raises(TransportError, match="stalled"):
        reg.pull(up.ref())
    print(f"half-then-silence: failed after {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_a_dripping_chunksums_answer_ends_the_pull(upstream, make_registry):
    up = upstream([3 * MIB], seed=52)
    up.faults.drip_control_bps = 1
    reg = make_registry(stall_timeout_s=STALL_S)
    with pytest.raises(TransportError):
        reg.pull(up.ref())


def test_one_slow_chunk_is_not_a_failure(upstream, make_registry):
    # Above the floor, a slow chunk is only slow: the pull completes.
    up = upstream([3 * MIB], seed=53)
    layer = _layer(up)
    up.faults.set(drip_chunk={2: 512 << 10}, only_digest=layer)
    reg = make_registry(stall_timeout_s=STALL_S)
    reg.pull(up.ref())
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)


def test_cancel_stops_a_stalled_read_at_once(upstream, make_registry):
    up = upstream([3 * MIB], seed=54)
    layer = _layer(up)
    up.faults.set(stall_s=3600.0, stall_times=10**6, stall_after=64 << 10, only_digest=layer)
    # A long stall timeout: only the cancel can end these reads.
    reg = make_registry(stall_timeout_s=600.0, timeout_s=(5.0, 600.0))
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def pull() -> None:
        try:
            reg.pull(up.ref(), cancel=cancel)
        except BaseException as err:  # noqa: BLE001 - checked below
            outcome.append(err)

    t = threading.Thread(target=pull)
    t.start()
    deadline = time.monotonic() + 30
    while not any(d == layer for d, _s, _e in up.stats.ranges) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the reads are now stalled
    cancel.set()
    started = time.monotonic()
    t.join(30)
    latency = time.monotonic() - started
    assert not t.is_alive(), "the pull did not stop after cancel"
    assert outcome and isinstance(outcome[0], PullCancelledError), outcome
    # The work file stays, with a record, for the next pull.
    assert list(reg.cache.ingest_dir.glob("*.partial")) and list(reg.cache.ingest_dir.glob("*.state"))
    print(f"cancel during a stalled read: stopped after {latency:.2f} s")


def test_cancel_stops_a_stalled_manifest_read(upstream, make_registry):
    up = upstream([3 * MIB], seed=55)
    up.faults.drip_control_bps = 1
    reg = make_registry(stall_timeout_s=600.0, timeout_s=(5.0, 600.0))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(PullCancelledError):
        reg.pull(up.ref(), cancel=cancel)
    assert time.monotonic() - started < 30


def test_gzip_body_is_refused_at_the_headers_and_retried(upstream, make_registry):
    up = upstream([3 * MIB], seed=56)
    layer = _layer(up)
    up.faults.set(gzip_times=2, only_digest=layer)
    reg = make_registry()
    reg.pull(up.ref())
    assert up.faults.gzip_times == 0, "the fault never fired"
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)


def test_a_registry_that_always_gzips_fails_clearly(upstream, make_registry):
    up = upstream([3 * MIB], seed=57)
    up.faults.set(gzip_times=10**6, only_digest=_layer(up))
    reg = make_registry()
    with pytest.raises(TransportError, match="gzip-encoded"):
        reg.pull(up.ref())


def test_a_name_the_file_system_cannot_store_is_refused_before_any_request(make_registry, monkeypatch):
    reg = make_registry()
    monkeypatch.setattr(reg.transport, "get", lambda *a, **k: pytest.fail("a request went out for a name the disk cannot hold"))
    name = f"http://{'h' * 250}.example:5000/library/smol:latest"  # a valid name, but no file name of 263 bytes
    with pytest.raises(InvalidNameError, match="longer than"):
        reg.pull(name)
