"""DiskCache: Ollama's models-directory layout, verified puts, links, prune, ingest work files."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

import pytest

from chunkpull.store.cache import DiskCache
from chunkpull.core.digest import Digest, sha256_digest
from chunkpull.errors import IntegrityError, InvalidNameError, ModelNotFoundError
from chunkpull.core.names import Name

SMOL = Name("registry.local", "library", "Smol", "latest")


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def put_manifest(cache: DiskCache, *blobs: bytes) -> Digest:
    """Put blobs and a manifest referencing them; return the manifest digest."""
    layers = []
    for b in blobs:
        d = sha256_digest(b)
        cache.put(d, b)
        layers.append(f'{{"digest":"{d}","size":{len(b)}}}')
    data = ('{"schemaVersion":2,"layers":[' + ",".join(layers) + "]}").encode()
    md = sha256_digest(data)
    cache.put(md, data)
    return md


def test_layout(tmp_path):
    cache = DiskCache(tmp_path / "m")
    assert (cache.blobs_dir, cache.manifests_dir) == (tmp_path / "m" / "blobs", tmp_path / "m" / "manifests")
    assert cache.blobs_dir.is_dir() and cache.manifests_dir.is_dir() and cache.ingest_dir.is_dir()
    d = sha256_digest(b"x")
    assert cache.blob_path(d) == tmp_path / "m" / "blobs" / f"sha256-{d.hex}"


def test_open_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "env-models"))
    assert DiskCache.open().root == tmp_path / "env-models"
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert DiskCache.open().root == tmp_path / "home" / ".ollama" / "models"
    assert DiskCache.open(tmp_path / "explicit").root == tmp_path / "explicit"


@pytest.mark.parametrize("data", [b"", b"hello", os.urandom(300_000)], ids=["empty", "hello", "300KB"])
def test_put_and_get(tmp_cache, data):
    d = sha256_digest(data)
    assert tmp_cache.get(d) is None
    tmp_cache.put(d, data)
    info = tmp_cache.get(d)
    assert info is not None and (info.digest, info.size) == (d, len(data)), f"get({d.short()}) = {info!r}"
    assert tmp_cache.blob_path(d).read_bytes() == data
    tmp_cache.put(d, data)  # idempotent
    assert listing(tmp_cache.blobs_dir) == [d.filename]


def test_put_verifies(tmp_cache):
    d = sha256_digest(b"right")
    with pytest.raises(IntegrityError) as info:
        tmp_cache.put(d, b"wrong")
    assert info.value.expected == str(d)
    assert info.value.got == "sha256:" + hashlib.sha256(b"wrong").hexdigest()
    assert listing(tmp_cache.blobs_dir) == [], "a rejected put left something under blobs/"
    assert listing(tmp_cache.ingest_dir) == [], "a rejected put left a temporary file"


# -- manifests and names --------------------------------------------------------


def test_link_and_resolve_case_insensitive(tmp_cache):
    md = put_manifest(tmp_cache, b"layer")
    tmp_cache.link(SMOL, md)
    on_disk = tmp_cache.manifests_dir / "registry.local" / "library" / "Smol" / "latest"
    assert on_disk.is_file(), f"manifest not at {on_disk}: {all_files(tmp_cache.root)}"
    assert on_disk.read_bytes() == tmp_cache.blob_path(md).read_bytes()
    for spelled in ("smol", "SMOL", "Smol", "sMoL"):
        for host in ("registry.local", "REGISTRY.LOCAL"):
            n = Name(host, "LIBRARY", spelled, "Latest")
            got = tmp_cache.resolve(n)
            assert got == md, f"resolve({n}) = {got}, want {md}"
            assert tmp_cache.manifest_bytes(n) == on_disk.read_bytes()


def test_link_keeps_first_casing(tmp_cache):
    md1 = put_manifest(tmp_cache, b"one")
    md2 = put_manifest(tmp_cache, b"two")
    tmp_cache.link(SMOL, md1)
    tmp_cache.link(Name("REGISTRY.local", "Library", "SMOL", "LATEST"), md2)
    got = all_files(tmp_cache.manifests_dir)
    assert got == ["registry.local/library/Smol/latest"], f"manifests after relink = {got}, want the first casing only"
    assert tmp_cache.resolve(SMOL) == md2, "relink did not replace the manifest"


def test_link_errors(tmp_cache):
    md = put_manifest(tmp_cache, b"x")
    with pytest.raises(FileNotFoundError):
        tmp_cache.link(SMOL, sha256_digest(b"not in the cache"))
    for bad in (Name("registry.local", "library", "smol", ""), Name("registry.local", "..", "smol", "latest"), Name("", "library", "smol", "latest")):
        with pytest.raises(InvalidNameError):
            tmp_cache.link(bad, md)
            pytest.fail(f"link({bad!r}) did not raise")
    assert all_files(tmp_cache.manifests_dir) == []


def test_resolve_missing(tmp_cache):
    with pytest.raises(ModelNotFoundError):
        tmp_cache.resolve(SMOL)
    with pytest.raises(ModelNotFoundError):
        tmp_cache.manifest_bytes(SMOL)


def test_unlink(tmp_cache):
    md = put_manifest(tmp_cache, b"x")
    other = Name("registry.local", "library", "smol", "v2")
    tmp_cache.link(SMOL, md)
    tmp_cache.link(other, md)
    assert tmp_cache.unlink(Name("registry.local", "library", "SMOL", "LATEST")) is True
    assert all_files(tmp_cache.manifests_dir) == ["registry.local/library/Smol/v2"], "unlink removed too much"
    assert tmp_cache.unlink(SMOL) is False, "unlink of a removed name returned True"
    assert tmp_cache.unlink(other) is True
    assert listing(tmp_cache.manifests_dir) == [], "empty directories were left under manifests/"
    assert tmp_cache.manifests_dir.is_dir(), "unlink removed manifests/ itself"
    assert tmp_cache.get(md) is not None, "unlink must not touch blobs"


def test_unlink_keeps_non_empty_parents(tmp_cache):
    md = put_manifest(tmp_cache, b"x")
    tmp_cache.link(SMOL, md)
    tmp_cache.link(Name("registry.local", "library", "other", "latest"), md)
    tmp_cache.unlink(SMOL)
    assert all_files(tmp_cache.manifests_dir) == ["registry.local/library/other/latest"]


def test_links(tmp_cache):
    md = put_manifest(tmp_cache, b"x")
    names = [SMOL, Name("example.com:5000", "me", "big.model", "q4_0"), Name("registry.local", "library", "smol", "v2")]
    for n in names:
        tmp_cache.link(n, md)
    # Stray files at the wrong depth or with invalid names are not models.
    (tmp_cache.manifests_dir / "stray").write_bytes(b"")
    (tmp_cache.manifests_dir / "registry.local" / "library" / "Smol" / ".hidden").write_bytes(b"")
    got = sorted(str(n) for n, _path in tmp_cache.links())
    # smol:v2 lands in the directory first written as "Smol" (casing kept on disk).
    want = ["example.com:5000/me/big.model:q4_0", "registry.local/library/Smol:latest", "registry.local/library/Smol:v2"]
    assert got == want, f"links() = {got}, want {want}"
    assert {n for n, _ in tmp_cache.links()} == set(names)
    for n, path in tmp_cache.links():
        assert path.read_bytes() == tmp_cache.blob_path(md).read_bytes()


def _manifest_naming(cache, name: str, digests) -> None:
    """Write a manifests/ file that mentions digests (valid JSON or not)."""
    path = cache.manifests_dir / "registry.local" / "library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(str(d) for d in digests))


def test_prune_keeps_what_any_manifest_mentions(tmp_cache):
    keep = [sha256_digest(b"keep1"), sha256_digest(b"keep2")]
    drop = [sha256_digest(b"drop1"), sha256_digest(b"drop2")]
    for d, data in zip(keep + drop, [b"keep1", b"keep2", b"drop1", b"drop2"]):
        tmp_cache.put(d, data)
    # Not a manifest chunkpull would parse: its digests still protect blobs.
    _manifest_naming(tmp_cache, "odd", keep)
    (tmp_cache.blobs_dir / "not-a-digest").write_bytes(b"")
    removed = tmp_cache.prune(grace_s=0)
    assert sorted(removed) == sorted(drop), f"prune() = {removed}, want {drop}"
    want = sorted([d.filename for d in keep] + ["not-a-digest"])
    assert listing(tmp_cache.blobs_dir) == want


def test_prune_keeps_young_blobs(tmp_cache):
    d = sha256_digest(b"just committed by another tool")
    tmp_cache.put(d, b"just committed by another tool")
    assert tmp_cache.prune() == [], "a blob younger than the grace period was pruned"
    assert tmp_cache.prune(now=time.time() + 3600) == [d]


def test_prune_skipped_when_a_manifest_cannot_be_read(tmp_cache):
    d = sha256_digest(b"orphan")
    tmp_cache.put(d, b"orphan")
    _manifest_naming(tmp_cache, "unreadable", [])
    (tmp_cache.manifests_dir / "registry.local" / "library" / "unreadable" / "latest").chmod(0)
    if os.geteuid() == 0:
        # root reads anything: make it unreadable another way (a directory where a file should be).
        bad = tmp_cache.manifests_dir / "registry.local" / "library" / "unreadable" / "latest"
        bad.unlink()
        bad.mkdir()
        (bad / "x").symlink_to("/nonexistent/target")
    assert tmp_cache.prune(grace_s=0) == []
    assert tmp_cache.get(d) is not None


def test_prune_removes_abandoned_work_files(tmp_cache):
    d = sha256_digest(b"abc")
    with tmp_cache.ingest(d, 3) as ing:
        ing.state_path.write_text("{}")
        path, state = ing.path, ing.state_path
    held = tmp_cache.ingest(sha256_digest(b"held"), 4)
    tmp_cache.prune(grace_s=0, now=time.time() + 8 * 86400)
    assert not path.exists() and not state.exists(), "an abandoned work file survived"
    assert held.path.exists(), "a work file in use was removed"
    held.discard()


def test_prune_skipped_while_pull_holds_lock(tmp_cache):
    d = sha256_digest(b"orphan")
    tmp_cache.put(d, b"orphan")
    other = DiskCache(tmp_cache.root)  # another process's view of the same directory
    with tmp_cache.prune_lock(exclusive=False) as held:
        assert held
        assert other.prune(grace_s=0) == [], "prune ran while a pull held the shared lock"
        assert tmp_cache.prune(grace_s=0) == []
        assert tmp_cache.get(d) is not None
    assert other.prune(grace_s=0) == [d], "prune did not run once the lock was released"


def test_shared_locks_do_not_exclude_each_other(tmp_cache):
    with tmp_cache.prune_lock(exclusive=False) as a, DiskCache(tmp_cache.root).prune_lock(exclusive=False, blocking=False) as b:
        assert a and b


# -- ingest work files ----------------------------------------------------------


def test_ingest_preallocates_outside_blobs(tmp_cache):
    data = os.urandom(1 << 20)
    d = sha256_digest(data)
    with tmp_cache.ingest(d, len(data)) as ing:
        st = os.fstat(ing.fd)
        assert st.st_size == len(data), f"work file size = {st.st_size}, want {len(data)}"
        assert st.st_blocks * 512 >= len(data), "work file is not preallocated"
        assert ing.path.parent == tmp_cache.ingest_dir
        assert ing.path.name != d.filename and tmp_cache.blobs_dir not in ing.path.parents
        assert tmp_cache.get(d) is None, "a blob name exists before commit"
        assert listing(tmp_cache.blobs_dir) == []


def test_ingest_commit(tmp_cache):
    data = os.urandom(100_000)
    d = sha256_digest(data)
    ing = tmp_cache.ingest(d, len(data))
    os.pwrite(ing.fd, data, 0)
    ing.state_path.write_bytes(b"resume record")
    assert tmp_cache.get(d) is None
    ino = os.fstat(ing.fd).st_ino
    ing.commit(d.raw)
    assert ing.fd == -1, "commit did not close the work file"
    assert tmp_cache.blob_path(d).read_bytes() == data
    assert os.stat(tmp_cache.blob_path(d)).st_ino == ino, "commit copied instead of renaming"
    assert not ing.path.exists() and not ing.state_path.exists(), f"left behind: {listing(tmp_cache.ingest_dir)}"


def test_ingest_discard(tmp_cache):
    d = sha256_digest(b"x" * 10)
    ing = tmp_cache.ingest(d, 10)
    ing.state_path.write_bytes(b"record")
    ing.discard()
    assert listing(tmp_cache.ingest_dir) == [] and listing(tmp_cache.blobs_dir) == []
    assert ing.fd == -1


def test_ingest_reopen_keeps_work(tmp_cache):
    data = os.urandom(50_000)
    d = sha256_digest(data)
    with tmp_cache.ingest(d, len(data)) as ing:
        os.pwrite(ing.fd, data[:20_000], 0)
    with tmp_cache.ingest(d, len(data)) as ing:
        assert os.pread(ing.fd, 20_000, 0) == data[:20_000], "reopening lost the bytes already written"


def test_ingest_reopen_oversized_starts_over(tmp_cache):
    d = sha256_digest(b"abc")
    with tmp_cache.ingest(d, 100) as ing:
        os.pwrite(ing.fd, b"z" * 100, 0)
    with tmp_cache.ingest(d, 10) as ing:
        assert os.fstat(ing.fd).st_size == 10
        assert os.pread(ing.fd, 10, 0) == b"\0" * 10, "an oversized work file was reused"


def test_ingest_is_locked(tmp_cache):
    d = sha256_digest(b"abc")
    with tmp_cache.ingest(d, 3) as ing:
        fd = os.open(ing.path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_ingest_empty_blob(tmp_cache):
    d = sha256_digest(b"")
    ing = tmp_cache.ingest(d, 0)
    ing.commit(d.raw)
    assert tmp_cache.get(d).size == 0


@pytest.mark.parametrize("case", ["wrong-digest", "no-digest", "short-file"])
def test_ingest_commit_refuses_unverified_bytes(tmp_cache, case):
    data = os.urandom(10_000)
    d = sha256_digest(data)
    ing = tmp_cache.ingest(d, len(data))
    os.pwrite(ing.fd, data, 0)
    if case == "short-file":
        os.ftruncate(ing.fd, 5_000)
    verified = {"wrong-digest": b"\0" * 32, "no-digest": b"", "short-file": d.raw}[case]
    with pytest.raises(IntegrityError, match="refusing to commit"):
        ing.commit(verified)
    assert tmp_cache.get(d) is None, "an unverified blob got its final name"
    ing.discard()


def test_lock_wait_is_bounded_by_the_holders_progress(tmp_cache):
    from chunkpull.store import ingest as cache_mod
    from chunkpull.errors import ChunkpullError

    d = sha256_digest(b"abc")
    holder = tmp_cache.ingest(d, 3)  # another process's lock, never released, never written
    fd = os.open(holder.path, os.O_RDWR)
    t = [0.0]

    def clock() -> float:
        t[0] += 1.0  # every poll is a second later: no real waiting
        return t[0]

    try:
        with pytest.raises(ChunkpullError, match="has written nothing for 5 s"):
            cache_mod._lock_or_wait(fd, None, 0.0, stale_s=5.0, clock=clock)
    finally:
        os.close(fd)
        holder.discard()
