"""Tests for chunkpull.cli: commands run in-process against a real TestRegistry, and the progress display.

Pull, ls and rm go through ``main([...])`` with capsys capturing output;
the registry is a ``TestRegistry`` on 127.0.0.1:0 serving a models directory
made with ``build_model``.  ``ProgressBar`` is driven by a fake clock and an
``Aggregator`` fed by hand, so no test depends on how long anything takes.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import child_env

import chunkpull
from chunkpull import display
from chunkpull.cli import main
from chunkpull.core.units import format_age, format_bytes, format_duration, format_rate
from chunkpull.display import ProgressBar
from chunkpull.core.progress import BYTES, CACHED, DONE, START, Aggregator, Progress
from chunkpull.testing import TestRegistry, build_model

SIZES = [300_000, 2_000_000]  # two layers plus the config blob: 3 blobs


@pytest.fixture
def served(tmp_path):
    """A TestRegistry serving one model, smol:latest; yields (registry, manifest digest)."""
    digest = build_model(tmp_path / "served", "registry.local/library/smol:latest", SIZES, seed=1)
    with TestRegistry(tmp_path / "served") as reg:
        yield reg, digest


@pytest.fixture
def models(tmp_path) -> Path:
    return tmp_path / "models"


def _name(reg: TestRegistry, model: str = "smol") -> str:
    return f"{reg.url}/library/{model}:latest"


def _host(reg: TestRegistry) -> str:
    return f"127.0.0.1:{reg.port}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


# --- pull -----------------------------------------------------------------------


def test_pull_prints_summary_and_fills_models_dir(served, models, capsys):
    reg, digest = served
    name = _name(reg)
    rc = main(["pull", name, "--models", str(models)])
    out, err = capsys.readouterr()
    assert rc == 0, f"pull = {rc}, stderr {err!r}"
    assert _lines(out) == [line for line in _lines(out) if line.startswith(f"pulled {name}: ")]
    assert len(_lines(out)) == 1, out
    assert "3 blobs (0 cached)" in out
    assert " MB in " in out and " s (" in out and "/s)" in out
    # The files: the manifest under the registry's host, every blob by digest.
    manifest = models / "manifests" / _host(reg) / "library" / "smol" / "latest"
    assert manifest.is_file()
    served_blobs = sorted(p.name for p in (reg.root / "blobs").iterdir())
    assert sorted(p.name for p in (models / "blobs").iterdir()) == served_blobs
    assert f"sha256-{digest.partition(':')[2]}" in served_blobs
    # stderr is not a terminal under capsys: plain lines, no carriage returns.
    assert "\r" not in err
    assert sum(line.endswith(": start") for line in _lines(err)) == 3, err
    assert sum(line.endswith(": done") for line in _lines(err)) == 3, err


def test_second_pull_reports_cached(served, models, capsys):
    reg, _ = served
    assert main(["pull", _name(reg), "--models", str(models)]) == 0
    capsys.readouterr()
    blob_bytes_before = reg.stats.blob_bytes_sent
    assert main(["pull", _name(reg), "--models", str(models)]) == 0
    out, err = capsys.readouterr()
    assert "3 blobs (3 cached)" in out, out
    assert f"pulled {_name(reg)}: nothing to fetch (" in out, out  # not "0 B in 0.01 s (0.00 MB/s)"
    assert sum(line.endswith(": cached") for line in _lines(err)) == 3, err
    assert reg.stats.blob_bytes_sent == blob_bytes_before  # nothing fetched again


def test_pull_several_names_and_options(served, models, capsys):
    reg, _ = served
    build_model(reg.root, "registry.local/library/tiny:latest", [1000], seed=2)
    rc = main(["pull", _name(reg), _name(reg, "tiny"), "--models", str(models), "--streams", "2", "--verify", "chunks", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert [line.split(":", 1)[0] for line in _lines(out)] == ["pulled http", "pulled http", "2 of 2 models pulled"]
    assert f"pulled {_name(reg, 'tiny')}: " in out
    assert err == "", "--quiet must not draw progress"


def test_pull_invalid_name_is_one_line_no_traceback(models, capsys):
    rc = main(["pull", "bad name!", "--models", str(models)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert _lines(err) == ['chunkpull: error: invalid or missing name: "bad name!"'], err
    assert "Traceback" not in err


def test_pull_bad_name_is_rejected_before_any_transfer(served, models, capsys):
    reg, _ = served
    rc = main(["pull", _name(reg), "bad name!", "--models", str(models)])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "invalid or missing name" in err
    assert reg.stats.requests["manifest"] == 0


def test_pull_unknown_model_is_one_line_not_found(served, models, capsys):
    reg, _ = served
    rc = main(["pull", _name(reg, "nosuch"), "--models", str(models)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    lines = _lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("chunkpull: error: ") and "not found" in lines[0], lines
    assert not (models / "manifests" / _host(reg)).exists()


class _InterruptingStream(io.StringIO):
    """A stderr that raises KeyboardInterrupt once, at the first layer line: Ctrl-C mid-pull."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = False

    def write(self, text: str) -> int:
        if not self.fired and ": start" in text:
            self.fired = True
            raise KeyboardInterrupt
        return super().write(text)

    def isatty(self) -> bool:
        return False


@pytest.mark.slow
def test_ctrl_c_cancels_then_next_pull_completes(tmp_path, models, monkeypatch, capsys):
    # One 20 MB layer, throttled so the pull is still running when the
    # interrupt arrives at the first progress line (announced before any
    # byte moves); the throttle only bounds speed, nothing waits on a clock.
    build_model(tmp_path / "served", "registry.local/library/big:latest", [20_000_000], seed=3)
    with TestRegistry(tmp_path / "served") as reg:
        reg.faults.throttle_bps = 2_000_000
        stream = _InterruptingStream()
        monkeypatch.setattr(sys, "stderr", stream)
        rc = main(["pull", _name(reg, "big"), "--models", str(models)])
        monkeypatch.undo()
        assert stream.fired
        assert rc == 130
        assert _lines(stream.getvalue())[-1] == "chunkpull: interrupted; the next pull resumes"
        assert "Traceback" not in stream.getvalue()
        assert not (models / "manifests" / _host(reg)).exists(), "no manifest after a cancelled pull"
        assert capsys.readouterr().out == ""

        reg.faults.reset()
        rc = main(["pull", _name(reg, "big"), "--models", str(models)])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert out.startswith(f"pulled {_name(reg, 'big')}: ")
        assert (models / "manifests" / _host(reg) / "library" / "big" / "latest").is_file()


# --- ls and rm -------------------------------------------------------------------


def test_ls_lists_pulled_model(served, models, capsys):
    reg, digest = served
    assert main(["pull", _name(reg), "--models", str(models)]) == 0
    capsys.readouterr()
    assert main(["ls", "--models", str(models)]) == 0
    out, _ = capsys.readouterr()
    header, *rows = _lines(out)
    assert header.split() == ["NAME", "DIGEST", "SIZE", "MODIFIED"]
    assert len(rows) == 1, out
    name, short, *rest = rows[0].split()
    assert name == f"http://{_host(reg)}/library/smol", "the scheme pull needs, the shortest name against the mask"
    assert short == digest.partition(":")[2][:12]
    assert " ".join(rest).startswith("2.")  # 2.30 MB of layers plus the config
    assert rows[0].endswith("just now")
    # Columns line up: each field starts where its header does.
    assert rows[0].index(short) == header.index("DIGEST")


def test_ls_empty_models_dir_prints_header_only(models, capsys):
    models.mkdir(parents=True, exist_ok=True)
    assert main(["ls", "--models", str(models)]) == 0
    assert _lines(capsys.readouterr().out) == ["NAME   DIGEST   SIZE   MODIFIED"]


@pytest.mark.parametrize("command", [["ls"], ["rm", "smol"]], ids=["ls", "rm"])
def test_read_only_commands_do_not_create_the_models_dir(models, capsys, command):
    assert main([*command, "--models", str(models)]) == 1
    assert capsys.readouterr().err.strip() == f"chunkpull: error: no models directory at {models}"
    assert not models.exists()


def test_rm_finds_a_model_by_the_short_name_ls_shows(served, models, capsys):
    reg, _ = served
    assert main(["pull", _name(reg), "--models", str(models)]) == 0
    assert main(["rm", "smol", "--models", str(models)]) == 0
    assert "deleted smol" in capsys.readouterr().out
    assert main(["rm", "smol", "--models", str(models)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f'chunkpull: error: model "smol" not found in {models} (see chunkpull ls)', err


def test_rm_removes_then_second_rm_fails(served, models, capsys):
    reg, _ = served
    assert main(["pull", _name(reg), "--models", str(models)]) == 0
    capsys.readouterr()
    short = f"{_host(reg)}/library/smol"  # as ls shows it
    assert main(["rm", short, "--models", str(models)]) == 0
    out, err = capsys.readouterr()
    assert out == f"deleted {short}\n" and err == ""
    assert not (models / "manifests" / _host(reg)).exists()
    assert list((models / "blobs").iterdir()) == [], "rm prunes blobs no model uses"
    assert main(["ls", "--models", str(models)]) == 0
    assert len(_lines(capsys.readouterr().out)) == 1

    rc = main(["rm", short, "--models", str(models)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert _lines(err) == [f'chunkpull: error: model "{short}" not found in {models} (see chunkpull ls)'], err


# --- usage, version, serve, registry -------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["pull"], id="pull-without-name"),
        pytest.param(["pull", "x", "--streams", "0"], id="streams-zero"),
        pytest.param(["pull", "x", "--streams", "many"], id="streams-not-a-number"),
        pytest.param(["pull", "x", "--verify", "none"], id="bad-verify"),
        pytest.param(["rm"], id="rm-without-name"),
        pytest.param(["pull", "x", "--platform", "linux"], id="bad-platform"),
        pytest.param(["serve", "--port", "70000"], id="bad-port"),
        pytest.param(["registry"], id="registry-without-action"),
        pytest.param(["registry", "make"], id="registry-make-without-args"),
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    rc = main(argv)
    _, err = capsys.readouterr()
    assert rc == 2, f"main({argv!r}) = {rc}, want 2"
    assert "usage:" in err
    assert "Traceback" not in err


def test_version_shows_backend(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"chunkpull {chunkpull.__version__} (backend: {chunkpull.BACKEND})\n"
    assert chunkpull.BACKEND in ("native", "python")


def test_python_dash_m_version():
    env = child_env()
    r = subprocess.run([sys.executable, "-m", "chunkpull", "--version"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("chunkpull 0.1.0 (backend: ")
    assert r.stdout.rstrip().endswith(")")


def test_serve_passes_registry_host_port_to_api(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_serve(registry, host, port, *, origins=None, ready=None):
        calls.append((registry, host, port))
        ready(types.SimpleNamespace(url=f"http://{host}:{port}"))

    from chunkpull.serve import server

    monkeypatch.setattr(server, "serve", fake_serve)

    assert main(["serve", "--models", str(tmp_path), "--streams", "3"]) == 0
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--models", str(tmp_path)]) == 0
    (r1, host1, port1), (_, host2, port2) = calls
    assert (host1, port1, host2, port2) == ("127.0.0.1", 11434, "0.0.0.0", 0)
    assert r1.max_streams == 3
    assert r1.cache.root == tmp_path
    assert _lines(capsys.readouterr().err) == ["chunkpull: serving on http://127.0.0.1:11434", "chunkpull: serving on http://0.0.0.0:0"]


def test_serve_real_api_answers_and_stops(tmp_path, models):
    # The real serve in a subprocess: it prints its URL, answers, and
    # stops cleanly on SIGINT.
    import json
    import urllib.request

    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkpull", "serve", "--port", "0", "--models", str(models)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stderr.readline().strip()
        assert line.startswith("chunkpull: serving on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        with urllib.request.urlopen(f"{url}/api/tags", timeout=30) as r:
            assert json.load(r) == {"models": []}
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0


def test_registry_make_delegates(tmp_path, capsys):
    rc = main(["registry", "make", str(tmp_path / "m"), "registry.local/library/x:latest", "--size", "1k"])
    out, _ = capsys.readouterr()
    assert rc == 0
    digest = (tmp_path / "m" / "manifests" / "registry.local" / "library" / "x" / "latest").read_bytes()
    assert out.startswith(f"made registry.local/library/x:latest in {tmp_path / 'm'}: 1 layer (1.02 kB) and a config, manifest sha256:"), out
    assert "sha256:" + hashlib.sha256(digest).hexdigest() in out
    assert f"chunkpull registry serve {tmp_path / 'm'} --port 5000" in out
    assert "chunkpull pull http://127.0.0.1:5000/library/x:latest" in out


def test_registry_serve_subprocess_then_pull(tmp_path, models, capsys):
    build_model(tmp_path / "served", "registry.local/library/smol:latest", [5000], seed=4)
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkpull", "registry", "serve", str(tmp_path / "served"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if not url else url
        assert main(["pull", f"{url}/library/smol:latest", "--models", str(models)]) == 0
        assert "pulled " in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0


# --- ProgressBar ----------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def _frames(text: str) -> list[str]:
    """Split terminal output into the frames drawn (each '\\r...ESC[K')."""
    assert text.count("\r") == text.count("\x1b[K"), repr(text)
    return [part.replace("\x1b[K", "").rstrip("\n") for part in text.split("\r")[1:]]


def _setup(is_tty: bool, width: int = 100):
    clock = FakeClock()
    agg = Aggregator(clock=clock)
    stream = io.StringIO()
    bar = ProgressBar(agg, stream, is_tty=is_tty, clock=clock, label="smol", width=width)
    # 900 MB to fetch, 100 MB already cached: the bar starts at 10%.
    agg(Progress(A, 900_000_000, START))
    agg(Progress(B, 100_000_000, CACHED, 100_000_000))
    return clock, agg, stream, bar


def test_tty_bar_redraws_in_place_with_percent_rate_eta():
    clock, agg, stream, bar = _setup(is_tty=True)
    bar.tick()
    first = _frames(stream.getvalue())
    assert len(first) == 1
    assert " 10% " in first[0] and "100 MB/1.00 GB" in first[0]
    # No byte fetched yet: the registry may still be preparing chunksums.
    assert first[0].endswith("waiting for the registry 0s") and "ETA" not in first[0], first[0]
    assert first[0].startswith("smol  ")

    clock.t += 1.0
    agg(Progress(A, 900_000_000, BYTES, 400_000_000))
    bar.tick()
    frame = _frames(stream.getvalue())[-1]
    assert " 50% " in frame, frame
    assert " 500 MB/1.00 GB" in frame
    assert "400 MB/s" in frame  # cached bytes are not part of the rate
    assert "ETA 1s" in frame  # 500 MB left at 400 MB/s
    assert "[" + "#" * 20 in frame and "." * 20 + "]" in frame
    assert "\n" not in stream.getvalue(), "one line, redrawn with carriage returns"


def test_tty_bar_says_resolving_before_the_manifest_not_100_percent():
    clock = FakeClock()
    agg = Aggregator(clock=clock)
    stream = io.StringIO()
    bar = ProgressBar(agg, stream, is_tty=True, clock=clock, label="smol", width=80)
    bar.tick()
    assert _frames(stream.getvalue()) == ["smol  resolving…"]


def test_tty_bar_says_waiting_while_the_registry_sends_nothing():
    clock, agg, stream, bar = _setup(is_tty=True)
    for second in range(1, 3):  # the registry prepares its chunk list: no byte yet
        clock.t += 1.0
        bar.tick()
        assert _frames(stream.getvalue())[-1].endswith(f"waiting for the registry {second}s")
    clock.t += 1.0
    agg(Progress(A, 900_000_000, BYTES, 100_000_000))
    bar.tick()
    assert "waiting" not in _frames(stream.getvalue())[-1] and "ETA" in _frames(stream.getvalue())[-1]
    clock.t += display.WAIT_NOTE_S  # a stall mid-pull
    bar.tick()
    assert _frames(stream.getvalue())[-1].endswith(f"waiting for the registry {display.WAIT_NOTE_S:.0f}s")


def test_plain_progress_line_says_waiting_too():
    clock, agg, stream, bar = _setup(is_tty=False)
    bar.tick()
    clock.t += display.PLAIN_INTERVAL_S
    bar.tick()
    assert _lines(stream.getvalue())[-1] == "progress: 100 MB/1.00 GB (10%), waiting for the registry 5s"


def test_tty_bar_throttles_redraws_to_the_clock():
    clock, agg, stream, bar = _setup(is_tty=True)
    bar.tick()
    for _ in range(5):
        clock.t += 0.01
        agg(Progress(A, 900_000_000, BYTES, 1_000_000))
        bar.tick()
    assert len(_frames(stream.getvalue())) == 1, "no redraw within REDRAW_INTERVAL_S"
    clock.t += display.REDRAW_INTERVAL_S
    bar.tick()
    assert len(_frames(stream.getvalue())) == 2


def test_tty_bar_skips_identical_frames():
    clock = FakeClock()
    agg = Aggregator(clock=clock)
    stream = io.StringIO()
    bar = ProgressBar(agg, stream, is_tty=True, clock=clock, width=80)
    agg(Progress(B, 100_000_000, CACHED, 100_000_000))
    for _ in range(5):
        bar.tick()
        clock.t += 1.0
    # "--" until the rate has samples, then "0.00 MB/s" unchanged: two frames.
    frames = _frames(stream.getvalue())
    assert len(frames) == 2, frames
    assert "100% " in frames[-1] and "ETA 0s" in frames[-1]


def test_tty_bar_finish_ends_line_clean_at_100_percent():
    clock, agg, stream, bar = _setup(is_tty=True)
    bar.tick()
    clock.t += 2.0
    agg(Progress(A, 900_000_000, BYTES, 900_000_000))
    agg(Progress(A, 900_000_000, DONE))
    bar.finish()
    bar.finish()  # idempotent
    text = stream.getvalue()
    assert text.endswith("\x1b[K\n") and text.count("\n") == 1
    last = _frames(text)[-1]
    assert "100% " in last and "1.00 GB/1.00 GB" in last and "ETA 0s" in last
    assert "450 MB/s" in last


@pytest.mark.parametrize("width", [20, 40, 60, 80, 200])
def test_tty_bar_never_wider_than_terminal(width):
    clock, agg, stream, bar = _setup(is_tty=True, width=width)
    bar.label = "registry.example.com/some-namespace/a-model-with-a-long-name"
    for _ in range(3):
        clock.t += 1.0
        agg(Progress(A, 900_000_000, BYTES, 123_456_789))
        bar.tick()
    for frame in _frames(stream.getvalue()):
        assert len(frame) <= width - 3, f"width {width}: {frame!r}"
    if width >= 80:
        assert "[" in _frames(stream.getvalue())[-1]


def test_tty_rate_is_the_trailing_window_average():
    clock, agg, stream, bar = _setup(is_tty=True)
    bar.tick()
    for _ in range(10):  # 100 MB/s for 10 s
        clock.t += 1.0
        agg(Progress(A, 900_000_000, BYTES, 50_000_000 if _ >= 7 else 100_000_000))
        bar.tick()
    # The last three seconds moved 50 MB each: the early 100 MB/s is forgotten.
    assert "50.0 MB/s" in _frames(stream.getvalue())[-1]


def test_finish_without_layers_writes_nothing():
    clock = FakeClock()
    stream = io.StringIO()
    for is_tty in (True, False):
        ProgressBar(Aggregator(clock=clock), stream, is_tty=is_tty, clock=clock, width=80).finish()
    assert stream.getvalue() == ""


def test_plain_lines_per_layer_event_and_progress_every_few_seconds():
    clock, agg, stream, bar = _setup(is_tty=False)
    bar.tick()
    assert _lines(stream.getvalue()) == [
        "layer aaaaaaaaaaaa 900 MB: start",
        "layer bbbbbbbbbbbb 100 MB: cached",
    ]
    clock.t += 1.0
    agg(Progress(A, 900_000_000, BYTES, 100_000_000))
    bar.tick()
    assert len(_lines(stream.getvalue())) == 2, "no progress line before PLAIN_INTERVAL_S"
    clock.t += display.PLAIN_INTERVAL_S - 1.0
    agg(Progress(A, 900_000_000, BYTES, 400_000_000))
    bar.tick()
    clock.t += 1.0
    bar.tick()
    lines = _lines(stream.getvalue())
    assert lines[2:] == ["progress: 600 MB/1.00 GB (60%), 100 MB/s, ETA 4s"], lines
    agg(Progress(A, 900_000_000, BYTES, 400_000_000))
    agg(Progress(A, 900_000_000, DONE))
    bar.finish()
    lines = _lines(stream.getvalue())
    assert lines[-1] == "layer aaaaaaaaaaaa 900 MB: done"
    assert len(lines) == 4
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


# --- formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, want",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (12_345, "12.3 kB"),
        (999_499, "999 kB"),
        (999_500, "1.00 MB"),
        (512_000_000, "512 MB"),
        (1 << 30, "1.07 GB"),
        (2_500_000_000_000, "2.50 TB"),
    ],
)
def test_format_bytes(n, want):
    assert format_bytes(n) == want, f"format_bytes({n}) = {format_bytes(n)!r}, want {want!r}"


@pytest.mark.parametrize(
    "rate, want",
    [(0, "0.00 MB/s"), (50_000, "0.05 MB/s"), (312_400_000, "312 MB/s"), (999_000_000, "999 MB/s"), (1.26e9, "1.26 GB/s"), (12.6e9, "12.6 GB/s")],
)
def test_format_rate(rate, want):
    assert format_rate(rate) == want


@pytest.mark.parametrize("s, want", [(0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (185, "3m05s"), (3720, "1h02m")])
def test_format_duration(s, want):
    assert format_duration(s) == want


@pytest.mark.parametrize(
    "s, want",
    [(-5, "just now"), (30, "just now"), (60, "1 minute ago"), (150, "2 minutes ago"), (7200, "2 hours ago"),
     (86400, "1 day ago"), (20 * 86400, "2 weeks ago"), (90 * 86400, "3 months ago"), (800 * 86400, "2 years ago")],
)
def test_format_age(s, want):
    assert format_age(s) == want
