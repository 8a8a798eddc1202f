"""Signals stop a pull promptly and keep its work; the exposed port stays bounded under idle and fd pressure.

Real processes (`python -m chunkpull ...`), real sockets, the built-in registry.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import child_env

from chunkpull.serve import Local, Server

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_stalled_read_stops_the_pull_and_keeps_its_work(upstream, tmp_path, sig, code, word):
    up = upstream([65 * MIB], seed=80)  # above the 64 MiB chunking threshold: a chunked, resumable blob
    layer = _layer(up)
    # Every body sends 64 KiB, then nothing for an hour: all reads are stalled.
    up.faults.set(stall_s=3600.0, stall_times=10**6, stall_after=64 << 10, only_digest=layer)
    models = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "pull", up.ref(), "--models", str(models), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 30
        while sum(1 for d, _s, _e in up.stats.ranges if d == layer) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the reads are stalled now
        proc.send_signal(sig)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        latency = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, (proc.returncode, err)
    assert err.strip().splitlines() == [f"chunkpull: {word}; the next pull resumes"], err
    ingest = models / ".chunkpull" / "ingest"
    assert list(ingest.glob("*.partial")) and list(ingest.glob("*.state")), "the work file or its record is gone"
    print(f"{sig.name} during a stalled read: exited {code} after {latency:.2f} s")


def test_rm_partials_removes_interrupted_downloads(upstream, tmp_path, make_registry):
    from chunkpull.cli import main

    models = tmp_path / "models"
    (models / ".chunkpull" / "ingest").mkdir(parents=True)
    (models / "blobs").mkdir()
    (models / "manifests").mkdir()
    stray = models / ".chunkpull" / "ingest" / f"sha256-{'a' * 64}.partial"
    stray.write_bytes(b"half a blob")
    (stray.with_suffix(".state")).write_text("{}")
    assert main(["rm", "--partials", "--models", str(models)]) == 0
    assert not list((models / ".chunkpull" / "ingest").iterdir())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_serve_out_of_file_descriptors_backs_off_instead_of_spinning(tmp_path):
    # The server may open 128 files; 200 clients connect.  It must neither
    # spin on the listening socket nor stop answering once they leave.
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)); "
        "from chunkpull.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    (tmp_path / "models").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", "0", "--models", str(tmp_path / "models")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    clients: list[socket.socket] = []
    try:
        line = proc.stderr.readline()
        assert "serving on" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        port = int(url.rsplit(":", 1)[1])
        for _ in range(200):
            s = socket.socket()
            s.settimeout(5)
            s.connect(("127.0.0.1", port))  # completes in the kernel's backlog even when not accepted
            clients.append(s)
        time.sleep(1.0)  # the server has hit its descriptor limit by now
        before = _cpu_s(proc.pid)
        time.sleep(2.0)
        spent = _cpu_s(proc.pid) - before
        assert spent < 1.0, f"the server used {spent:.2f} CPU-s in 2 s while out of descriptors: it spins"
        for s in clients:
            s.close()
        clients.clear()
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.get(url + "/api/tags", timeout=5)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert r.status_code == 200
        print(f"out of descriptors: {spent:.2f} CPU-s in 2 s, answering again after the clients left")
    finally:
        for s in clients:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_idle_connections_are_capped_and_closed(api_registry):
    # More idle clients than the connection limit: the server accepts only up
    # to the limit, closes idle ones after the channel timeout, and a new
    # client is answered once they are gone.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with Server(Local(api_registry), "127.0.0.1", 0, connection_limit=20, channel_timeout_s=2) as server:
        idle = []
        try:
            for _ in range(100):
                s = socket.socket()
                s.settimeout(5)
                s.connect(("127.0.0.1", server.port))
                idle.append(s)
            started = time.monotonic()
            r = requests.get(server.url + "/api/tags", timeout=60)
            waited = time.monotonic() - started
            assert r.status_code == 200
            # The idle connections the server had accepted were closed by it.
            closed = 0
            for s in idle:
                s.settimeout(0.01)
                try:
                    closed += s.recv(1) == b""
                except (TimeoutError, BlockingIOError, OSError):
                    pass
            assert closed >= 20, f"only {closed} idle connections were closed by the server"
            print(f"100 idle connections, limit 20: a new request answered after {waited:.1f} s; {closed} idle ones closed")
        finally:
            for s in idle:
                s.close()
