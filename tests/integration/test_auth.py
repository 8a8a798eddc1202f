"""Registry auth over real sockets: the Docker token flow, Basic, credential files and helpers, and where credentials go.

The built-in registry plays the registry (``RegistryAuthMode``: Basic, or a
token realm of its own at /token), and Debian's docker-registry with an
htpasswd file plays a real one.  Every request's Authorization header is
logged by the servers, so the tests see exactly where credentials went.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest
import requests

from chunkpull.core.digest import Digest
from chunkpull.errors import InvalidNameError, RegistryError
from chunkpull.testing import RegistryAuthMode

pytestmark = pytest.mark.integration

MIB = 1 << 20
SECRET = "correct horse"


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


def _pulled(reg, up) -> bool:
    return reg.cache.blob_path(Digest.parse(_layer(up))).read_bytes() == up.blob(_layer(up))


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path, monkeypatch):
    # The developer's own ~/.docker and auth.json must not leak into these tests.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_anonymous_token_flow(upstream, make_registry):
    mode = RegistryAuthMode("bearer")
    up = upstream([3 * MIB], seed=90, auth=mode)
    reg = make_registry()
    reg.pull(up.ref())
    assert _pulled(reg, up)
    assert mode.issued == 1, f"{mode.issued} tokens for one scope: they are not cached"
    blob_gets = [h for p, h in up.stats.auth if "/blobs/" in p]
    assert blob_gets and all(h.startswith("Bearer ") for h in blob_gets[1:])


def test_token_flow_with_credentials_from_every_source(upstream, make_registry, tmp_path, monkeypatch):
    mode = RegistryAuthMode("bearer", user="alice", password=SECRET)
    up = upstream([3 * MIB], seed=91, auth=mode)
    host = up.url.split("://", 1)[1]
    # No credentials: the realm refuses, and the error says what to do.
    with pytest.raises(RegistryError, match="chunkpull login") as info:
        make_registry().pull(up.ref())
    assert SECRET not in str(info.value)
    # 1. Given to the Registry.
    reg = make_registry(credentials={host: ("alice", SECRET)})
    reg.pull(up.ref())
    assert _pulled(reg, up)
    # 2. Docker's config.json, as `chunkpull login` writes it.
    from chunkpull.auth import save_docker_login

    path = save_docker_login(host, "alice", SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reg = make_registry()
    reg.pull(up.ref())
    assert _pulled(reg, up)
    path.unlink()
    # 3. The containers auth file.
    auth_file = tmp_path / "auth.json"
    import base64

    auth_file.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"alice:{SECRET}".encode()).decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    reg = make_registry()
    reg.pull(up.ref())
    assert _pulled(reg, up)
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    # 4. A credential helper named by credHelpers.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-chunkpulltest"
    helper.write_text(f"#!/bin/sh\nread host\necho '{{\"ServerURL\": \"'$host'\", \"Username\": \"alice\", \"Secret\": \"{SECRET}\"}}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"credHelpers": {host: "chunkpulltest"}}))
    reg = make_registry()
    reg.pull(up.ref())
    assert _pulled(reg, up)


def test_a_token_revoked_mid_pull_is_fetched_again(upstream, make_registry):
    mode = RegistryAuthMode("bearer")
    up = upstream([3 * MIB], seed=92, auth=mode)
    layer = _layer(up)
    up.faults.set(throttle_bps=1 * MIB, only_digest=layer)
    reg = make_registry(max_streams=2)
    t = threading.Thread(target=reg.pull, args=(up.ref(),))
    t.start()
    deadline = time.monotonic() + 30
    while not any(d == layer for d, _s, _e in up.stats.ranges) and time.monotonic() < deadline:
        time.sleep(0.01)
    mode.revoke()  # as if the token expired in the middle of the pull
    t.join(60)
    assert _pulled(reg, up)
    assert mode.issued >= 2


def test_basic_auth(upstream, make_registry):
    up = upstream([3 * MIB], seed=93, auth=RegistryAuthMode("basic", user="bob", password=SECRET))
    host = up.url.split("://", 1)[1]
    with pytest.raises(RegistryError) as info:
        make_registry().pull(up.ref())
    assert info.value.status == 401
    reg = make_registry(credentials={host: ("bob", SECRET)})
    reg.pull(up.ref())
    assert _pulled(reg, up)


def test_credentials_never_go_to_another_host(upstream, make_registry):
    # Blobs redirect to a "CDN" (another registry process on another port):
    # it must never see the origin's Authorization.
    mode = RegistryAuthMode("bearer", user="alice", password=SECRET)
    up = upstream([3 * MIB], seed=94, auth=mode)
    cdn = upstream([3 * MIB], seed=94)  # the same bytes, another host:port, no auth
    up.faults.redirect_blobs = cdn.url
    host = up.url.split("://", 1)[1]
    reg = make_registry(credentials={host: ("alice", SECRET)})
    reg.pull(up.ref())
    assert _pulled(reg, up)
    assert cdn.stats.auth, "the CDN served nothing"
    leaked = [(p, h) for p, h in cdn.stats.auth if h]
    assert not leaked, f"credentials reached another host: {leaked[:3]}"


@pytest.mark.parametrize("name", ["http://alice:hunter2@127.0.0.1:5000/library/smol", "alice:hunter2@registry.example/library/smol"])
def test_credentials_in_a_name_are_refused_and_not_echoed(make_registry, name):
    with pytest.raises(InvalidNameError) as info:
        make_registry().pull(name)
    assert "hunter2" not in str(info.value) and "chunkpull login" in str(info.value)


# bcrypt("correct horse"), made once with the bcrypt package: distribution's htpasswd wants bcrypt.
HTPASSWD = "alice:$2b$05$uY9/BUkBM/ut5r4BM8aEzujsaLtMpyag7XJX4o4pOyXWZnhlDUAha\n"


def test_distribution_with_htpasswd(tmp_path_factory, make_registry):
    from realregistries import Distribution, require_distribution

    require_distribution()
    root = tmp_path_factory.mktemp("htpasswd")
    (root / "htpasswd").write_text(HTPASSWD)
    server = Distribution(root, extra=f"auth:\n  htpasswd:\n    realm: chunkpull-test\n    path: {root / 'htpasswd'}\n", auth=("alice", SECRET))
    try:
        digest, descs = server.push_image("library/private", "v1", [b"w" * (2 * MIB)], oci=True)
        name = f"http://127.0.0.1:{server.port}/library/private:v1"
        with pytest.raises(RegistryError) as info:
            make_registry().pull(name)
        assert info.value.status == 401
        reg = make_registry(credentials={f"127.0.0.1:{server.port}": ("alice", SECRET)})
        m = reg.pull(name).manifest
        assert str(m.digest) == digest
        assert reg.cache.blob_path(Digest.parse(descs[0]["digest"])).read_bytes() == b"w" * (2 * MIB)
    finally:
        server.stop()


def test_login_command_then_pull(upstream, tmp_path, monkeypatch):
    import io

    from chunkpull.cli import main

    mode = RegistryAuthMode("bearer", user="alice", password=SECRET)
    up = upstream([3 * MIB], seed=95, auth=mode)
    host = up.url.split("://", 1)[1]
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    assert main(["login", host, "-u", "alice", "--password-stdin"]) == 0
    text = (tmp_path / "docker" / "config.json").read_text()
    assert SECRET not in text  # base64, as Docker writes it, never the clear text
    assert main(["pull", up.ref(), "--models", str(tmp_path / "models"), "-q"]) == 0
