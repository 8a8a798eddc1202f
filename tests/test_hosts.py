"""Mirror configuration: URLs, $CHUNKPULL_MIRRORS and containerd-style hosts.toml (chunkpull.hosts)."""

from __future__ import annotations

import re

import pytest

from chunkpull.errors import ChunkpullError
from chunkpull.hosts import MirrorSpec, from_hosts_toml, mirrors_for, parse_mirror


@pytest.mark.parametrize("text, root", [
    ("http://mirror:5000", "http://mirror:5000"),
    ("https://mirror.lan/", "https://mirror.lan"),
    ("https://mirror.lan/v2/", "https://mirror.lan"),
    ("https://art.corp/api/docker/remote", "https://art.corp/api/docker/remote"),
])
def test_parse_mirror(text, root):
    assert parse_mirror(text).root == root


@pytest.mark.parametrize("text, why", [
    ("mirror:5000", "want http(s)://"),
    ("ftp://mirror", "want http(s)://"),
    ("http://bob:hunter2@mirror", "credentials"),
    ("http://mirror/?x=1", "no query"),
])
def test_parse_mirror_refuses(text, why):
    with pytest.raises(ChunkpullError, match=re.escape(why)) as info:
        parse_mirror(text)
    assert "hunter2" not in str(info.value)


def test_hosts_toml(tmp_path):
    d = tmp_path / "127.0.0.1_5000_"
    d.mkdir()
    (d / "hosts.toml").write_text(
        'server = "http://127.0.0.1:5000"\n'
        '[host."http://a.lan:5000"]\n  capabilities = ["pull", "resolve"]\n'
        '[host."https://b.lan"]\n  capabilities = ["pull"]\n  skip_verify = true\n'
        '[host."https://push-only.lan"]\n  capabilities = ["push"]\n'
    )
    assert from_hosts_toml("127.0.0.1:5000", [tmp_path]) == [MirrorSpec("http://a.lan:5000"), MirrorSpec("https://b.lan", verify_tls=False)]
    assert from_hosts_toml("other:5000", [tmp_path]) == []


def test_broken_hosts_toml_says_where(tmp_path):
    (tmp_path / "r.io").mkdir()
    (tmp_path / "r.io" / "hosts.toml").write_text("[host\n")
    with pytest.raises(ChunkpullError, match="hosts.toml"):
        from_hosts_toml("r.io", [tmp_path])


def test_mirrors_for_merges_and_drops_duplicates_and_the_origin(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKPULL_HOSTS_DIR", str(tmp_path))
    monkeypatch.setenv("CHUNKPULL_MIRRORS", "http://m1:5000, http://m2:5000 http://r.io:5000")
    got = mirrors_for("r.io:5000", ["http://m1:5000/"])
    assert [m.root for m in got] == ["http://m1:5000", "http://m2:5000"]
