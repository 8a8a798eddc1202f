"""The Registry's public surface (issue 13): user settings as keywords, ``Tuning``, ``PullResult``, ``with``.

Pulls run against the built-in TestRegistry over real sockets; nothing is
mocked and nothing depends on timing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from pathlib import Path

import pytest
import requests

from chunkpull import DiskCache, IntegrityError, Layer, Manifest, PullResult, Registry, Tuning
from chunkpull.core.digest import Digest
from chunkpull.engine.config import IO_MODES as ENGINE_IO_MODES
from chunkpull.engine.config import VERIFY_MODES as ENGINE_VERIFY_MODES
from chunkpull.engine.transport import new_session
from chunkpull.result import model_layer
from chunkpull.tuning import IO_MODES, VERIFY_MODES
from conftest import CHUNK_SIZE

pytestmark = pytest.mark.integration

BIG = 12 * CHUNK_SIZE
SMALL = 100_000


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- the signature -----------------------------------------------------------------


def test_signature_holds_user_settings_only():
    params = inspect.signature(Registry).parameters
    public = [n for n in params if not n.startswith("_") and params[n].kind is not inspect.Parameter.VAR_KEYWORD]
    assert public == ["models", "max_streams", "verify", "mask", "limit_rate", "mirrors", "credentials", "ca_cert", "platform", "tuning"], public


def test_literal_modes_match_the_engine():
    assert VERIFY_MODES == ENGINE_VERIFY_MODES and IO_MODES == ENGINE_IO_MODES


def test_models_may_be_a_path(tmp_path):
    with Registry(str(tmp_path / "m")) as reg:
        assert reg.models == tmp_path / "m" and isinstance(reg.cache, DiskCache)
    with Registry(tmp_path / "n") as reg:
        assert reg.cache.root == tmp_path / "n"


def test_tuning_reaches_the_engine(tmp_path):
    t = Tuning(chunking_threshold=1 << 20, buffer_size=1 << 20, memory_budget=8 << 20, io="buffered", stall_timeout_s=7,
               connect_timeout_s=3, read_timeout_s=4, retries=2, retry_base_s=0, retry_cap_s=0)
    with Registry(tmp_path, max_streams=3, verify="chunks", tuning=t) as reg:
        c = reg.config
        got = (c.max_streams, c.verify, c.chunking_threshold, c.buffer_size, c.memory_budget, c.io, c.stall_timeout_s)
        assert got == (3, "chunks", 1 << 20, 1 << 20, 8 << 20, "buffered", 7), got
        assert reg.transport.timeout_s == (3, 4) and reg.transport.backoff.attempts == 2
        assert reg.tuning is t


@pytest.mark.parametrize(
    "kwargs, field",
    [({"buffer_size": 1000}, "buffer_size"), ({"io": "fast"}, "io"), ({"retries": 0}, "retries"),
     ({"stall_timeout_s": 0}, "stall_timeout_s"), ({"chunking_threshold": -1}, "chunking_threshold")],
    ids=["buffer", "io", "retries", "stall", "threshold"],
)
def test_tuning_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Tuning(**kwargs)


def test_old_tuning_keywords_still_work_with_a_warning(tmp_path):
    from chunkpull.engine.transport import Backoff

    with pytest.warns(DeprecationWarning, match="tuning=Tuning"):
        reg = Registry(DiskCache(tmp_path), chunking_threshold=1 << 20, stall_timeout_s=9, backoff=Backoff(attempts=3), timeout_s=(1.0, 2.0))
    with reg:
        assert (reg.config.chunking_threshold, reg.config.stall_timeout_s) == (1 << 20, 9)
        assert (reg.transport.backoff.attempts, reg.transport.timeout_s) == (3, (1.0, 2.0))
        assert reg.tuning == Tuning(chunking_threshold=1 << 20, stall_timeout_s=9, retries=3, connect_timeout_s=1.0, read_timeout_s=2.0)


def test_unknown_keyword_is_a_type_error(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="streams"):
            Registry(tmp_path, streams=4)


# -- with: connections closed ------------------------------------------------------------


def test_with_closes_the_sessions(upstream, tmp_path):
    up = upstream([SMALL], seed=3)
    made: list[requests.Session] = []
    closed: list[requests.Session] = []

    def factory(max_streams: int, *, verify_tls: bool = True) -> requests.Session:
        s = new_session(max_streams, verify_tls=verify_tls)
        real_close = s.close

        def close() -> None:
            closed.append(s)
            real_close()

        s.close = close  # type: ignore[method-assign]
        made.append(s)
        return s

    with Registry(tmp_path / "m", _session_factory=factory) as reg:
        reg.pull(up.ref())
        assert made and not closed
    assert closed == made, "leaving the with block must close every session the pulls used"


# -- PullResult -------------------------------------------------------------------------


def test_pull_returns_paths_and_byte_counts(upstream, make_registry):
    up = upstream([BIG, SMALL], seed=4)
    reg = make_registry()
    first = reg.pull(up.ref())
    assert isinstance(first, PullResult) and first.name == up.ref()
    assert first.manifest.digest == first.digest and str(first.digest) == up.digests["registry.local/library/smol:latest"]
    want = {str(b.digest) for b in first.manifest.blobs()}
    assert set(first.blobs) == want
    for digest, path in first.blobs.items():
        assert path.parent == reg.cache.root / "blobs" and _sha256(path) == digest, f"{path} does not hash to {digest}"
    assert first.model_path == first.blobs[str(first.manifest.layers[0].digest)], "the model layer is the largest one"
    assert (first.fetched_bytes, first.resumed_bytes, first.cached_bytes) == (first.size, 0, 0)

    again = reg.pull(up.ref())
    assert (again.fetched_bytes, again.resumed_bytes, again.cached_bytes) == (0, 0, first.size)
    assert again.model_path == first.model_path


def test_resumed_bytes_are_counted_apart(upstream, make_registry):
    up = upstream([BIG], seed=5)
    reg = make_registry(verify="chunks", max_streams=1)
    big = json.loads(up.manifest())["layers"][0]["digest"]
    up.faults.set(only_digest=big, corrupt_chunk={7: 100})
    with pytest.raises(IntegrityError):
        reg.pull(up.ref())
    up.faults.reset()
    r = reg.pull(up.ref())
    assert r.resumed_bytes > 0, r
    assert r.resumed_bytes + r.fetched_bytes + r.cached_bytes == r.size, r


def test_pull_many_gives_results_and_errors(upstream, make_registry):
    up = upstream([SMALL], seed=6)
    reg = make_registry()
    missing = up.ref("registry.local/library/nope:latest")
    results = reg.pull_many([up.ref(), missing])
    ok = results[up.ref()]
    assert isinstance(ok, PullResult) and ok.model_path.exists()
    assert isinstance(results[missing], LookupError)


def _d(c: str) -> Digest:
    return Digest("sha256", c * 64)


@pytest.mark.parametrize(
    "layers, want",
    [
        ([("a", 900, "application/vnd.ollama.image.license"), ("b", 500, "application/vnd.ollama.image.model")], "b"),
        ([("a", 10, "application/vnd.cncf.model.weight.config.v1.raw"), ("b", 5, "application/vnd.cncf.model.weight.v1.raw")], "b"),
        ([("a", 10, "application/vnd.docker.ai.license"), ("b", 5, "application/vnd.docker.ai.gguf.v3")], "b"),
        ([("a", 10, "application/vnd.oci.image.layer.v1.tar"), ("b", 50, "application/octet-stream")], "b"),
        ([("a", 70, "application/vnd.ollama.image.model"), ("b", 50, "application/vnd.ollama.image.model")], "a"),
    ],
    ids=["ollama", "cncf", "docker-ai", "largest", "largest-of-weights"],
)
def test_model_layer(layers, want):
    m = Manifest(b"{}", _d("0"), tuple(Layer(_d(c), n, t) for c, n, t in layers))
    got = model_layer(m)
    assert got.digest == _d(want), f"model_layer({layers}) = {got}, want the layer {want}"
