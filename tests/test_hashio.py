"""Hash and pwrite kernels, on both backends (``chunkpull._fallback`` and ``chunkpull._native``).

Every kernel test takes the ``backend`` fixture, so it runs against the
pure-Python twin and against the Cython extension (skipped when unbuilt).
"""

from __future__ import annotations

import ast
import errno
import hashlib
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env
from blake3 import blake3 as ref_blake3

from chunkpull import _hashio

SRC = Path(__file__).resolve().parent.parent / "src" / "chunkpull"

MIB = 1 << 20
# A 1 MiB pattern that is not periodic in 2, 4 or 64 bytes.
PATTERN = bytes((i * 31 + (i >> 8) * 7) & 0xFF for i in range(MIB))

SHA256_KNOWN = [
    pytest.param(b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", id="empty"),
    pytest.param(b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", id="abc"),
    pytest.param(
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        id="fips-two-blocks",
    ),
    pytest.param(b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", id="million-a"),
]


@pytest.mark.parametrize("data, want", SHA256_KNOWN)
def test_sha256_known_answers(backend, data, want):
    got = backend.sha256(data).hex()
    assert got == want, f"sha256({data[:16]!r}...) = {got}, want {want}"


def test_sha256_1mib_pattern(backend):
    want = hashlib.sha256(PATTERN).hexdigest()
    got = backend.sha256(PATTERN).hex()
    assert got == want, f"sha256(1 MiB pattern) = {got}, want {want}"


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 2048, 65537, MIB], ids=lambda n: f"{n}B")
def test_blake3_matches_package(backend, size):
    data = PATTERN[:size]
    want = ref_blake3(data).hexdigest()
    got = backend.blake3(data).hex()
    assert got == want, f"blake3({size} bytes) = {got}, want {want}"


def test_digests_are_32_bytes(backend):
    for fn in (backend.sha256, backend.blake3):
        got = fn(b"x")
        assert isinstance(got, bytes) and len(got) == 32, f"{fn.__name__}(b'x') = {got!r}, want 32 bytes"


def _anon_mmap(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, len(data))
    m[:] = data
    return m


def _readonly_mmap(tmp_path: Path, data: bytes) -> mmap.mmap:
    p = tmp_path / "mapped"
    p.write_bytes(data)
    with open(p, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


DATA = PATTERN[:100_000]
# Each maker returns a buffer whose bytes are exactly DATA[1000:99_000].
BUFFER_KINDS = [
    pytest.param(lambda tmp: DATA[1000:99_000], id="bytes"),
    pytest.param(lambda tmp: bytearray(DATA[1000:99_000]), id="bytearray"),
    pytest.param(lambda tmp: memoryview(bytearray(DATA))[1000:99_000], id="memoryview-slice"),
    pytest.param(lambda tmp: memoryview(DATA)[1000:99_000], id="readonly-memoryview-slice"),
    pytest.param(lambda tmp: _anon_mmap(DATA[1000:99_000]), id="mmap"),
    pytest.param(lambda tmp: _readonly_mmap(tmp, DATA[1000:99_000]), id="readonly-mmap"),
    pytest.param(lambda tmp: np.frombuffer(DATA, dtype=np.uint8)[1000:99_000].copy(), id="numpy-uint8"),
    pytest.param(lambda tmp: np.frombuffer(DATA, dtype=np.uint8)[1000:99_000], id="numpy-readonly-view"),
]


def hash_pwrite(backend, fd: int, data, offset: int) -> bytes:
    """Write data at offset through sha256_update_pwrite on a fresh state; return the digest."""
    state = backend.sha256_init()
    backend.sha256_update_pwrite(state, fd, data, offset)
    return backend.sha256_final(state)


@pytest.mark.parametrize("make", BUFFER_KINDS)
def test_buffer_kinds(backend, make, tmp_path):
    buf = make(tmp_path)
    want_bytes = DATA[1000:99_000]
    for fn, ref in ((backend.sha256, lambda b: hashlib.sha256(b).digest()), (backend.blake3, lambda b: ref_blake3(b).digest())):
        got, want = fn(buf).hex(), ref(want_bytes).hex()
        assert got == want, f"{fn.__name__}({type(buf).__name__}) = {got}, want {want}"
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        backend.pwrite_all(fd, buf, 7)
        got_digest = hash_pwrite(backend, fd, buf, 7 + len(want_bytes))
    finally:
        os.close(fd)
    assert got_digest == hashlib.sha256(want_bytes).digest(), f"sha256_update_pwrite({type(buf).__name__}) hashed the wrong bytes"
    data = path.read_bytes()
    assert data == b"\0" * 7 + want_bytes + want_bytes, f"pwrite_all/sha256_update_pwrite({type(buf).__name__}) wrote the wrong bytes"


NON_CONTIGUOUS = [
    pytest.param(lambda: memoryview(bytearray(PATTERN[:4096]))[::2], id="memoryview-step-2"),
    pytest.param(lambda: np.frombuffer(PATTERN[:4096], dtype=np.uint8)[::3], id="numpy-step-3"),
    pytest.param(lambda: np.frombuffer(PATTERN[:4096], dtype=np.uint8).reshape(64, 64)[:, :8], id="numpy-2d-columns"),
]
REJECTED = (ValueError, BufferError, TypeError)


@pytest.mark.parametrize("make", NON_CONTIGUOUS)
def test_non_contiguous_rejected(backend, make, tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        calls = {
            "sha256": lambda v: backend.sha256(v),
            "blake3": lambda v: backend.blake3(v),
            "pwrite_all": lambda v: backend.pwrite_all(fd, v, 0),
            "sha256_update": lambda v: backend.sha256_update(backend.sha256_init(), v),
            "sha256_update_pwrite": lambda v: backend.sha256_update_pwrite(backend.sha256_init(), fd, v, 0),
        }
        for name, call in calls.items():
            with pytest.raises(REJECTED):
                call(make())
                pytest.fail(f"{name}(non-contiguous view) did not raise")
    finally:
        os.close(fd)
    assert (tmp_path / "out").stat().st_size == 0, "a rejected buffer still wrote bytes"


@pytest.mark.parametrize(
    "writes, want",
    [
        pytest.param([(b"abc", 0)], b"abc", id="at-zero"),
        pytest.param([(b"xyz", 5)], b"\0\0\0\0\0xyz", id="past-end-leaves-hole"),
        pytest.param([(b"hello", 0), (b"J", 0), (b"!", 5)], b"Jello!", id="overwrite-and-append"),
        pytest.param([(b"", 100)], b"", id="empty-writes-nothing"),
        pytest.param([(PATTERN, 3), (b"AB", 1)], b"\0AB" + PATTERN, id="1MiB-then-patch"),
    ],
)
def test_pwrite_all_at_offsets(backend, tmp_path, writes, want):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for data, offset in writes:
            assert backend.pwrite_all(fd, data, offset) is None
    finally:
        os.close(fd)
    got = path.read_bytes()
    assert got == want, f"pwrite_all {[(d[:8], o) for d, o in writes]} left {got[:16]!r}..., want {want[:16]!r}..."


def test_negative_offset_rejected(backend, tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for call in (lambda: backend.pwrite_all(fd, b"x", -1), lambda: backend.sha256_update_pwrite(backend.sha256_init(), fd, b"x", -1)):
            with pytest.raises((ValueError, OSError)):
                call()
    finally:
        os.close(fd)


def _closed_fd(tmp_path: Path) -> int:
    fd = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)
    return fd


@pytest.mark.parametrize("kernel", ["pwrite_all", "sha256_update_pwrite"])
@pytest.mark.parametrize("fd_kind", ["minus-one", "closed", "read-only"])
def test_bad_fd_raises_oserror(backend, tmp_path, kernel, fd_kind):
    if fd_kind == "minus-one":
        fd, want_errno = -1, errno.EBADF
    elif fd_kind == "closed":
        fd, want_errno = _closed_fd(tmp_path), errno.EBADF
    else:
        (tmp_path / "ro").write_bytes(b"")
        fd, want_errno = os.open(tmp_path / "ro", os.O_RDONLY), errno.EBADF
    state = backend.sha256_init()
    backend.sha256_update(state, b"before")
    calls = {
        "pwrite_all": lambda: backend.pwrite_all(fd, b"data", 0),
        "sha256_update_pwrite": lambda: backend.sha256_update_pwrite(state, fd, b"data", 0),
    }
    try:
        with pytest.raises(OSError) as info:
            calls[kernel]()
    finally:
        if fd_kind == "read-only":
            os.close(fd)
    assert info.value.errno == want_errno, f"{kernel}({fd_kind} fd) errno = {info.value.errno}, want {want_errno}"
    # A failed write must not advance a running hash.
    got = backend.sha256_final(state).hex()
    want = hashlib.sha256(b"before").hexdigest()
    assert got == want, f"state after failed {kernel} = {got}, want {want} (unchanged)"


@pytest.mark.parametrize("data", [b"", b"abc", PATTERN], ids=["empty", "abc", "1MiB"])
def test_sha256_update_pwrite_hashes_and_writes(backend, tmp_path, data):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        got = hash_pwrite(backend, fd, data, 10)
    finally:
        os.close(fd)
    want = hashlib.sha256(data).digest()
    assert got == want, f"sha256_update_pwrite({len(data)} bytes) = {got.hex()}, want {want.hex()}"
    written = path.read_bytes()
    assert written == (b"\0" * 10 + data if data else b""), "sha256_update_pwrite did not write the bytes at the offset"


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([], id="nothing"),
        pytest.param([b""], id="one-empty"),
        pytest.param([b"a", b"b", b"c"], id="a-b-c"),
        pytest.param([PATTERN[:63], PATTERN[63:64], PATTERN[64:65]], id="block-boundary"),
        pytest.param([PATTERN[i : i + 100_003] for i in range(0, MIB, 100_003)], id="1MiB-in-odd-pieces"),
    ],
)
def test_incremental_equals_one_shot(backend, pieces):
    state = backend.sha256_init()
    for p in pieces:
        backend.sha256_update(state, p)
    whole = b"".join(pieces)
    got, want = backend.sha256_final(state), hashlib.sha256(whole).digest()
    assert got == want, f"init/update*{len(pieces)}/final = {got.hex()}, want {want.hex()}"
    assert backend.sha256(whole) == want


def test_final_leaves_state_usable(backend):
    state = backend.sha256_init()
    backend.sha256_update(state, b"ab")
    first = backend.sha256_final(state)
    again = backend.sha256_final(state)
    backend.sha256_update(state, b"c")
    assert first == again == hashlib.sha256(b"ab").digest(), "sha256_final changed the state"
    assert backend.sha256_final(state) == hashlib.sha256(b"abc").digest(), "update after final went wrong"


def test_update_pwrite_hashes_and_writes(backend, tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    state = backend.sha256_init()
    pieces = [PATTERN[i : i + 300_000] for i in range(0, MIB, 300_000)]
    try:
        offset = 0
        for p in pieces:
            assert backend.sha256_update_pwrite(state, fd, p, offset) is None
            offset += len(p)
    finally:
        os.close(fd)
    assert backend.sha256_final(state) == hashlib.sha256(PATTERN).digest()
    assert path.read_bytes() == PATTERN


def test_parallel_disjoint_pwrite(backend, tmp_path):
    """8 threads write interleaved disjoint slices to one fd; the file comes out whole."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    piece = 8192 + 13  # odd, so slices straddle pages
    slices = [(off, PATTERN[off : off + piece]) for off in range(0, MIB, piece)]
    digests: dict[int, bytes] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for off, data in slices[k::8]:
                if k % 2:
                    backend.pwrite_all(fd, data, off)
                else:
                    digests[off] = hash_pwrite(backend, fd, data, off)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        os.close(fd)
    assert not errors, f"workers failed: {errors!r}"
    assert path.read_bytes() == PATTERN, "parallel disjoint writes did not reassemble the data"
    for off, got in digests.items():
        assert got == hashlib.sha256(PATTERN[off : off + piece]).digest(), f"sha256_update_pwrite at {off} gave a wrong digest"


# -- RunningSha256 on each backend --------------------------------------------


@pytest.fixture
def running(hashio_backend):
    """_hashio.RunningSha256 bound to the backend under test; its name."""
    return hashio_backend


def test_running_sha256_checkpoint_resume(running, tmp_path):
    h = _hashio.RunningSha256()
    h.update(PATTERN[:300_000])
    state = h.checkpoint()
    if running == "python":
        assert state is None, f"checkpoint() on the python backend = {state!r}, want None (not persistable)"
        with pytest.raises(ValueError):
            _hashio.RunningSha256(b"\0" * 112, 300_000)
        return
    assert isinstance(state, bytes) and len(state) == _hashio._impl.SHA256_STATE_SIZE
    # Keep going on the original, then resume a copy from the checkpoint.
    h.update(PATTERN[300_000:])
    resumed = _hashio.RunningSha256(state, 300_000)
    assert resumed.length == 300_000
    resumed.update(PATTERN[300_000:])
    want = hashlib.sha256(PATTERN).digest()
    assert h.digest() == want and resumed.digest() == want, "resumed hash differs from one-shot"
    with pytest.raises(ValueError):
        _hashio.RunningSha256(state[:-1], 300_000)


def test_running_sha256_snapshot_and_file(running, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(PATTERN)
    h = _hashio.RunningSha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = memoryview(bytearray(65536))
        h.update_from_file(fd, 0, 500_000, buf)
        snap = h.snapshot()
        h.update_from_file(fd, 500_000, MIB - 500_000, buf)
        other = _hashio.RunningSha256.from_snapshot(snap)
        other.update(PATTERN[500_000:])
        with pytest.raises(OSError):
            _hashio.RunningSha256().update_from_file(fd, MIB - 10, 20, buf)  # past the end of the file
    finally:
        os.close(fd)
    assert h.length == other.length == MIB
    assert h.digest() == other.digest() == hashlib.sha256(PATTERN).digest()
    length, state = _hashio.RunningSha256.persistable(snap)
    if running == "native":
        assert (length, len(state)) == (500_000, _hashio._impl.SHA256_STATE_SIZE)
    else:
        assert (length, state) == (0, None)


# -- backend selection and API parity -------------------------------------------


def _public_names_of_source(path: Path) -> set[str]:
    """Top-level public functions and constants defined (not imported) in a .py/.pyi file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def _signatures_of_source(path: Path) -> dict[str, list[str]]:
    return {
        node.name: [a.arg for a in node.args.args]
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }


def test_fallback_and_stub_expose_the_same_names():
    fallback = _public_names_of_source(SRC / "_fallback.py")
    stub = _public_names_of_source(SRC / "_native.pyi")
    assert fallback == stub, f"_fallback only: {sorted(fallback - stub)}, _native.pyi only: {sorted(stub - fallback)}"
    sig_f, sig_s = _signatures_of_source(SRC / "_fallback.py"), _signatures_of_source(SRC / "_native.pyi")
    assert sig_f == sig_s, f"signatures differ: _fallback {sig_f}, _native.pyi {sig_s}"


def test_native_module_matches_stub():
    native = pytest.importorskip("chunkpull._native", reason="native extension not built")
    import inspect

    stub = _public_names_of_source(SRC / "_native.pyi")
    got = {n for n in dir(native) if not n.startswith("_")}
    assert got == stub, f"_native only: {sorted(got - stub)}, _native.pyi only: {sorted(stub - got)}"
    for name, params in _signatures_of_source(SRC / "_native.pyi").items():
        sig = list(inspect.signature(getattr(native, name)).parameters)
        assert sig == params, f"_native.{name}{tuple(sig)}, want {tuple(params)} as in _native.pyi"


def test_hashio_exports_backend_kernels():
    assert _hashio.BACKEND in ("python", "native")
    for name in ("sha256", "blake3", "pwrite_all", "start_writeback"):
        assert getattr(_hashio, name) is getattr(_hashio._impl, name)


def _import_with_backend(value: str) -> subprocess.CompletedProcess:
    env = child_env(CHUNKPULL_BACKEND=value)
    return subprocess.run(
        [sys.executable, "-c", "import chunkpull._hashio as h; print(h.BACKEND)"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_bogus_backend_import_error():
    r = _import_with_backend("bogus")
    assert r.returncode != 0, f"import with CHUNKPULL_BACKEND=bogus succeeded: {r.stdout!r}"
    assert "ImportError" in r.stderr, r.stderr
    for valid in ("auto", "native", "python"):
        assert valid in r.stderr.splitlines()[-1], f"error does not name {valid!r}: {r.stderr.splitlines()[-1]!r}"


@pytest.mark.parametrize("value, want", [("python", "python"), ("PYTHON", "python"), (" python ", "python")])
def test_backend_env_python(value, want):
    r = _import_with_backend(value)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want, f"BACKEND with CHUNKPULL_BACKEND={value!r} = {r.stdout.strip()!r}, want {want!r}"


def test_backend_env_native():
    pytest.importorskip("chunkpull._native", reason="native extension not built")
    r = _import_with_backend("native")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "native"


def test_start_writeback_is_a_harmless_hint(backend, tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        backend.pwrite_all(fd, PATTERN, 0)
        assert backend.start_writeback(fd, 0, MIB) is None
        assert backend.start_writeback(fd, MIB, 0) is None
    finally:
        os.close(fd)
    # Only a hint: errors are left for fsync to report.
    assert backend.start_writeback(_closed_fd(tmp_path), 0, 10) is None
    assert path.read_bytes() == PATTERN
