"""Where credentials come from (chunkpull.auth.find_credentials), and that none is ever shown."""

from __future__ import annotations

import base64
import json

import pytest

from chunkpull.auth import Credentials, find_credentials, parse_challenge


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "docker").mkdir()


def _b64(user: str, secret: str) -> str:
    return base64.b64encode(f"{user}:{secret}".encode()).decode()


def test_docker_config_keys_are_normalized(tmp_path):
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": _b64("hub", "s1")},
        "REGISTRY.EXAMPLE:5000": {"auth": _b64("ex", "s2")},
        "tokens.example": {"identitytoken": "refresh-me"},
    }}))
    assert find_credentials("index.docker.io").username == "hub"
    assert find_credentials("registry.example:5000").secret == "s2"
    assert find_credentials("tokens.example").identity_token == "refresh-me"
    assert find_credentials("elsewhere.example") is None


def test_precedence_explicit_then_auth_file_then_docker(tmp_path, monkeypatch):
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {"r.example": {"auth": _b64("docker", "d")}}}))
    assert find_credentials("r.example").username == "docker"
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {"r.example": {"auth": _b64("containers", "c")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    assert find_credentials("r.example").username == "containers"
    assert find_credentials("r.example", {"r.example": ("explicit", "e")}).username == "explicit"


def test_runtime_auth_json(tmp_path, monkeypatch):
    (tmp_path / "run" / "containers").mkdir(parents=True)
    (tmp_path / "run" / "containers" / "auth.json").write_text(json.dumps({"auths": {"q.example": {"auth": _b64("podman", "p")}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert find_credentials("q.example").username == "podman"


def test_hf_token_only_for_hugging_face(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert find_credentials("hf.co").secret == "hf_secret"
    assert find_credentials("huggingface.co").secret == "hf_secret"
    assert find_credentials("registry.example") is None


def test_a_broken_helper_or_file_means_no_credentials(tmp_path):
    (tmp_path / "docker" / "config.json").write_text("{not json")
    assert find_credentials("r.example") is None
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"credsStore": "does-not-exist-anywhere"}))
    assert find_credentials("r.example") is None


def test_secrets_are_never_in_repr():
    c = Credentials("alice", "hunter2", "tok")
    assert "hunter2" not in repr(c) and "hunter2" not in str(c) and "tok" not in repr(c)


@pytest.mark.parametrize("header, want", [
    ('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"',
     ("bearer", {"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull"})),
    ('Basic realm="Registry Realm"', ("basic", {"realm": "Registry Realm"})),
    ("", ("", {})),
])
def test_parse_challenge(header, want):
    assert parse_challenge(header) == want
