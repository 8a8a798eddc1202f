"""Crash safety, resume, stalls and hostile input, over real sockets.

Every case runs a real pull against the built-in registry with a fault
switched on, and checks what a user would: the pull recovers or fails with a
clear error, nothing unverified sits under a final blob name, and the
upstream's counters show what was (not) fetched again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chunkpull import _hashio
from chunkpull.store.cache import DiskCache
from chunkpull.core.digest import Digest
from chunkpull.errors import (
    ChunkpullError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidManifestError,
    PullCancelledError,
    RegistryError,
)
from chunkpull.core.progress import Aggregator

pytestmark = pytest.mark.integration

MIB = 1 << 20
MODEL = "registry.local/library/smol:latest"


def _layer(up, name=MODEL) -> dict:
    return json.loads(up.manifest(name))["layers"][0]


def _final_blobs(cache: DiskCache) -> set[str]:
    return {p.name for p in cache.blobs_dir.iterdir()}


def _assert_blobs_verify(cache: DiskCache) -> None:
    """The invariant: every file under a final name hashes to its name."""
    for p in cache.blobs_dir.iterdir():
        d = Digest.parse(p.name)
        assert _hashio.sha256(p.read_bytes()) == d.raw, f"{p.name} does not hash to its name"


def _wait_for(predicate, timeout_s: float = 60.0) -> None:
    # A bound so a broken test fails instead of hanging; never a speed check.
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _record(cache: DiskCache) -> dict | None:
    for p in cache.ingest_dir.glob("*.state"):
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None
    return None


def _pull_in_child(ref: str, models: Path, **kwargs) -> subprocess.Popen:
    """Start a pull in another process (small chunking threshold, like the tests' clients)."""
    code = (
        "import sys; from chunkpull import Registry, DiskCache, Tuning; "
        f"Registry(DiskCache(sys.argv[1]), tuning=Tuning(chunking_threshold={1 << 20}), max_streams=4).pull(sys.argv[2])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", code, str(models), ref], env=env, **kwargs)


def _done_fraction(rec: dict | None, nchunks: int) -> float:
    if not rec:
        return 0.0
    bits = bytes.fromhex(rec["done"])
    return sum(bin(b).count("1") for b in bits) / nchunks


# -- resume ------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_kill_9_fetches_only_the_rest(upstream, make_registry, tmp_path):
    up = upstream([8 * MIB])
    # Per connection: the pull takes about 8 s, past a periodic record even at the slow pace (5 s).
    up.faults.throttle_bps = 128 << 10
    models = tmp_path / "models"
    child = _pull_in_child(up.ref(), models, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cache_dir = models / ".chunkpull" / "ingest"
        nchunks = 8 * MIB // (256 << 10)
        _wait_for(lambda: cache_dir.exists() and _done_fraction(_record(DiskCache(models)), nchunks) >= 0.4)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    cache = DiskCache(models)
    done = _done_fraction(_record(cache), nchunks)
    layer = _layer(up)
    assert f"sha256-{layer['digest'][7:]}" not in _final_blobs(cache), "an unfinished blob is under its final name"

    up.faults.throttle_bps = None
    up.stats.reset()
    reg = make_registry(cache)
    reg.pull(up.ref())
    fetched = up.stats.blob_bytes_sent - sum(b["size"] for b in [json.loads(up.manifest())["config"]])
    # Only what the record did not cover comes again (the record may lag the
    # kill, and chunks in flight come again, hence the slack).
    assert fetched <= layer["size"] * (1 - done) + 3 * MIB, f"fetched {fetched} after {done:.0%} was recorded done"
    assert fetched < layer["size"]
    _assert_blobs_verify(cache)
    assert not list(cache.ingest_dir.glob("*.partial"))


def test_resume_after_cancel_continues_the_hash(upstream, make_registry):
    up = upstream([4 * MIB])
    up.faults.throttle_bps = 2 * MIB
    reg = make_registry()
    cancel = threading.Event()
    agg = Aggregator()

    def watch(ev):
        agg(ev)
        if agg.totals()[0] >= 2 * MIB:
            cancel.set()

    with pytest.raises(PullCancelledError):
        reg.pull(up.ref(), progress=watch, cancel=cancel)
    rec = _record(reg.cache)
    assert rec is not None
    if _hashio.BACKEND == "native":  # only native hash states can be persisted
        assert rec["hashed"] > 0, "the record should carry the hashed prefix"
    up.faults.throttle_bps = None
    up.stats.reset()
    agg2 = Aggregator()
    reg.pull(up.ref(), progress=agg2)
    assert up.stats.blob_bytes_sent < 4 * MIB
    assert sum(l.resumed for l in agg2.layers()) > 0
    assert agg2.totals()[0] == agg2.totals()[1]
    _assert_blobs_verify(reg.cache)


@pytest.mark.parametrize("damage", ["garbage", "wrong-digest", "lies"], ids=["garbage", "wrong-digest", "claims-undone-chunks"])
def test_damaged_record_costs_a_refetch_never_a_wrong_blob(upstream, make_registry, damage):
    up = upstream([2 * MIB])
    layer = _layer(up)
    d = Digest.parse(layer["digest"])
    reg = make_registry()
    cache = reg.cache
    # A work file of zeros with a record that claims every chunk is done.
    ingest = cache.ingest(d, layer["size"])
    n = layer["size"] // (256 << 10)
    ingest.save_record("x", [True] * n, 0, None)
    rec = json.loads(ingest.state_path.read_text())
    if damage == "garbage":
        ingest.state_path.write_text("{not json")
    elif damage == "wrong-digest":
        rec["digest"] = "sha256:" + "0" * 64
        ingest.state_path.write_text(json.dumps(rec))
    else:
        from chunkpull.engine.blob import chunks_id as _chunks_id
        from chunkpull.core.chunks import parse_chunksums

        sums = parse_chunksums(up.server.chunksums(layer["digest"]), layer["size"])
        rec["chunks"] = _chunks_id(sums)
        ingest.state_path.write_text(json.dumps(rec))
    ingest.close()
    reg.pull(up.ref())
    _assert_blobs_verify(cache)
    assert cache.get(d) is not None


# -- stalls and stragglers ---------------------------------------------------


@pytest.mark.slow
def test_stalled_stream_is_cut_and_its_range_refetched(upstream, make_registry):
    up = upstream([4 * MIB])
    layer = _layer(up)
    # One response sends a little, then nothing for far longer than the
    # client's read timeout; the pull must not wait for it.
    up.faults.set(stall_s=60.0, stall_times=1, stall_after=64 << 10, only_digest=layer["digest"])
    reg = make_registry(stall_timeout_s=0.5, timeout_s=(5.0, 30.0))
    started = time.monotonic()
    reg.pull(up.ref())
    assert time.monotonic() - started < 30.0, "the stall was waited out, not detected"
    assert up.faults.stall_times == 0
    starts = [s for (dg, s, _e) in up.stats.ranges if dg == layer["digest"]]
    resumed = [s for s in starts if s % (256 << 10)]
    assert resumed, f"no range resumed mid-chunk after the stall: {sorted(starts)}"
    _assert_blobs_verify(reg.cache)


@pytest.mark.slow
def test_read_timeout_bounds_every_wait(upstream, make_registry):
    up = upstream([2 * MIB])
    layer = _layer(up)
    up.faults.set(stall_s=60.0, stall_times=2, stall_after=1024, only_digest=layer["digest"])
    # Monitor disabled (huge stall threshold): only the socket timeout is left.
    reg = make_registry(stall_timeout_s=1e9, timeout_s=(5.0, 0.5), max_streams=1)
    reg.pull(up.ref())
    _assert_blobs_verify(reg.cache)


# -- faults ------------------------------------------------------------------


def test_429_with_retry_after_is_retried(upstream, make_registry):
    up = upstream([2 * MIB])
    up.faults.status_times = {429: 2}
    reg = make_registry()
    reg.pull(up.ref())
    assert up.faults.status_times[429] == 0
    _assert_blobs_verify(reg.cache)


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_server_ignoring_range_still_gives_the_right_blob(upstream, make_registry, verify):
    up = upstream([3 * MIB], chunk_size=64 << 10)  # 48 chunks
    up.faults.ignore_range = True
    reg = make_registry(verify=verify)
    m = reg.pull(up.ref()).manifest
    _assert_blobs_verify(reg.cache)
    # One stream for the whole blob (plus what the first, abandoned answers
    # had in flight), not the ~24x of skipping to each of 48 chunks.
    assert up.stats.blob_bytes_sent < 8 * m.size


def test_cut_connections_resume_mid_chunk(upstream, make_registry):
    up = upstream([2 * MIB])
    up.faults.set(cut_after=100_000, cut_times=5)
    reg = make_registry()
    reg.pull(up.ref())
    assert up.faults.cut_times == 0
    _assert_blobs_verify(reg.cache)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def test_full_disk_fails_before_downloading(upstream, make_registry, tmp_path):
    up = upstream([3 * MIB])
    mnt = tmp_path / "small"
    if not _tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        reg = make_registry(DiskCache(mnt))
        with pytest.raises(InsufficientSpaceError) as info:
            reg.pull(up.ref())
        assert "need" in str(info.value) and "free" in str(info.value)
        layer = _layer(up)
        assert reg.cache.get(Digest.parse(layer["digest"])) is None
        assert not any(d == layer["digest"] for (d, _s, _e) in up.stats.ranges), "bytes moved before the space check"
        assert list(reg.cache.manifests_dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_free_space_is_checked_with_a_clear_message(upstream, make_registry, monkeypatch):
    up = upstream([3 * MIB])
    reg = make_registry()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(InsufficientSpaceError, match=r"need \d+ more bytes, 1024 free"):
        reg.pull(up.ref())


def test_models_dir_that_cannot_be_created_fails_clearly(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create models directory"):
        DiskCache(blocker / "models")


def test_read_only_models_dir_fails_clearly(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(OSError, match="cannot create models directory .*Read-only"):
            DiskCache(mnt / "models")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- concurrency between processes ------------------------------------------


@pytest.mark.slow
def test_two_processes_pulling_one_model_fetch_each_chunk_once(upstream, tmp_path):
    up = upstream([4 * MIB])
    up.faults.throttle_bps = 4 * MIB
    models = tmp_path / "models"
    procs = [_pull_in_child(up.ref(), models, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    layer = _layer(up)
    served = sum(e - s + 1 for (d, s, e) in up.stats.ranges if d == layer["digest"])
    assert served == layer["size"], f"layer bytes served {served}, want {layer['size']} (each chunk once)"
    _assert_blobs_verify(DiskCache(models))


def test_rm_during_a_pull_of_another_model_is_safe(upstream, make_registry):
    up = upstream([4 * MIB])
    up.add("registry.local/library/other:latest", [1 * MIB], seed=7)
    reg = make_registry()
    reg.pull(up.ref("registry.local/library/other:latest"))
    up.faults.throttle_bps = 4 * MIB
    errors = []

    def pull():
        try:
            reg.pull(up.ref())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    t = threading.Thread(target=pull)
    t.start()
    _wait_for(lambda: any(p.name.endswith(".partial") for p in reg.cache.ingest_dir.iterdir()))
    assert reg.unlink(up.ref("registry.local/library/other:latest"))
    t.join(120)
    assert not errors, errors
    reg.resolve_local(up.ref())
    _assert_blobs_verify(reg.cache)


# -- hostile input -----------------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param({"layers": [{"digest": "sha256:../../etc/passwd", "size": 1}]}, id="traversal-digest"),
        pytest.param({"layers": [{"digest": "md5:" + "0" * 32, "size": 1}]}, id="other-algorithm"),
        pytest.param({"layers": [{"digest": "sha256:" + "0" * 64, "size": -1}]}, id="negative-size"),
        pytest.param({"layers": [{"digest": "sha256:" + "0" * 64, "size": "12"}]}, id="string-size"),
        pytest.param({"layers": [{"digest": "blake3:" + "0" * 64, "size": 1}]}, id="blake3-layer"),
    ],
)
def test_hostile_manifests_are_refused(upstream, make_registry, manifest):
    up = upstream(None)
    up.faults.routes = {"/v2/library/evil/manifests/latest": (200, json.dumps(manifest).encode())}
    reg = make_registry()
    with pytest.raises(InvalidManifestError):
        reg.pull(up.ref("registry.local/library/evil:latest"))
    assert list(reg.cache.blobs_dir.iterdir()) == []
    assert list(reg.cache.manifests_dir.iterdir()) == []


def test_oversized_manifest_is_refused(upstream, make_registry):
    up = upstream(None)
    up.faults.routes = {"/v2/library/big/manifests/latest": (200, b" " * (5 * MIB))}
    reg = make_registry()
    with pytest.raises(RegistryError, match="limit"):
        reg.pull(up.ref("registry.local/library/big:latest"))


def test_oversized_chunksums_is_refused(upstream, make_registry):
    up = upstream([2 * MIB])
    layer = _layer(up)
    up.faults.chunksums_override = {layer["digest"]: "x" * (17 * MIB)}
    reg = make_registry()
    with pytest.raises(ChunkpullError, match="limit|larger"):
        reg.pull(up.ref())
    assert reg.cache.get(Digest.parse(layer["digest"])) is None


def test_chunk_digest_of_unknown_algorithm_is_refused(upstream, make_registry):
    up = upstream([2 * MIB])
    layer = _layer(up)
    body = f"md5:{'0' * 32} 0-{layer['size'] - 1}\n"
    up.faults.chunksums_override = {layer["digest"]: body}
    reg = make_registry()
    with pytest.raises(IntegrityError, match="line 1"):
        reg.pull(up.ref())
    assert reg.cache.get(Digest.parse(layer["digest"])) is None


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)"])
def test_unusable_content_location_is_refused(upstream, make_registry, location):
    up = upstream([2 * MIB])
    up.faults.content_location = location
    reg = make_registry()
    with pytest.raises(ChunkpullError, match="Content-Location"):
        reg.pull(up.ref())
    assert reg.cache.get(Digest.parse(_layer(up)["digest"])) is None


def test_content_location_on_another_host_is_followed(upstream, make_registry):
    up = upstream([2 * MIB])
    cdn = upstream(None, root=up.root)  # a second server on the same files: "another host"
    up.faults.content_location = None
    layer = _layer(up)
    up.faults.content_location = f"{cdn.url}/v2/library/smol/blobs/{layer['digest']}"
    reg = make_registry()
    reg.pull(up.ref())
    assert any(d == layer["digest"] for (d, _s, _e) in cdn.stats.ranges)
    assert not any(d == layer["digest"] for (d, _s, _e) in up.stats.ranges)
    _assert_blobs_verify(reg.cache)
