"""The data path's central claims, each checked against a real TestRegistry over sockets.

- In the normal case nothing is read back from the work file: the whole-blob
  SHA-256 runs over the pieces while they are in memory.
- ``io="direct"`` writes the aligned pieces with O_DIRECT; a file system that
  refuses an O_DIRECT write falls back to the page cache and still commits.
- A 206 whose Content-Range names other bytes than the ones asked for is
  refused: bytes at the wrong offset are never written under a digest.
- Memory stays bounded by the piece pool, measured on RSS (the pool is an
  anonymous mapping, which tracemalloc cannot see).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys

import pytest
from conftest import child_env

from chunkpull import _hashio
from chunkpull.core.digest import Digest
from chunkpull.engine import BlobJob, PullConfig, Puller, Source
from chunkpull.errors import RegistryError
from chunkpull.testing import build_model

pytestmark = pytest.mark.integration

SIZES = [3 << 20]  # one chunked layer (12 chunks of 256 KiB) and the config blob


def pull_with_engine(reg, name: str, **config) -> Puller:
    """Resolve name and run the engine on its blobs with these settings; return the finished Puller."""
    ref = reg.parse(name)
    manifest = reg.resolve(name)
    settings = {"max_streams": 4, "chunking_threshold": 1 << 20, "stall_timeout_s": 30.0, **config}
    puller = Puller(PullConfig(**settings), reg.transport, reg.cache, [BlobJob(b, Source(ref.base_url, ref.verify_tls)) for b in manifest.blobs()], lambda ev: None, _never())
    puller.run()
    return puller


def _never():
    import threading

    return threading.Event()


def assert_blobs_match(reg, up) -> None:
    for digest in (l["digest"] for l in json.loads(up.manifest())["layers"]):
        path = reg.cache.blob_path(Digest.parse(digest))
        assert path.read_bytes() == up.blob(digest), f"blob {digest[:19]} differs from the registry's"


@pytest.mark.parametrize("verify", ["blob", "chunks"])
def test_nothing_is_read_back_in_the_normal_case(upstream, make_registry, verify):
    up = upstream(SIZES, seed=31)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), verify=verify)
    assert_blobs_match(reg, up)
    assert puller.stats.read_back_bytes == 0, f"{puller.stats.read_back_bytes} bytes were read back from the work file"
    assert puller.stats.direct_bytes + puller.stats.buffered_bytes == SIZES[0], puller.stats


def test_a_repair_reads_back_and_the_counter_sees_it(upstream, make_registry):
    # The control for the test above: a chunk corrupted in transit fails the
    # whole-blob digest, and finding it means reading the chunks back.
    up = upstream(SIZES, seed=32)
    up.faults.corrupt_chunk = {5: 1}
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), verify="blob")
    assert_blobs_match(reg, up)
    assert puller.stats.read_back_bytes >= SIZES[0], f"a repair read back only {puller.stats.read_back_bytes} bytes"


def _supports_o_direct(path) -> bool:
    probe = path / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def test_io_direct_writes_aligned_pieces_with_o_direct(upstream, make_registry, tmp_path):
    if not _supports_o_direct(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    up = upstream(SIZES, seed=33)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), io="direct")
    assert_blobs_match(reg, up)
    # Every chunk starts on a page and is a whole number of pages long.
    assert (puller.stats.direct_bytes, puller.stats.buffered_bytes) == (SIZES[0], 0), puller.stats


def test_io_buffered_never_uses_o_direct(upstream, make_registry):
    up = upstream(SIZES, seed=34)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), io="buffered")
    assert_blobs_match(reg, up)
    assert (puller.stats.direct_bytes, puller.stats.buffered_bytes) == (0, SIZES[0]), puller.stats


def test_refused_o_direct_write_falls_back_to_buffered(upstream, make_registry, tmp_path, monkeypatch):
    if not _supports_o_direct(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    # As FUSE or ecryptfs do: the open with O_DIRECT succeeds, the write says EINVAL.
    real = _hashio.pwrite_all
    refused = []

    def pwrite_all(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, data, offset)

    monkeypatch.setattr(_hashio, "pwrite_all", pwrite_all)
    up = upstream(SIZES, seed=35)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), io="auto")
    assert_blobs_match(reg, up)
    assert refused, "no O_DIRECT write was attempted"
    assert (puller.stats.direct_bytes, puller.stats.buffered_bytes) == (0, SIZES[0]), puller.stats


def test_wrong_content_range_is_refused(upstream, make_registry):
    up = upstream(SIZES, seed=36)
    layer = json.loads(up.manifest())["layers"][0]["digest"]
    # The registry sends the bytes asked for, but says they start 4 KiB later.
    up.faults.set(content_range_shift=4096, content_range_times=1000, only_digest=layer)
    reg = make_registry()
    with pytest.raises(RegistryError, match="Content-Range"):
        reg.pull(up.ref())
    assert not reg.cache.blob_path(Digest.parse(layer)).exists(), "a blob was committed from mislabelled bytes"
    assert up.faults.content_range_times < 1000, "the fault never fired"


def test_one_wrong_content_range_is_not_written(upstream, make_registry):
    # A single mislabelled answer fails the pull; the next pull, from an
    # honest registry, resumes and commits the right bytes.
    up = upstream(SIZES, seed=37)
    layer = json.loads(up.manifest())["layers"][0]["digest"]
    up.faults.set(content_range_shift=1, content_range_times=1, only_digest=layer)
    reg = make_registry()
    with pytest.raises(RegistryError, match="Content-Range"):
        reg.pull(up.ref())
    reg.pull(up.ref())
    assert_blobs_match(reg, up)


RSS_CHILD = r"""
import json, sys
from chunkpull import DiskCache, Registry, Tuning

def rss_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

cfg = json.loads(sys.argv[1])
reg = Registry(DiskCache(cfg["models"]), max_streams=cfg["streams"], tuning=Tuning(memory_budget=cfg["budget"]))
before = rss_kib("VmRSS:")
reg.pull(cfg["ref"])
print(json.dumps({"before_kib": before, "peak_kib": rss_kib("VmHWM:")}))
"""


@pytest.mark.slow
def test_memory_is_bounded_by_the_piece_pool(tmp_path):
    from chunkpull.testing import TestRegistry

    size = 256 << 20
    build_model(tmp_path / "up", "registry.local/library/big:latest", [size], seed=38)
    streams, budget = 8, 32 << 20
    with TestRegistry(tmp_path / "up", chunk_size=8 << 20) as server:
        cfg = {"models": str(tmp_path / "models"), "streams": streams, "budget": budget, "ref": f"{server.url}/library/big:latest"}
        r = subprocess.run([sys.executable, "-c", RSS_CHILD, json.dumps(cfg)], capture_output=True, text=True, env=child_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    grew_mib = (got["peak_kib"] - got["before_kib"]) / 1024
    # The pool (the budget, or max_streams + 2 pieces of 4 MiB if more) plus
    # thread stacks, socket buffers and allocator slack; never the blob.
    pool_mib = max(budget, (streams + 2) * (4 << 20)) / (1 << 20)
    assert grew_mib <= pool_mib + 24, f"a {size >> 20} MiB pull grew RSS by {grew_mib:.0f} MiB; the pool is {pool_mib:.0f} MiB"


class CountingAuth:
    """A requests auth hook that stamps and counts every request it is attached to."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, r):
        self.urls.append(r.url)
        r.headers["Authorization"] = "Bearer test-token"
        return r


def test_source_credentials_go_with_every_engine_request(upstream, make_registry):
    # The seam registry auth builds on: a Source's auth is attached to the
    # chunksums request and to every ranged GET of the pull.
    up = upstream(SIZES, seed=39)
    reg = make_registry()
    ref = reg.parse(up.ref())
    manifest = reg.resolve(up.ref())
    auth = CountingAuth()
    config = PullConfig(max_streams=4, chunking_threshold=1 << 20)
    Puller(config, reg.transport, reg.cache, [BlobJob(b, Source(ref.base_url, ref.verify_tls, auth)) for b in manifest.blobs()], lambda ev: None, _never()).run()
    assert_blobs_match(reg, up)
    blob_gets = [p for m, p, _s in up.stats.log if m == "GET" and "/blobs/" in p]
    chunksums = [p for m, p, _s in up.stats.log if m == "GET" and "/chunksums/" in p]
    assert len(auth.urls) == len(blob_gets) + len(chunksums) > 12, (auth.urls, up.stats.log)


def test_chunk_url_chooses_where_each_chunk_comes_from(upstream, make_registry, monkeypatch):
    # The seam mirrors build on: BlobPull.chunk_url(i) is asked for every
    # chunk's URL.  Here odd chunks come from a second registry with the same blobs.
    from chunkpull.engine.blob import BlobPull

    origin = upstream(SIZES, seed=40)
    mirror = upstream(SIZES, seed=40)
    real = BlobPull.chunk_url
    monkeypatch.setattr(BlobPull, "chunk_url", lambda self, i: real(self, i).replace(origin.url, mirror.url) if i % 2 else real(self, i))
    reg = make_registry()
    reg.pull(origin.ref())
    assert_blobs_match(reg, origin)
    layer = json.loads(origin.manifest())["layers"][0]["digest"]
    starts = lambda up: sorted(s for d, s, _e in up.stats.ranges if d == layer)
    chunk = 256 << 10
    assert starts(origin) == [i * chunk for i in range(0, 12, 2)] and starts(mirror) == [i * chunk for i in range(1, 12, 2)]


def test_adaptive_streams_grow_on_connections_that_are_each_capped(upstream, make_registry):
    # Each response is throttled (a per-connection cap): more streams carry more.  Big enough for
    # two of the controller's windows (48 MiB each) at 8 x 4 MiB/s.
    up = upstream([128 << 20], seed=41, chunk_size=1 << 20)
    up.faults.throttle_bps = 4 << 20
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), adaptive=True, max_streams=32)
    assert_blobs_match(reg, up)
    limits = [limit for _t, limit, _rate in puller.streams.controller.history]
    assert max(limits) > 8, limits


def test_pinned_streams_never_move(upstream, make_registry):
    up = upstream([8 << 20], seed=42, chunk_size=1 << 20)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), max_streams=3)
    assert puller.streams.controller is None and puller.streams.gate.limit == 3
