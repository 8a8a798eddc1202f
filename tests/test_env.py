"""Environment variables: read when called, validated, errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkpull import _env
from chunkpull.registry import Registry


def test_models_dir_defaults_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _env.models_dir() == tmp_path / ".ollama" / "models"
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "m"))
    assert _env.models_dir() == tmp_path / "m"


@pytest.mark.parametrize(
    ("env", "want"),
    [
        pytest.param({}, _env.ADAPTIVE_STREAMS, id="default-adaptive"),
        pytest.param({"CHUNKPULL_MAX_STREAMS": "auto"}, _env.ADAPTIVE_STREAMS, id="auto"),
        pytest.param({"OLLAMA_REGISTRY_MAXSTREAMS": "3"}, 3, id="ollama"),
        pytest.param({"OLLAMA_REGISTRY_MAXSTREAMS": "3", "CHUNKPULL_MAX_STREAMS": "5"}, 5, id="chunkpull-wins"),
        pytest.param({"CHUNKPULL_MAX_STREAMS": " 7 "}, 7, id="spaces"),
    ],
)
def test_max_streams(monkeypatch, env, want):
    for var in ("OLLAMA_REGISTRY_MAXSTREAMS", "CHUNKPULL_MAX_STREAMS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got = _env.max_streams()
    assert got == want, f"max_streams() with {env} = {got}, want {want}"


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", str(_env.MAX_MAX_STREAMS + 1)])
def test_bad_max_streams_names_the_variable(monkeypatch, value):
    monkeypatch.delenv("CHUNKPULL_MAX_STREAMS", raising=False)
    monkeypatch.setenv("OLLAMA_REGISTRY_MAXSTREAMS", value)
    with pytest.raises(ValueError, match="OLLAMA_REGISTRY_MAXSTREAMS"):
        _env.max_streams()


def test_read_at_call_time_not_import_time(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "a"))
    monkeypatch.setenv("OLLAMA_REGISTRY_MAXSTREAMS", "2")
    reg = Registry()
    assert reg.cache.root == Path(tmp_path / "a") and reg.max_streams == 2
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "b"))
    assert Registry().cache.root == tmp_path / "b"


@pytest.mark.parametrize(("value", "want"), [("", "auto"), ("Direct", "direct"), ("buffered", "buffered")])
def test_io_mode(monkeypatch, value, want):
    monkeypatch.setenv("CHUNKPULL_IO", value)
    assert _env.io_mode() == want


def test_bad_io_mode(monkeypatch):
    monkeypatch.setenv("CHUNKPULL_IO", "fast")
    with pytest.raises(ValueError, match="CHUNKPULL_IO"):
        _env.io_mode()


def test_bad_backend_lists_the_choices(monkeypatch):
    monkeypatch.setenv("CHUNKPULL_BACKEND", "rust")
    with pytest.raises(ImportError, match="auto, native, python"):
        _env.backend()


def test_the_stream_defaults_agree_with_the_engine():
    # _env imports nothing from chunkpull, so it restates two engine constants: they must not drift apart.
    from chunkpull.bench.harness import AUTO
    from chunkpull.engine.adaptive import ADAPTIVE, ADAPTIVE_START

    assert _env.ADAPTIVE_STREAMS == ADAPTIVE == AUTO
    assert _env.DEFAULT_MAX_STREAMS == ADAPTIVE_START
