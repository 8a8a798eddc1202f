"""Mirrors as chunk sources: bytes from any mirror, trust from the origin.

Origin and mirrors are built-in registries serving the same files (a mirror
is another server on the same models directory), each with its own faults
and request log; one lies (every chunk corrupted), one 404s, one ignores
Range, one stalls.  The real docker-registry in proxy mode is a mirror too.
"""

from __future__ import annotations

import json

import pytest

from chunkpull.core.digest import Digest
from chunkpull.registry import PullReport
from chunkpull.testing import RegistryAuthMode

pytestmark = pytest.mark.integration

MIB = 1 << 20
CHUNK = 256 * 1024  # the test registries' chunk size (conftest.CHUNK_SIZE)


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


def _has(reg, up) -> bool:
    return reg.cache.blob_path(Digest.parse(_layer(up))).read_bytes() == up.blob(_layer(up))


def _total(up) -> int:
    doc = json.loads(up.manifest())
    return sum(d["size"] for d in [doc["config"], *doc["layers"]])


def _ranges(up, digest: str) -> int:
    return sum(1 for d, _s, _e in up.stats.ranges if d == digest)


def _stats(report: PullReport) -> dict:
    return {s.name: s for s in report.sources}


def test_a_healthy_mirror_serves_chunks_and_never_sees_the_origins_credentials(upstream, make_registry):
    mode = RegistryAuthMode("bearer", user="alice", password="s3cret")
    origin = upstream([4 * MIB], seed=200, auth=mode)
    mirror = upstream(None, root=origin.root)
    origin.faults.throttle_bps = 4 * MIB  # the mirror is the faster source
    reg = make_registry(mirrors=[mirror.url], credentials={origin.url.split("://")[1]: ("alice", "s3cret")})
    report = PullReport()
    reg.pull(origin.ref(), report=report)
    assert _has(reg, origin)
    by = _stats(report)
    assert by[mirror.url].bytes > 0 and by[mirror.url].chunks >= 1 and not by[mirror.url].demoted
    assert sum(s.bytes for s in report.sources) == _total(origin)  # every byte counted once, from one source
    assert _ranges(mirror, _layer(origin)) == by[mirror.url].chunks
    assert mirror.stats.auth and not [h for _p, h in mirror.stats.auth if h], "the mirror was sent an Authorization header"
    # Manifest and chunk list came from the origin only.
    assert not [p for m, p, _s in mirror.stats.log if "/manifests/" in p or "/chunksums/" in p]


def test_a_lying_mirror_is_caught_per_chunk_and_demoted(upstream, make_registry):
    origin = upstream([4 * MIB], seed=201)
    liar = upstream(None, root=origin.root)
    good = upstream(None, root=origin.root)
    liar.faults.corrupt_chunk = {k: 10**6 for k in range(16)}
    reg = make_registry(mirrors=[liar.url, good.url], max_streams=4)
    report = PullReport()
    reg.pull(origin.ref(), report=report)
    assert _has(reg, origin)
    by = _stats(report)
    assert by[liar.url].refused_chunks >= 1 and by[liar.url].bytes == 0
    assert "digest" in by[liar.url].demoted
    assert _ranges(liar, _layer(origin)) <= 4  # at most one per stream before it was dropped
    assert by[good.url].bytes + by[origin.url.split("://")[1]].bytes == _total(origin)


@pytest.mark.parametrize("fault, reason", [
    ({"status_times": {404: 10**6}}, "answered 404"),
    ({"ignore_range": True}, "ignores Range"),
    ({"stall_s": 30.0, "stall_times": 10**6}, "failed"),
], ids=["404", "ignores-range", "stalls"])
def test_a_failing_mirror_is_demoted_and_the_origin_finishes(upstream, make_registry, fault, reason):
    origin = upstream([3 * MIB], seed=202)
    bad = upstream(None, root=origin.root)
    bad.faults.set(**fault)
    reg = make_registry(mirrors=[bad.url], stall_timeout_s=0.5)
    report = PullReport()
    reg.pull(origin.ref(), report=report)
    assert _has(reg, origin)
    by = _stats(report)
    assert by[bad.url].demoted.startswith(reason) and by[bad.url].failures >= 1
    # Only verified bytes count: at most chunk 0 (a 200 answer to "bytes=0-…" is its start).
    assert by[bad.url].bytes <= CHUNK


def test_without_chunksums_a_lying_mirror_is_caught_by_the_blob_digest(upstream, make_registry):
    # Split here into 8 MiB ranges (no chunk digests): 3 of them, spread over both sources.
    origin = upstream([24 * MIB], seed=203)
    origin.faults.no_chunksums = True
    liar = upstream(None, root=origin.root)
    liar.faults.corrupt_chunk = {k: 10**6 for k in range(96)}
    reg = make_registry(mirrors=[liar.url])
    report = PullReport()
    reg.pull(origin.ref(), report=report)
    assert _has(reg, origin)
    by = _stats(report)
    assert by[liar.url].refused_chunks >= 1 and "blob digest" in by[liar.url].demoted


def test_mirrors_from_the_environment_and_hosts_toml(upstream, make_registry, tmp_path, monkeypatch):
    origin = upstream([2 * MIB], seed=204)
    env_mirror = upstream(None, root=origin.root)
    toml_mirror = upstream(None, root=origin.root)
    host = origin.url.split("://")[1]
    hosts = tmp_path / "hosts.d" / (host.replace(":", "_") + "_")
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(f'server = "{origin.url}"\n[host."{toml_mirror.url}"]\n  capabilities = ["pull", "resolve"]\n')
    monkeypatch.setenv("CHUNKPULL_HOSTS_DIR", str(tmp_path / "hosts.d"))
    monkeypatch.setenv("CHUNKPULL_MIRRORS", env_mirror.url)
    reg = make_registry()
    report = PullReport()
    reg.pull(origin.ref(), report=report)
    assert {s.name for s in report.sources} == {host, env_mirror.url, toml_mirror.url}
    assert _has(reg, origin)


def _wait_until_cached(url: str) -> None:
    """Wait (bounded) until a pull-through cache answers a ranged GET with 206: it has stored the blob."""
    import time

    import requests

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with requests.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=10) as r:
            if r.status_code == 206:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} was not cached within 30 s")


def test_docker_registry_in_proxy_mode_as_a_mirror_cold_and_warm(tmp_path, make_registry):
    from realregistries import pull_through_pair, require_distribution

    require_distribution()
    origin, cache = pull_through_pair(tmp_path)
    try:
        weights = bytes(range(256)) * (64 * 1024)  # 16 MiB
        _d, descs = origin.push_image("library/fleet", "v1", [weights], oci=True)
        name = f"http://127.0.0.1:{origin.port}/library/fleet:v1"
        digest = descs[0]["digest"]
        for attempt in ("cold", "warm"):
            reg = make_registry(mirrors=[cache.url])
            report = PullReport()
            reg.pull(name, report=report)
            assert reg.cache.blob_path(Digest.parse(digest)).read_bytes() == weights, attempt
            by = _stats(report)
            if attempt == "cold":
                # A cold cache answers a ranged GET with the whole blob (200) while it
                # fetches the blob for itself: demoted for this pull, the origin serves it.
                # (A 200 to "bytes=0-…" is the first range's answer, so it may serve that one.)
                assert by[cache.url].demoted == "ignores Range" or by[cache.url].bytes <= 8 * 1024 * 1024, by
                _wait_until_cached(f"{cache.url}/v2/library/fleet/blobs/{digest}")
            else:
                # Warm: it serves ranges and takes its share.
                assert by[cache.url].bytes > 0 and not by[cache.url].demoted, by
            assert sum(s.bytes for s in report.sources) >= len(weights)  # and the config blob
    finally:
        cache.stop()
        origin.stop()
