"""Resume records and removals that must not fail or leak: record formats, full disks, rm during a pull.

All against the built-in registry over real sockets.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest

from chunkpull.core.digest import Digest
from chunkpull.store.cache import DiskCache

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


@pytest.fixture(autouse=True)
def _frequent_records(monkeypatch):
    # These tests read what a record holds mid-pull: a busy disk would put
    # records on their slow pace (every 5 s), after the pull has ended.
    from chunkpull.engine.blob import BlobPull

    monkeypatch.setattr(BlobPull, "RECORD_EVERY_S", 0.5)
    monkeypatch.setattr(BlobPull, "RECORD_SLOW_S", 0.5)


def _interrupted_pull(up, make_registry, cache: DiskCache | None = None):
    """Pull until about half of the layer's chunks are recorded done, then cancel; return the registry used."""
    layer = _layer(up)
    up.faults.set(throttle_bps=256 << 10, only_digest=layer)  # a 256 KiB chunk a second per stream
    reg = make_registry(cache)
    cancel = threading.Event()
    t = threading.Thread(target=lambda: _swallow(reg.pull, up.ref(), cancel=cancel))
    t.start()
    state = reg.cache.ingest_dir / f"sha256-{layer[7:]}.state"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and t.is_alive():
        try:
            if bin(int(json.loads(state.read_text())["done"] or "0", 16)).count("1") >= 4:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    cancel.set()
    t.join(30)
    up.faults.reset()
    return reg


def _swallow(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the cancelled pull's error is expected
        pass


def test_first_record_is_written_when_the_first_chunk_is_done(upstream, make_registry):
    up = upstream([3 * MIB], seed=60)
    layer = _layer(up)
    # Every chunk but the first drips: the record must exist all the same
    # (a record only every 0.5 s would wait for a second chunk forever).
    up.faults.set(drip_chunk={i: 1 for i in range(1, 12)}, only_digest=layer)
    reg = make_registry(max_streams=1, stall_timeout_s=600.0, timeout_s=(5.0, 600.0))
    cancel = threading.Event()
    t = threading.Thread(target=lambda: _swallow(reg.pull, up.ref(), cancel=cancel))
    t.start()
    state = reg.cache.ingest_dir / f"sha256-{layer[7:]}.state"
    try:
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.exists(), "no resume record after the first chunk"
        assert json.loads(state.read_text())["done"] == "0100", "the record does not say chunk 0 is done"
    finally:
        cancel.set()
        t.join(30)


@pytest.mark.slow
def test_a_record_from_another_hash_format_is_rehashed_from_disk(upstream, make_registry):
    up = upstream([3 * MIB], seed=61)
    layer = _layer(up)
    reg = _interrupted_pull(up, make_registry)
    state = reg.cache.ingest_dir / f"sha256-{layer[7:]}.state"
    rec = json.loads(state.read_text())
    done_before = rec["done"]
    # As after an OpenSSL upgrade: the saved state's format is not this build's.
    rec.update(hash_format="openssl-0-sha256ctx-0", hash_state="ab" * 56, hashed=256 << 10)
    state.write_text(json.dumps(rec))
    up.stats.reset()
    reg2 = make_registry(reg.cache)
    reg2.pull(up.ref())
    assert reg2.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)
    refetched = {s for d, s, _e in up.stats.ranges if d == layer}
    bits = bytes.fromhex(done_before)
    done = {i * (256 << 10) for i in range(12) if bits[i >> 3] & (1 << (i & 7))}
    assert done and not refetched & done, "chunks the record marked done were fetched again"


def test_disk_full_while_writing_a_record_does_not_fail_the_blob(upstream, make_registry, monkeypatch):
    up = upstream([3 * MIB], seed=62)
    real = Path.write_text
    refused = []

    def write_text(self, *args, **kwargs):
        if self.name.endswith(".tmp") and ".state." in self.name:
            refused.append(self.name)
            real(self, "")  # the file exists (opened), then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    reg = make_registry()
    reg.pull(up.ref())
    layer = _layer(up)
    assert refused, "no record was written"
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)
    assert not list(reg.cache.ingest_dir.glob("*.tmp")), "a temporary record file was left behind"


def test_rm_during_another_pull_frees_the_blobs_when_it_ends(upstream, make_registry):
    up = upstream([3 * MIB], seed=63)
    up.add("registry.local/library/other:latest", [2 * MIB], seed=64)
    reg = make_registry()
    reg.pull(up.ref())  # smol is here
    smol_layer = _layer(up)
    # Pull "other" slowly; remove smol meanwhile.
    other_layer = json.loads(up.manifest("registry.local/library/other:latest"))["layers"][0]["digest"]
    up.faults.set(throttle_bps=2 * MIB, only_digest=other_layer)
    t = threading.Thread(target=reg.pull, args=(up.ref("registry.local/library/other:latest"),))
    t.start()
    deadline = time.monotonic() + 30
    while not any(d == other_layer for d, _s, _e in up.stats.ranges) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reg.unlink(up.ref()) is True
    still = reg.cache.blob_path(Digest.parse(smol_layer)).exists()
    t.join(60)
    assert not reg.cache.blob_path(Digest.parse(smol_layer)).exists(), "the removed model's blob leaked"
    assert reg.cache.blob_path(Digest.parse(other_layer)).exists(), "the other pull's blob went too"
    print(f"rm during a pull: blob {'deferred' if still else 'removed at once'}")


def test_a_deferred_removal_survives_a_crash(upstream, make_registry, tmp_path):
    up = upstream([3 * MIB], seed=65)
    reg = make_registry()
    reg.pull(up.ref())
    layer = Digest.parse(_layer(up))
    # As if a pull held the lock during rm and then the machine went down.
    with reg.cache.prune_lock(exclusive=False):
        assert reg.unlink(up.ref()) is True
    assert reg.cache.blob_path(layer).exists()
    fresh = DiskCache(reg.cache.root)
    assert layer in fresh.prune_deferred()
    assert not fresh.blob_path(layer).exists()
    assert not (fresh.root / ".chunkpull" / "prune-pending").exists()


@pytest.mark.slow
def test_prune_partials_removes_abandoned_work_files_only(upstream, make_registry):
    up = upstream([3 * MIB], seed=66)
    reg = _interrupted_pull(up, make_registry)
    partials = list(reg.cache.ingest_dir.glob("*.partial"))
    assert partials
    held = reg.cache.ingest(Digest.parse("sha256:" + "1" * 64), 10)  # a "running" pull's work file
    try:
        removed = reg.cache.prune_partials()
        assert sorted(removed) == sorted(partials)
        assert held.path.exists(), "a work file in use was removed"
        assert not list(reg.cache.ingest_dir.glob(f"{partials[0].stem}*"))
    finally:
        held.discard()


def test_a_chunk_that_stays_bad_keeps_the_good_ones(upstream, make_registry):
    from chunkpull.errors import IntegrityError

    up = upstream([3 * MIB], seed=67)
    layer = _layer(up)
    up.faults.set(corrupt_chunk={7: 100}, only_digest=layer)  # chunk 7 is always served corrupted
    reg = make_registry(verify="blob")
    with pytest.raises(IntegrityError, match="still fail their digests"):
        reg.pull(up.ref())
    assert not reg.cache.blob_path(Digest.parse(layer)).exists()
    assert list(reg.cache.ingest_dir.glob("*.partial")), "the verified chunks were thrown away"
    up.faults.reset()
    up.stats.reset()
    reg.pull(up.ref())
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == up.blob(layer)
    starts = sorted(s for d, s, _e in up.stats.ranges if d == layer)
    assert starts == [7 * (256 << 10)], f"the next pull fetched {starts}, want only the bad chunk"
