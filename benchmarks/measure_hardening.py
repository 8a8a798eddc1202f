"""Measure the hardening figures: time to fail on drips and half-then-silence, signal latency, what SIGTERM keeps, serve under load.

Usage::

    python benchmarks/measure_hardening.py          # prints one JSON document

Every case runs against the built-in registry on 127.0.0.1 with chunkpull's
default settings (stall timeout 5 s, 6 attempts), in processes of its own:

- ``drip_s``: one chunk at 1 byte/s on every connection; seconds until the pull fails;
- ``half_then_silence_s``: every body half sent, then silence; seconds until the pull fails;
- ``sigterm``: a 256 MiB pull throttled to 64 MiB/s, SIGTERM at ~40%: exit status,
  seconds to exit, bytes the record vouches for against bytes delivered, and
  bytes the next pull fetches against bytes that were missing;
- ``idle_3000``: ``chunkpull serve`` with 3,000 idle connections: descriptors
  it holds, CPU-s it spends in 5 s, and seconds until a new request is answered.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from chunkpull import DiskCache, Registry
from chunkpull.errors import ChunkpullError
from chunkpull.testing import TestRegistry, build_model

MIB = 1 << 20


def _env() -> dict:
    import chunkpull

    return {**os.environ, "PYTHONPATH": str(Path(chunkpull.__file__).resolve().parents[1])}


def time_to_fail(root: Path, faults: dict) -> tuple[float, str]:
    with TestRegistry(root / "up", chunk_size=8 * MIB) as server:
        layer = next(p.name for p in (root / "up" / "blobs").iterdir() if p.stat().st_size == 128 * MIB).replace("-", ":", 1)
        server.faults.set(only_digest=layer, **faults)
        reg = Registry(DiskCache(tempfile.mkdtemp(dir=root)))
        started = time.monotonic()
        try:
            reg.pull(f"{server.url}/library/big:latest")
            outcome = "completed"
        except ChunkpullError as err:
            outcome = f"{type(err).__name__}: {str(err)[:300]}"
        finally:
            reg.close()
        return round(time.monotonic() - started, 1), outcome


def sigterm_case(root: Path) -> dict:
    size = 256 * MIB
    build_model(root / "up2", "registry.local/library/sig:latest", [size], seed=3)
    models = root / "sig-models"
    with TestRegistry(root / "up2", chunk_size=8 * MIB) as server:
        server.faults.throttle_bps = 8 * MIB  # per connection: 64 MiB/s over 8 streams
        ref = f"{server.url}/library/sig:latest"
        proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "pull", ref, "--models", str(models), "-q"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
        while server.stats.blob_bytes_sent < 0.4 * size:
            time.sleep(0.01)
        delivered = server.stats.blob_bytes_sent
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        exit_s = time.monotonic() - started
        state = next((models / ".chunkpull" / "ingest").glob("*.state"))
        rec = json.loads(state.read_text())
        bits = bytes.fromhex(rec["done"])
        recorded = sum(8 * MIB for i in range(size // (8 * MIB)) if bits[i >> 3] & (1 << (i & 7)))
        server.faults.throttle_bps = None
        server.stats.reset()
        reg = Registry(DiskCache(models))
        reg.pull(ref)
        reg.close()
        fetched = server.stats.blob_bytes_sent
    return {"exit_status": proc.returncode, "exit_s": round(exit_s, 2), "stderr": err.strip(), "bytes_delivered_before": delivered,
            "bytes_recorded_done": recorded, "bytes_missing": size - recorded, "bytes_fetched_on_resume": fetched}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_case(root: Path, n: int = 3000) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    (root / "serve-models").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "serve", "--port", "0", "--models", str(root / "serve-models")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    conns = []
    try:
        url = proc.stderr.readline().rsplit(" ", 1)[1].strip()
        port = int(url.rsplit(":", 1)[1])
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            conns.append(s)
        time.sleep(2)
        fds = _fds(proc.pid)
        cpu0 = _cpu_s(proc.pid)
        time.sleep(5)
        cpu = _cpu_s(proc.pid) - cpu0
        rss_kib = int(next(l for l in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
        started = time.monotonic()
        answered = None
        while time.monotonic() - started < 300:
            try:
                if requests.get(url + "/api/tags", timeout=10).status_code == 200:
                    answered = round(time.monotonic() - started, 1)
                    break
            except requests.RequestException:
                pass
        return {"connections": n, "server_fds_held": fds, "server_cpu_s_in_5s": round(cpu, 2), "server_rss_mib": rss_kib // 1024,
                "new_request_answered_after_s": answered}
    finally:
        for s in conns:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="drip,silence,sigterm,idle", help="cases to run (default: all of drip,silence,sigterm,idle)")
    only = set(ap.parse_args(argv).only.split(","))
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="chunkpull-hardening-") as tmp:
        root = Path(tmp)
        if only & {"drip", "silence"}:
            build_model(root / "up", "registry.local/library/big:latest", [128 * MIB], seed=2)
        if "drip" in only:
            out["drip_s"], out["drip_error"] = time_to_fail(root, {"drip_chunk": {5: 1}})
        if "silence" in only:
            out["half_then_silence_s"], out["half_then_silence_error"] = time_to_fail(root, {"stall_s": 3600.0, "stall_times": 10**6, "stall_after": 1 << 40})
        if "sigterm" in only:
            out["sigterm"] = sigterm_case(root)
        if "idle" in only:
            out["idle_3000"] = idle_case(root)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
