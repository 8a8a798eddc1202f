"""Shared fixtures: hashing backends, a temporary cache, upstream registries, clients, the local API's world.

Every server started here is stopped in a finalizer and every client is
closed, so a failing test never leaves a thread or a socket behind.  Clients
get ``sleep=lambda s: None`` and a bounded ``Backoff``: retries never wait,
and no test depends on wall-clock time.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests.adapters

from chunkpull.store.cache import DiskCache
from chunkpull.registry import Registry, Tuning
from chunkpull.testing import TestRegistry, build_model
from chunkpull.engine.transport import Backoff, new_session

# Small on purpose: a 1-3 MiB layer in 256 KiB chunks exercises every code
# path of a 10 GiB one in milliseconds.
CHUNK_SIZE = 256 << 10
CHUNKING_THRESHOLD = 1 << 20
MODEL = "registry.local/library/smol:latest"


def child_env(**extra: str) -> dict[str, str]:
    """Return an environment whose Python imports the chunkpull these tests import.

    That is the installed package under CI (pip install .), or src/ in a
    checkout built in place: never src/ when it has no compiled extension.
    """
    import os

    import chunkpull

    here = str(Path(chunkpull.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _load_backend(name: str):
    if name == "python":
        return importlib.import_module("chunkpull._fallback")
    try:
        return importlib.import_module("chunkpull._native")
    except ImportError as err:
        pytest.skip(f"native extension not built: {err}")


@pytest.fixture(params=["python", "native"], ids=["python", "native"])
def backend(request):
    """The kernel module under test: ``chunkpull._fallback`` or ``chunkpull._native``."""
    return _load_backend(request.param)


@pytest.fixture
def hashio_backend(backend, monkeypatch) -> str:
    """Point ``chunkpull._hashio`` (and so RunningSha256 and chunks) at the backend under test.

    Returns the backend's name, ``"python"`` or ``"native"``.
    """
    from chunkpull import _hashio

    name = "native" if backend.__name__.endswith("_native") else "python"
    monkeypatch.setattr(_hashio, "_impl", backend)
    monkeypatch.setattr(_hashio, "BACKEND", name)
    # Every kernel _hashio re-exports (sha256, pwrite_all, ...), whatever the list grows to.
    for kernel in dir(backend):
        if not kernel.startswith("_") and callable(getattr(backend, kernel)) and hasattr(_hashio, kernel):
            monkeypatch.setattr(_hashio, kernel, getattr(backend, kernel))
    return name


@pytest.fixture
def tmp_cache(tmp_path: Path) -> DiskCache:
    """An empty DiskCache under tmp_path."""
    return DiskCache(tmp_path / "cache")


@dataclass
class Upstream:
    """A models directory served by a running TestRegistry."""

    root: Path
    server: TestRegistry
    digests: dict[str, str] = field(default_factory=dict)  # model name -> manifest digest

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self):
        return self.server.faults

    @property
    def stats(self):
        return self.server.stats

    def add(self, name: str, sizes, *, seed: int = 0, config: bool = True) -> str:
        """Build another model into this models dir; return its manifest digest."""
        d = build_model(self.root, name, sizes, seed=seed, config=config)
        self.digests[name] = d
        return d

    def ref(self, name: str = MODEL, scheme: str = "http") -> str:
        """Return the pullable name of a model served here, e.g. ``http://127.0.0.1:P/library/smol:latest``."""
        rest = name.split("/", 1)[1] if name.count("/") == 2 else name
        host = self.url.split("://", 1)[1]
        return f"{scheme}://{host}/{rest}"

    def manifest(self, name: str = MODEL) -> bytes:
        return self.blob(self.digests[name])

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-", 1)

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()


@pytest.fixture
def upstream(tmp_path: Path):
    """Factory: build a model with build_model and serve it with a TestRegistry.

    ``upstream(sizes=[...], name=MODEL, seed=0, chunk_size=CHUNK_SIZE, **TestRegistry kwargs)``
    returns an ``Upstream``; servers are stopped when the test ends.
    """
    started: list[TestRegistry] = []

    def make(sizes=(3 << 20,), *, name: str = MODEL, seed: int = 0, config: bool = True, root: Path | None = None, **kwargs) -> Upstream:
        root = root or tmp_path / f"upstream{len(started)}"
        kwargs.setdefault("chunk_size", CHUNK_SIZE)
        digests = {}
        if sizes is not None:
            digests[name] = build_model(root, name, sizes, seed=seed, config=config)
        server = TestRegistry(root, **kwargs).start()
        started.append(server)
        return Upstream(root, server, digests)

    yield make
    for server in started:
        server.stop()


def registry_args(**kwargs) -> dict:
    """Turn a test's flat keywords into Registry's: tuning fields into ``tuning=Tuning(...)``, ``backoff``/``timeout_s``
    into their Tuning fields, ``sleep``/``session_factory`` into the private test seams."""
    fields = {f.name for f in dataclasses.fields(Tuning)}
    tuning = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    if (backoff := kwargs.pop("backoff", None)) is not None:
        tuning.update(retries=backoff.attempts, retry_base_s=backoff.base_s, retry_cap_s=backoff.cap_s)
    if (timeout := kwargs.pop("timeout_s", None)) is not None:
        tuning["connect_timeout_s"], tuning["read_timeout_s"] = timeout
    for seam in ("sleep", "session_factory"):
        if seam in kwargs:
            kwargs["_" + seam] = kwargs.pop(seam)
    return {**kwargs, "tuning": Tuning(**tuning)} if tuning else kwargs


@pytest.fixture
def make_registry(tmp_path: Path):
    """Factory: a Registry client on a tmp cache that never sleeps between retries.

    ``make_registry(cache=None, **kwargs)``: Registry's keywords, plus the
    ``Tuning`` fields, ``backoff``, ``timeout_s``, ``sleep`` and
    ``session_factory`` as flat keywords (see ``registry_args``); defaults: a
    fresh DiskCache under tmp_path, ``chunking_threshold=1 MiB``,
    ``max_streams=4``, ``Backoff(attempts=4)``.  Clients are closed when the
    test ends.
    """
    made: list[Registry] = []

    def make(cache: DiskCache | None = None, **kwargs) -> Registry:
        if cache is None:
            cache = DiskCache(tmp_path / f"cache{len(made)}")
        kwargs.setdefault("chunking_threshold", CHUNKING_THRESHOLD)
        kwargs.setdefault("max_streams", 4)
        kwargs.setdefault("backoff", Backoff(attempts=4, base_s=0.0, cap_s=0.0))
        kwargs.setdefault("sleep", lambda s: None)
        # A short read timeout bounds a hung test, never its speed.
        kwargs.setdefault("timeout_s", (5.0, 10.0))
        reg = Registry(cache, **registry_args(**kwargs))
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()


# --- the local API's world (tests/test_api.py, tests/integration/test_api_server.py) ---
#
# As in Ollama's server tests: the registry mask is example.com/library/_:latest
# and every request for https://example.com/... is routed to a TestRegistry on
# 127.0.0.1:0 (the seed's DialContext), so upstream errors name
# https://example.com/... exactly as the seed expects.  Pulls that must stay
# in flight are held by ``gate`` on blob requests, never by sleeps.

API_MASK = "example.com/library/_:latest"
API_CHUNK = 64 * 1024
TESTDATA = Path(__file__).resolve().parent.parent / "testdata"
GATE_WAIT_S = 60  # generous upper bound: a test that forgets its gate fails instead of hanging


class ExampleComAdapter(requests.adapters.HTTPAdapter):
    """Route ``https://example.com/...`` to target; hold blob GETs while ``gate`` is clear."""

    def __init__(self, target: str, gate: threading.Event | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.gate = gate

    def send(self, request, **kwargs):
        if urlsplit(request.url).hostname == "example.com":
            request.url = self.target + request.path_url
        if self.gate is not None and "/blobs/" in request.url:
            assert self.gate.wait(GATE_WAIT_S), "gate never opened"
        return super().send(request, **kwargs)


def example_com_sessions(target: str, gate: threading.Event | None = None):
    """Return a Registry session_factory whose sessions send example.com to target."""

    def factory(max_streams: int, *, verify_tls: bool = True):
        s = new_session(max_streams, verify_tls=verify_tls)
        adapter = ExampleComAdapter(target, gate, pool_maxsize=max_streams + 2, max_retries=0)
        s.mount("https://example.com/", adapter)
        s.mount(target + "/", adapter)
        return s

    return factory


def copy_testdata(name: str, dest: Path, models: list[tuple[str, list[int], int]]) -> Path:
    """Copy testdata/<name> to dest, or build the same models there if it is missing."""
    src = TESTDATA / name
    if (src / "manifests").is_dir():
        shutil.copytree(src, dest)
    else:
        for model, sizes, seed in models:
            build_model(dest, model, sizes, seed=seed)
    return dest


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A copy of testdata/models: the local models directory, holding example.com/library/smol."""
    return copy_testdata("models", tmp_path / "models", [("example.com/library/smol:latest", [1024, 512], 0)])


@pytest.fixture
def api_upstream(tmp_path: Path):
    """A TestRegistry serving a copy of testdata/registry plus a 4 MiB ``big`` model.

    Models smol, chunked and big (in API_CHUNK chunks); ``BOOM``'s manifest
    answers status 999 with ``{"error": "boom"}``.
    """
    root = copy_testdata(
        "registry",
        tmp_path / "registry",
        [("example.com/library/smol:latest", [2048, 1024], 1), ("example.com/library/chunked:latest", [200 * 1024], 2)],
    )
    build_model(root, "example.com/library/big:latest", [4 << 20], seed=3)
    with TestRegistry(root, chunk_size=API_CHUNK) as reg:
        reg.faults.routes["/v2/library/BOOM/manifests/latest"] = (999, b'{"error": "boom"}')
        yield reg


@pytest.fixture
def gate() -> threading.Event:
    """Blob requests of api_registry wait while this is clear; open unless a test closes it."""
    g = threading.Event()
    g.set()
    yield g
    g.set()  # never leave a worker waiting


@pytest.fixture
def api_registry(models_dir: Path, api_upstream: TestRegistry, gate: threading.Event) -> Registry:
    """A Registry on models_dir with mask API_MASK, whose example.com requests reach api_upstream."""
    reg = Registry(
        DiskCache(models_dir, fsync=False),
        mask=API_MASK,
        max_streams=2,
        tuning=Tuning(chunking_threshold=API_CHUNK, retries=2, retry_base_s=0.001),
        _session_factory=example_com_sessions(api_upstream.url, gate),
    )
    yield reg
    reg.close()


# -- doubles for the stream monitor (tests/test_transport.py, tests/test_hedge.py) --


class FakeSock:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self, how) -> None:
        self.shut = True


class FakeResp:
    """Just enough of a requests.Response for Stream.abort: .raw.connection.sock (and .sock)."""

    def __init__(self) -> None:
        self.sock = FakeSock()
        conn = type("Conn", (), {"sock": self.sock})()
        self.raw = type("Raw", (), {"connection": conn})()


class FakeClock:
    """A clock the test moves by hand (``.t``)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t
