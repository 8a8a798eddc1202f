"""Chunks: the chunksums parser, ``split``, and ``BlobAssembler`` over a real work file."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest
from blake3 import blake3 as ref_blake3

from chunkpull.core.chunks import MAX_CHUNKSUMS_BYTES, Chunk, ChunkSum, parse_chunksums, split
from chunkpull.engine.assembler import BlobAssembler
from chunkpull.core.digest import Digest
from chunkpull.errors import IntegrityError

H = "sha256:" + "ab" * 32
B3 = "blake3:" + "cd" * 32


def body(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def tiling(size: int, step: int, digest: str = H) -> bytes:
    return body(*(f"{digest} {s}-{min(s + step, size) - 1}" for s in range(0, size, step)))


# -- parse_chunksums ------------------------------------------------------------

VALID = [
    pytest.param(body(f"{H} 0-9"), 10, [(0, 9)], id="one-chunk"),
    pytest.param(body(f"{H} 0-4", f"{H} 5-9"), 10, [(0, 4), (5, 9)], id="two-chunks"),
    pytest.param(tiling(5, 1), 5, [(i, i) for i in range(5)], id="tiny-1-byte-chunks"),
    pytest.param(body(f"{H} 0-3", f"{H} 4-9"), 10, [(0, 3), (4, 9)], id="uneven"),
    pytest.param(f"{H} 0-4\r\n{H} 5-9\r\n".encode(), 10, [(0, 4), (5, 9)], id="crlf"),
    pytest.param(f"{H} 0-4\n{H} 5-9".encode(), 10, [(0, 4), (5, 9)], id="no-final-newline"),
    pytest.param(f"\n  {H}\t 0-4  \n\n{H}   5-9\n\n".encode(), 10, [(0, 4), (5, 9)], id="blank-lines-and-spaces"),
    pytest.param(b"", 0, [], id="empty-blob-empty-body"),
    pytest.param(b"\n \n", 0, [], id="empty-blob-blank-body"),
    pytest.param(tiling(1000, 7), 1000, [(s, min(s + 7, 1000) - 1) for s in range(0, 1000, 7)], id="143-chunks"),
]


@pytest.mark.parametrize("data, size, want", VALID)
def test_parse_chunksums_valid(data, size, want):
    got = [(s.chunk.start, s.chunk.end) for s in parse_chunksums(data, size)]
    assert got == want, f"parse_chunksums({data[:60]!r}..., {size}) = {got!r}, want {want!r}"


def test_parse_chunksums_digests():
    sums = parse_chunksums(body(f"{H} 0-4", f"{B3} 5-9"), 10)
    got = [str(s.digest) for s in sums]
    assert got == [H, B3], f"digests = {got!r}, want {[H, B3]!r}"
    assert sums[1].digest.algorithm == "blake3"
    assert sums[0] == ChunkSum(Chunk(0, 4), Digest.parse(H))


INVALID = [
    pytest.param(body(f"{H} 0-4"), 10, "missing", id="missing-chunk-at-end"),
    pytest.param(body(f"{H} 0-3", f"{H} 5-9"), 10, "gap", id="gap"),
    pytest.param(body(f"{H} 1-9"), 10, "gap", id="does-not-start-at-0"),
    pytest.param(body(f"{H} 0-5", f"{H} 5-9"), 10, "overlap", id="overlap"),
    pytest.param(body(f"{H} 0-9", f"{H} 0-9"), 10, "overlap", id="duplicate"),
    pytest.param(body(f"{H} 5-9", f"{H} 0-4"), 10, "", id="out-of-order"),
    pytest.param(body(f"{H} 0-10"), 10, "outside", id="end-beyond-size"),
    pytest.param(body(f"{H} 0-4", f"{H} 5-99999999999999999999999"), 10, "outside", id="end-huge"),
    pytest.param(body(f"{H} 0-4", f"{H} 5-3"), 10, "", id="start-greater-than-end"),
    pytest.param(body(f"{H} 0-9"), 0, "", id="chunk-for-empty-blob"),
    pytest.param(body(f"{H}"), 10, "line 1", id="missing-range"),
    pytest.param(body(f"{H} 0-"), 10, "line 1", id="half-range"),
    pytest.param(body(f"{H} 0 9"), 10, "line 1", id="range-without-dash"),
    pytest.param(body("0-9"), 10, "line 1", id="missing-digest"),
    pytest.param(body(f"{H} 0-4", "sha256:abc 5-9"), 10, "line 2", id="short-digest"),
    pytest.param(body(f"{H.upper()} 0-9"), 10, "line 1", id="uppercase-digest"),
    pytest.param(body(f"md5:{'ab' * 16} 0-9"), 10, "line 1", id="md5-digest"),
    pytest.param(body(f"sha512:{'ab' * 32} 0-9"), 10, "line 1", id="unknown-algorithm"),
    pytest.param(body(f"{H} 0-9 extra"), 10, "line 1", id="extra-field"),
    pytest.param(body(f"{H} 0-4 {H}", f"{H} 5-9"), 10, "line 1", id="extra-digest"),
    pytest.param(body(f"{H} a-9"), 10, "line 1", id="non-numeric-start"),
    pytest.param(body(f"{H} 0-x"), 10, "line 1", id="non-numeric-end"),
    pytest.param(body(f"{H} -1-9"), 10, "line 1", id="negative-start"),
    pytest.param(body(f"{H} 0x0-9"), 10, "line 1", id="hex-number"),
    pytest.param(body(f"{H} ٠-9"), 10, "line 1", id="non-ascii-digit"),
    pytest.param(body(f"{H} 0-4", f"{H}\t5-9 # comment"), 10, "line 2", id="trailing-comment"),
    pytest.param(b"\xff\xfe 0-9\n", 10, "line 1", id="binary-junk"),
    pytest.param(b"", 10, "missing", id="empty-body-for-nonempty-blob"),
    pytest.param(b"\n\n", 10, "missing", id="blank-body-for-nonempty-blob"),
]


@pytest.mark.parametrize("data, size, want_msg", INVALID)
def test_parse_chunksums_invalid(data, size, want_msg):
    with pytest.raises(IntegrityError) as info:
        got = parse_chunksums(data, size)
        pytest.fail(f"parse_chunksums({data[:60]!r}, {size}) = {got!r}, want IntegrityError")
    assert want_msg in str(info.value), f"parse_chunksums({data[:60]!r}, {size}) raised {str(info.value)!r}, want it to mention {want_msg!r}"


def test_parse_chunksums_blake3_accepted():
    sums = parse_chunksums(tiling(10, 3, B3), 10)
    assert [s.digest.algorithm for s in sums] == ["blake3"] * 4


def test_parse_chunksums_oversized_body_rejected():
    line = f"{H} 0-0\n".encode()
    data = line * (MAX_CHUNKSUMS_BYTES // len(line) + 1)
    assert len(data) > MAX_CHUNKSUMS_BYTES
    with pytest.raises(IntegrityError, match="larger"):
        parse_chunksums(data, 10)


# -- split ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, chunk_size, want",
    [
        pytest.param(0, 4, [], id="empty"),
        pytest.param(1, 4, [(0, 0)], id="one-byte"),
        pytest.param(4, 4, [(0, 3)], id="exact-one"),
        pytest.param(8, 4, [(0, 3), (4, 7)], id="exact-two"),
        pytest.param(9, 4, [(0, 3), (4, 7), (8, 8)], id="short-last"),
        pytest.param(3, 1, [(0, 0), (1, 1), (2, 2)], id="1-byte-chunks"),
        pytest.param(5, 100, [(0, 4)], id="chunk-larger-than-blob"),
    ],
)
def test_split(size, chunk_size, want):
    chunks = split(size, chunk_size)
    got = [(c.start, c.end) for c in chunks]
    assert got == want, f"split({size}, {chunk_size}) = {got!r}, want {want!r}"
    assert sum(c.size for c in chunks) == size


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_split_rejects_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError):
        split(10, chunk_size)


def test_chunk_str_and_size():
    c = Chunk(5, 9)
    assert (str(c), c.size) == ("5-9", 5)


# -- BlobAssembler ------------------------------------------------------------------

SIZE = 200_000
STEP = 16_384  # 13 chunks, the last one short


def make_data(size: int = SIZE, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sums_for(data: bytes, step: int = STEP, algorithm: str = "sha256") -> list[ChunkSum]:
    out = []
    for c in split(len(data), step):
        piece = data[c.start : c.end + 1]
        raw = hashlib.sha256(piece).digest() if algorithm == "sha256" else ref_blake3(piece).digest()
        out.append(ChunkSum(c, Digest.from_bytes(raw, algorithm)))
    return out


class WorkFile:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def work(tmp_path):
    files: list[WorkFile] = []

    def make(size: int = SIZE) -> WorkFile:
        f = WorkFile(tmp_path / f"work{len(files)}.partial", size)
        files.append(f)
        return f

    yield make
    for f in files:
        f.close()


def assembler(wf: WorkFile, data: bytes, sums=None, digest: Digest | None = None, **kw) -> BlobAssembler:
    d = digest or Digest.from_bytes(hashlib.sha256(data).digest())
    return BlobAssembler(wf.fd, d, len(data), sums if sums is not None else sums_for(data), **kw)


def write_chunk(a: BlobAssembler, data: bytes, i: int, *, flip: int | None = None, pieces: int = 3) -> None:
    c = a.sums[i].chunk
    piece = bytearray(data[c.start : c.end + 1])
    if flip is not None:
        piece[flip] ^= 0xFF
    view = memoryview(piece)
    step = max(1, len(piece) // pieces)
    for off in range(0, len(piece), step):
        a.write(c.start + off, view[off : off + step])
    a.chunk_done(i)


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled", "last-first"])
def test_assembler_out_of_order(hashio_backend, work, order):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    idx = list(range(len(a.sums)))
    if order == "reversed":
        idx.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(idx)
    elif order == "last-first":
        idx = idx[-1:] + idx[:-1]
    for i in idx:
        write_chunk(a, data, i)
    got = a.finish()
    assert got == [], f"finish() after {order} chunks = {got!r}, want []"
    assert wf.path.read_bytes() == data


def test_assembler_concurrent_chunks(hashio_backend, work):
    data = make_data(1 << 20)
    wf = work(len(data))
    a = assembler(wf, data, sums_for(data, 8192))
    idx = list(range(len(a.sums)))
    random.Random(5).shuffle(idx)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in idx[k::6]:
                write_chunk(a, data, i)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert a.done_chunks() == [True] * len(a.sums)
    assert a.finish() == [], "concurrently assembled blob failed verification"


@pytest.mark.parametrize("bad", [[0], [6], [12], [3, 9], [0, 12]], ids=lambda b: "bad-" + "-".join(map(str, b)))
@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_assembler_finds_and_repairs_bad_chunks(hashio_backend, work, bad, algorithm):
    data = make_data()
    wf = work()
    a = assembler(wf, data, sums_for(data, algorithm=algorithm))
    for i in range(len(a.sums)):
        write_chunk(a, data, i, flip=17 if i in bad else None)
    got = a.finish()
    assert got == bad, f"finish() with bad chunks {bad} = {got!r}, want {bad!r}"
    assert a.done_chunks() == [i not in bad for i in range(len(a.sums))], "bad chunks are not marked undone"
    for i in bad:
        write_chunk(a, data, i)
    got = a.finish()
    assert got == [], f"finish() after re-writing {bad} = {got!r}, want []"
    assert wf.path.read_bytes() == data


def test_assembler_repair_twice(hashio_backend, work):
    """A re-fetched chunk that is bad again is found again, then fixed."""
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    for i in range(len(a.sums)):
        write_chunk(a, data, i, flip=1 if i == 4 else None)
    assert a.finish() == [4]
    write_chunk(a, data, 4, flip=2)
    assert a.finish() == [4]
    write_chunk(a, data, 4)
    assert a.finish() == []


def test_assembler_chunks_verify_but_whole_does_not(hashio_backend, work):
    data = make_data()
    wrong = Digest.from_bytes(hashlib.sha256(data + b"x").digest())
    wf = work()
    a = assembler(wf, data, digest=wrong)
    for i in range(len(a.sums)):
        write_chunk(a, data, i)
    with pytest.raises(IntegrityError) as info:
        got = a.finish()
        pytest.fail(f"finish() = {got!r}, want IntegrityError")
    assert str(wrong) in str(info.value)
    assert info.value.got == "sha256:" + hashlib.sha256(data).hexdigest()


def test_assembler_without_chunk_digests_cannot_locate(hashio_backend, work):
    data = make_data()
    wf = work()
    sums = [ChunkSum(c, None) for c in split(len(data), STEP)]
    a = assembler(wf, data, sums)
    for i in range(len(sums)):
        write_chunk(a, data, i, flip=5 if i == 2 else None)
    with pytest.raises(IntegrityError):
        a.finish()


def test_assembler_without_chunk_digests_good(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data, [ChunkSum(c, None) for c in split(len(data), STEP)])
    for i in reversed(range(len(a.sums))):
        write_chunk(a, data, i)
    assert a.finish() == []


def test_assembler_finish_before_done(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    write_chunk(a, data, 0)
    with pytest.raises(RuntimeError):
        a.finish()


def test_assembler_empty_blob(hashio_backend, work):
    wf = work(0)
    a = assembler(wf, b"", [])
    assert a.finish() == []


def test_assembler_short_work_file(hashio_backend, work):
    """A work file that ends before the blob does cannot pass (the tail reads back short)."""
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    last = len(a.sums) - 1
    for i in range(last):
        write_chunk(a, data, i)
    os.ftruncate(wf.fd, SIZE - 10)
    try:
        a.chunk_done(last)  # its bytes never landed
        got = a.finish()
    except (IntegrityError, OSError):
        return
    assert got, "finish() accepted a work file shorter than the blob"


def test_assembler_resume_from_checkpoint(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    for i in range(5):
        write_chunk(a, data, i)
    hashed, state = a.hashed_prefix()
    if hashio_backend == "python":
        assert (hashed, state) == (0, None), "python states are not persistable"
        return
    assert hashed == a.sums[5].chunk.start, f"hashed_prefix() = {hashed}, want {a.sums[5].chunk.start}"
    b = assembler(wf, data, hash_state=state, hashed=hashed)
    assert b.done_chunks()[:5] == [True] * 5 and not any(b.done_chunks()[5:])
    for i in range(5, len(b.sums)):
        write_chunk(b, data, i)
    assert b.finish() == []


def test_assembler_damaged_resume_record_is_harmless(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data, hash_state=b"garbage", hashed=STEP)
    for i in range(len(a.sums)):
        write_chunk(a, data, i)
    assert a.finish() == []


def deliver_chunk(a: BlobAssembler, data: bytes, i: int, released: list, pieces: int = 2) -> None:
    """Deliver chunk i in pieces (copies the assembler may park); count releases in released."""
    c = a.sums[i].chunk
    step = max(1, c.size // pieces)
    for off in range(c.start, c.end + 1, step):
        view = memoryview(bytearray(data[off : min(off + step, c.end + 1)]))
        a.deliver(i, off, view, lambda: released.append(1))


def test_assembler_spill_gives_back_the_farthest_chunk_and_still_verifies(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    released: list = []
    for i in (1, 2, 5):  # ahead of chunk 0, which the hash waits for
        deliver_chunk(a, data, i, released)
    assert not released, "pieces ahead of the hash must wait for it in memory"
    assert a.spill() == 2, "spill() frees the parked pieces of one chunk"
    assert len(released) == 2
    assert a._spilled[5] and not a._spilled[2], "the chunk farthest ahead is the one spilled"
    # Later pieces of a spilled chunk are released at once, not parked.
    deliver_chunk(a, data, 5, released, pieces=1)
    assert len(released) == 3
    for i in range(len(a.sums)):
        if i not in (1, 2, 5):
            deliver_chunk(a, data, i, released)
        a.chunk_done(i)
    assert a.finish() == []
    assert a.read_back_bytes == a.sums[5].chunk.size, "only the spilled chunk is read back from the file"
    assert wf.path.read_bytes() == data


def test_the_hash_follows_a_spilled_chunk_through_the_file_before_it_is_done(hashio_backend, work):
    """A spilled chunk the hash reaches is read back as far as it is written, not waited for to the end:
    otherwise the hash stalls there and every chunk started meanwhile, far ahead of it, spills too."""
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    a.park_ahead = lambda: 0  # no chunk ahead of the hash may park
    released: list = []
    c1 = a.sums[1].chunk
    half = c1.size // 2
    a.deliver(1, c1.start, memoryview(bytearray(data[c1.start : c1.start + half])), lambda: released.append(1))
    assert a._spilled[1] and released == [1], "a chunk starting ahead of what may park is released once written"
    deliver_chunk(a, data, 0, released)
    a.chunk_done(0)
    assert a._next == 1
    assert a._pos == c1.start + half, "the hash read the written half of the spilled chunk from the file"
    assert a.read_back_bytes == half
    a.deliver(1, c1.start + half, memoryview(bytearray(data[c1.start + half : c1.end + 1])), lambda: released.append(1))
    assert a._pos == c1.end + 1, "and the rest as it is written"
    for i in range(len(a.sums)):
        if i > 1:
            deliver_chunk(a, data, i, released)
        a.chunk_done(i)
    assert a.finish() == []
    assert a.read_back_bytes == c1.size
    assert wf.path.read_bytes() == data


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_chunks_read_back_in_several_buffers_hash_in_order(hashio_backend, tmp_path, direct):
    """Read-backs longer than one buffer are read ahead on a second thread: the bytes still reach the hash in order."""
    data = make_data(2 * (9 << 20) + 12345, seed=7)  # chunks over two read buffers long, and a ragged tail
    sums = sums_for(data, step=9 << 20)
    wf = WorkFile(tmp_path / "big.partial", len(data))
    direct_fd = -1
    if direct:
        try:
            direct_fd = os.open(wf.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            pytest.skip("this file system refuses O_DIRECT")
    try:
        os.pwrite(wf.fd, data, 0)
        a = assembler(wf, data, sums, direct_fd=direct_fd)
        a.mark_done([True] * len(sums))  # as a resume does: every byte comes from the file
        a.chunk_done(0)
        assert a.finish() == []
        assert a.read_back_bytes == len(data)
        a.close()
        assert a._reader is None, "close() stops the reader thread"
    finally:
        if direct_fd >= 0:
            os.close(direct_fd)
        wf.close()


@pytest.mark.parametrize("size", [SIZE, 2 * (9 << 20)], ids=["one-buffer", "several-buffers"])
def test_short_reads_of_the_work_file_still_hash_every_byte(hashio_backend, tmp_path, monkeypatch, size):
    data = make_data(size, seed=8)
    sums = sums_for(data, step=max(STEP, size // 2))
    wf = WorkFile(tmp_path / "short.partial", len(data))
    try:
        os.pwrite(wf.fd, data, 0)
        real = os.preadv

        def short_preadv(fd, bufs, offset):  # the kernel may return fewer bytes than asked for
            return real(fd, [bufs[0][: max(1, len(bufs[0]) // 3)]], offset)

        monkeypatch.setattr(os, "preadv", short_preadv)
        a = assembler(wf, data, sums)
        a.mark_done([True] * len(sums))
        a.chunk_done(0)
        assert a.finish() == []
        a.close()
    finally:
        wf.close()


def test_a_spilled_chunk_reset_for_a_bad_digest_is_read_back_from_its_start_again(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    a.park_ahead = lambda: 0
    released: list = []
    c1 = a.sums[1].chunk
    bad = bytearray(data[c1.start : c1.end + 1])
    bad[0] ^= 0xFF
    a.deliver(1, c1.start, memoryview(bad), lambda: released.append(1))
    deliver_chunk(a, data, 0, released)
    a.chunk_done(0)
    assert a._pos == c1.end + 1, "the bad bytes went into the hash from the file"
    a.reset_chunk(1)  # its chunk digest failed
    assert a._pos == c1.start, "the hash is back at the chunk's start"
    a.deliver(1, c1.start, memoryview(bytearray(data[c1.start : c1.end + 1])), lambda: released.append(1))
    for i in range(1, len(a.sums)):
        if i > 1:
            deliver_chunk(a, data, i, released)
        a.chunk_done(i)
    assert a.finish() == []


def test_assembler_spill_with_nothing_ahead_frees_nothing(hashio_backend, work):
    data = make_data()
    a = assembler(work(), data)
    released: list = []
    deliver_chunk(a, data, 0, released)  # the chunk the hash is on is never spilled
    assert a.spill() == 0


def test_saving_the_resume_record_never_blocks_streams_crediting_bytes(hashio_backend, work):
    """The record's fdatasync may take a while on a busy disk: streams credit bytes meanwhile."""
    from chunkpull.core.manifest import Layer
    from chunkpull.engine.blob import BlobPull
    from chunkpull.engine.config import Source

    data = make_data()
    wf = work()
    a = assembler(wf, data)
    blob = BlobPull(Layer(a.digest, len(data)), Source("http://127.0.0.1:1/v2/library/m"), a.sums)
    blob.assembler = a
    in_sync, go_on = threading.Event(), threading.Event()

    class SlowIngest:
        saved = 0

        def save_record(self, *args) -> None:
            in_sync.set()
            go_on.wait(10)
            self.saved += 1

    blob.ingest = ingest = SlowIngest()
    saver = threading.Thread(target=blob.save_record)
    saver.start()
    try:
        assert in_sync.wait(10)
        credited = []
        t = threading.Thread(target=lambda: credited.append(blob.credit(0, 100)))
        t.start()
        t.join(5)
        assert credited == [100], "credit() waited for the record being written"
        blob.save_record()  # a periodic save while one is under way skips
    finally:
        go_on.set()
        saver.join(10)
    assert ingest.saved == 1
    blob.save_record(force=True)
    assert ingest.saved == 2, "a forced save always writes"


def test_resume_records_slow_down_while_their_sync_is_slow_and_speed_up_again():
    """Records come every RECORD_EVERY_S while one costs at most a quarter of the time since the last, else every RECORD_SLOW_S."""
    from chunkpull.core.manifest import Layer
    from chunkpull.engine.blob import BlobPull
    from chunkpull.engine.config import Source

    data = make_data()
    now = [0.0]
    sums = sums_for(data)
    blob = BlobPull(Layer(Digest.from_bytes(hashlib.sha256(data).digest()), len(data)), Source("http://127.0.0.1:1/v2/library/m"),
                    sums, clock=lambda: now[0])

    class Assembler:
        def hashed_prefix(self):
            return 0, None

        def done_chunks(self):
            return [False] * len(sums)

    class TimedIngest:
        cost = 0.0
        saved: list[float] = []

        def save_record(self, *args) -> None:
            self.saved.append(now[0])
            now[0] += self.cost  # the sync takes this long

    blob.assembler, blob.ingest = Assembler(), (ingest := TimedIngest())
    fast, slow = BlobPull.RECORD_EVERY_S, BlobPull.RECORD_SLOW_S
    assert fast < slow

    def at(t: float, cost: float = 0.0) -> None:
        now[0], ingest.cost = t, cost
        blob.save_record()

    at(0.0, cost=fast / 10)          # cheap: the fast pace
    at(fast * 0.6)                   # too soon
    at(fast * 1.2, cost=fast * 0.5)  # a sync taking half the interval: the slow pace
    at(fast * 1.7 + fast * 1.2)      # a fast interval later: too soon now
    at(fast * 1.7 + slow, cost=fast / 10)  # a slow interval later: written, and cheap again
    at(fast * 1.7 + slow + fast * 1.1)     # so the fast pace is back
    assert ingest.saved == [0.0, fast * 1.2, fast * 1.7 + slow, fast * 1.7 + slow + fast * 1.1]


def test_assembler_sends_chunks_beyond_what_the_pool_can_park_through_the_page_cache(hashio_backend, work):
    data = make_data()
    wf = work()
    a = assembler(wf, data)
    released: list = []
    a.park_ahead = lambda: 2  # the pool has room for two chunks ahead of the hash
    deliver_chunk(a, data, 2, released)
    assert not released, "a chunk within reach of the hash is parked"
    deliver_chunk(a, data, 3, released)
    assert len(released) == 2, "a chunk beyond what the pool can park must not hold any piece"
    deliver_chunk(a, data, 0, released)
    assert len(released) == 4, "the hash takes the pieces of chunk 0, the one it is on, at once"
    for i in range(len(a.sums)):
        if i not in (0, 2, 3):
            deliver_chunk(a, data, i, released)
        a.chunk_done(i)
    assert a.finish() == []
    assert a.read_back_bytes >= a.sums[3].chunk.size
    assert wf.path.read_bytes() == data
