"""The one-call library API (issue 13): ``chunkpull.pull``, ``chunkpull.apull``, tqdm bars.

Against the built-in TestRegistry over real sockets.  Pulls that must stay
in flight are held by the registry's stall fault and stopped by cancelling,
never by waiting on a clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sys
import threading

import pytest

import chunkpull
from chunkpull import LayerProgress, Progress, PullCancelledError, PullResult, State, TqdmProgress, Tuning
from conftest import CHUNK_SIZE, CHUNKING_THRESHOLD

pytestmark = pytest.mark.integration

BIG = 12 * CHUNK_SIZE
SMALL = 100_000
FAST = Tuning(chunking_threshold=CHUNKING_THRESHOLD, retries=2, retry_base_s=0, retry_cap_s=0)


def _hashes_to(path, digest: str) -> bool:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


# -- pull ------------------------------------------------------------------------


def test_pull_in_one_call_returns_the_model_path(upstream, tmp_path):
    up = upstream([BIG, SMALL], seed=11)
    result = chunkpull.pull(up.ref(), models=tmp_path / "models", tuning=FAST, max_streams=2)
    assert isinstance(result, PullResult)
    big = str(result.manifest.layers[0].digest)
    assert result.model_path == tmp_path / "models" / "blobs" / big.replace(":", "-")
    assert _hashes_to(result.model_path, big)
    assert all(_hashes_to(p, d) for d, p in result.blobs.items())
    assert result.fetched_bytes == result.size and result.cached_bytes == 0

    again = chunkpull.pull(up.ref(), models=tmp_path / "models")
    assert (again.fetched_bytes, again.cached_bytes) == (0, result.size)


def test_pull_hands_every_event_to_the_callback(upstream, tmp_path):
    up = upstream([BIG, SMALL], seed=12)
    events: list[Progress] = []
    lock = threading.Lock()

    def record(ev: Progress) -> None:
        with lock:
            events.append(ev)

    result = chunkpull.pull(up.ref(), models=tmp_path, progress=record, tuning=FAST)
    sizes = {str(b.digest): b.size for b in result.manifest.blobs()}
    first = events[: len(sizes)]
    assert {e.digest for e in first} == set(sizes) and all(e.state == State.START for e in first), first
    assert all(isinstance(e.state, State) for e in events)
    for d, size in sizes.items():
        assert sum(e.n for e in events if e.digest == d and e.state == State.BYTES) == size
        assert [e.state for e in events if e.digest == d][-1] == State.DONE


def test_cancel_stops_the_pull(upstream, tmp_path):
    up = upstream([BIG], seed=13)
    cancel = threading.Event()

    def stop_at_first_bytes(ev: Progress) -> None:
        if ev.state == State.BYTES:
            cancel.set()

    with pytest.raises(PullCancelledError):
        chunkpull.pull(up.ref(), models=tmp_path, progress=stop_at_first_bytes, cancel=cancel, tuning=FAST)
    assert not list((tmp_path / "manifests").rglob("latest")), "a cancelled pull wrote a manifest"


def test_bad_progress_argument():
    with pytest.raises(ValueError, match="progress="):
        chunkpull.pull("http://127.0.0.1:1/library/x", progress="bars")  # type: ignore[arg-type]


# -- tqdm ---------------------------------------------------------------------------


class RecordingBar:
    """A tqdm stand-in that records what a bar was told (tqdm's keywords and methods)."""

    made: list[RecordingBar] = []

    def __init__(self, *, total: int, desc: str, initial: int = 0, **kwargs: object) -> None:
        self.total, self.desc, self.kwargs, self.n, self.closed = total, desc, kwargs, initial, False
        self.initial = initial
        RecordingBar.made.append(self)

    def update(self, n: int) -> None:
        assert not self.closed, "updated after close"
        self.n += n

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        self.closed = True


def test_tqdm_class_gets_one_bar_per_layer(upstream, tmp_path):
    up = upstream([BIG, SMALL], seed=14)
    RecordingBar.made = []
    result = chunkpull.pull(up.ref(), models=tmp_path, tqdm_class=RecordingBar, tuning=FAST)
    bars = {b.total: b for b in RecordingBar.made}
    assert len(RecordingBar.made) == len(result.blobs), [b.desc for b in RecordingBar.made]
    for blob in result.manifest.blobs():
        bar = bars[blob.size]
        assert bar.n == bar.total and bar.closed, vars(bar)
        assert bar.desc == f"pulled {blob.digest.hex[:12]}", bar.desc
        assert bar.kwargs["unit"] == "B"
    RecordingBar.made = []
    chunkpull.pull(up.ref(), models=tmp_path, tqdm_class=RecordingBar)
    assert all(b.desc.startswith("cached ") and b.initial == b.n == b.total and b.closed for b in RecordingBar.made), "cached bars start full"


def test_progress_tqdm_draws_real_bars(upstream, tmp_path):
    pytest.importorskip("tqdm")
    up = upstream([BIG], seed=15)
    out = io.StringIO()
    bars = TqdmProgress(file=out, mininterval=0)
    with chunkpull.Registry(tmp_path, tuning=FAST) as registry:
        result = registry.pull(up.ref(), progress=bars)
    bars.close()
    text = out.getvalue()
    big = result.manifest.layers[0].digest.hex[:12]
    assert f"pulled {big}: 100%" in text, text[-300:]


def test_progress_tqdm_without_tqdm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ModuleNotFoundError, match=r"chunkpull\[tqdm\]"):
        chunkpull.pull("http://127.0.0.1:1/library/x", progress="tqdm")


# -- apull ---------------------------------------------------------------------------


def test_await_apull_returns_the_result(upstream, tmp_path):
    up = upstream([BIG, SMALL], seed=16)

    async def main() -> PullResult:
        return await chunkpull.apull(up.ref(), models=tmp_path, tuning=FAST)

    result = asyncio.run(main())
    assert _hashes_to(result.model_path, str(result.manifest.layers[0].digest))


def test_async_for_yields_layer_progress_forward_only(upstream, tmp_path):
    up = upstream([BIG, SMALL], seed=17)

    async def main() -> tuple[list[LayerProgress], chunkpull.AsyncPull]:
        pulling = chunkpull.apull(up.ref(), models=tmp_path, tuning=FAST, max_streams=2)
        return [p async for p in pulling], pulling

    items, pulling = asyncio.run(main())
    last: dict[str, LayerProgress] = {}
    for p in items:
        assert p.completed >= last[p.digest].completed if p.digest in last else True, f"went backwards: {p}"
        last[p.digest] = p
    assert set(last) == set(pulling.result.blobs)
    assert all(p.state == State.DONE and p.completed == p.total for p in last.values()), last


def test_cancelling_the_task_stops_the_pull(upstream, tmp_path):
    up = upstream([BIG], seed=18)
    # Every blob response stalls after 64 KiB; the stream monitor is told to
    # wait far longer than the test runs, so only cancelling can end it.
    up.faults.stall_s, up.faults.stall_times = 600.0, 1000
    unhandled: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unhandled.append(ctx))
        started = asyncio.Event()

        async def consume() -> None:
            async for p in chunkpull.apull(up.ref(), models=tmp_path, tuning=Tuning(chunking_threshold=CHUNKING_THRESHOLD,
                                                                                    stall_timeout_s=600, read_timeout_s=600)):
                if p.completed:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not unhandled, unhandled
    assert not list(tmp_path.glob("blobs/*")), "a cancelled pull committed a blob"
    assert list((tmp_path / ".chunkpull" / "ingest").glob("*.partial")), "the work file must stay for the next pull"
    up.faults.reset()
    again = chunkpull.pull(up.ref(), models=tmp_path, tuning=FAST)
    assert _hashes_to(again.model_path, str(again.manifest.layers[0].digest))


def test_aclose_stops_an_abandoned_iteration(upstream, tmp_path):
    up = upstream([BIG], seed=19)
    up.faults.stall_s, up.faults.stall_times = 600.0, 1000

    async def main() -> None:
        pulling = chunkpull.apull(up.ref(), models=tmp_path, tuning=Tuning(chunking_threshold=CHUNKING_THRESHOLD,
                                                                            stall_timeout_s=600, read_timeout_s=600))
        async for p in pulling:
            if p.completed:
                break
        await pulling.aclose()
        with pytest.raises(RuntimeError, match="not finished"):
            pulling.result

    asyncio.run(main())
    # aclose() returned once the pull had ended; its thread only has to return.
    for t in [t for t in threading.enumerate() if t.name == "chunkpull-apull"]:
        t.join(60)
        assert not t.is_alive(), "the pull's thread is still running"
    assert not list(tmp_path.glob("manifests/**/latest"))
