"""Air-gapped transfer: chunkpull export and import, and archives that lie."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from chunkpull.cli import main
from chunkpull.core.digest import Digest
from chunkpull.errors import IntegrityError
from chunkpull.store.archive import ArchiveError, read_archive
from chunkpull.store.cache import DiskCache

pytestmark = pytest.mark.integration

MIB = 1 << 20
A, B = "registry.local/library/a:latest", "registry.local/library/b:latest"


@pytest.fixture
def exported(upstream, tmp_path, capsys):
    """Two models sharing a layer, pulled into a models dir and exported; returns (upstream, archive path)."""
    up = upstream([2 * MIB, MIB], name=A, seed=9)
    up.add(B, [2 * MIB], seed=9)
    src = tmp_path / "src"
    assert main(["pull", up.ref(A), up.ref(B), "--models", str(src), "-q"]) == 0
    archive = tmp_path / "models.tar"
    assert main(["export", up.ref(A), "b", "--output", str(archive), "--models", str(src)]) == 0
    assert "exported 2 models, 4 blobs" in capsys.readouterr().out  # a, b's config, the shared layer, a's second layer
    return up, archive


def _members(archive) -> list[str]:
    with tarfile.open(archive) as t:
        return t.getnames()


def test_export_then_import_round_trip(exported, tmp_path, capsys):
    up, archive = exported
    names = _members(archive)
    assert all(n.startswith(("blobs/sha256-", "manifests/")) for n in names)
    assert sum(n.startswith("blobs/") for n in names) == 4 and names[-2:] == sorted(names[-2:])
    dest = tmp_path / "dest"
    assert main(["import", str(archive), "--models", str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.count("imported ") == 2
    cache = DiskCache(dest)
    for name in (A, B):
        manifest = json.loads(up.manifest(name))
        for d in [manifest["config"], *manifest["layers"]]:
            assert cache.blob_path(Digest.parse(d["digest"])).read_bytes() == up.blob(d["digest"])
    assert main(["ls", "--models", str(dest)]) == 0
    assert "a" in capsys.readouterr().out


def _tamper(archive, out, *, blob: bool = False, drop_blob: bool = False) -> str:
    """Copy archive to out with one blob's bytes flipped (or left out); return that blob's member name."""
    victim = ""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.startswith("blobs/") and not victim and m.size > MIB:
                victim = m.name
                if drop_blob:
                    continue
                if blob:
                    data = bytes([data[0] ^ 1]) + data[1:]
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return victim


def test_a_tampered_blob_is_refused_and_nothing_is_committed_under_its_digest(exported, tmp_path, capsys):
    _up, archive = exported
    bad = tmp_path / "bad.tar"
    victim = _tamper(archive, bad, blob=True)
    dest = tmp_path / "dest"
    assert main(["import", str(bad), "--models", str(dest)]) == 1
    assert "tampered" in capsys.readouterr().err
    cache = DiskCache(dest)
    assert not cache.blob_path(Digest.parse(victim.split("/", 1)[1])).exists()
    assert not list(cache.links()), "no manifest may be linked from a refused archive"
    assert not list((dest / "blobs").glob("*.partial"))


def test_a_manifest_without_its_blob_is_refused(exported, tmp_path):
    _up, archive = exported
    bad = tmp_path / "bad.tar"
    _tamper(archive, bad, drop_blob=True)
    cache = DiskCache(tmp_path / "dest")
    with open(bad, "rb") as f, pytest.raises(ArchiveError, match="does not hold"):
        read_archive(cache, f)
    assert not list(cache.links())


@pytest.mark.parametrize("member", ["../evil", "blobs/../../x", "/etc/passwd", "manifests/h/../../m/t", "blobs/sha256-abc", "notes.txt"])
def test_members_outside_the_layout_are_refused(tmp_path, member):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(member)
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    buf.seek(0)
    cache = DiskCache(tmp_path / "dest")
    with pytest.raises(ArchiveError):
        read_archive(cache, buf)
    assert not any(p.is_file() for p in (tmp_path / "dest").rglob("*") if ".chunkpull" not in p.parts)


def test_links_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("blobs/sha256-" + "0" * 64)
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    buf.seek(0)
    with pytest.raises(ArchiveError, match="links"):
        read_archive(DiskCache(tmp_path / "dest"), buf)


def test_export_of_an_unknown_model_fails_before_writing(tmp_path, capsys):
    archive = tmp_path / "x.tar"
    assert main(["export", "nothing-here", "--output", str(archive), "--models", str(tmp_path / "m")]) == 1
    assert not archive.exists() and not (tmp_path / "x.tar.partial").exists()


def test_import_of_a_blob_with_the_wrong_bytes_raises_integrity_error(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("blobs/sha256-" + "1" * 64)
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    buf.seek(0)
    with pytest.raises(IntegrityError):
        read_archive(DiskCache(tmp_path / "dest"), buf)
