"""Measure what crash safety and stall handling cost and save (issue 4's figures).

    python benchmarks/measure_resilience.py [--size 1G] [--streams 8]

Every pull runs in a fresh child process against the built-in registry in
this process (whose counters say how many blob bytes were sent), and prints:

- resume: a pull killed with SIGKILL at about half, then a second pull;
  the bytes the second one fetched as a fraction of the blob;
- stall: wall time of a pull in which one connection stalls for 60 s,
  against the same pull without the stall;
- durability: GB/s with resume records and fsync (the default), without
  records, and without fsync;
- the peak RSS of every child.

Nothing here asserts a speed; it prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chunkpull.testing import TestRegistry, build_model

CHILD = r"""
import json, sys, time
from chunkpull import DiskCache, Registry
from chunkpull.engine.blob import BlobPull
cfg = json.loads(sys.argv[1])
if not cfg.get("records", True):
    BlobPull.RECORD_EVERY_S = float("inf")  # only the final record on failure
reg = Registry(DiskCache(cfg["models"], fsync=cfg.get("fsync", True)), max_streams=cfg["streams"])
t = time.perf_counter()
m = reg.pull(cfg["ref"])
wall = time.perf_counter() - t
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"wall_s": wall, "bytes": m.size, "peak_rss": hwm}))
"""


def child(cfg: dict, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, stdout=subprocess.PIPE, **popen)


def run(cfg: dict) -> dict:
    p = child(cfg)
    out, _ = p.communicate(timeout=600)
    if p.returncode:
        raise SystemExit(f"child failed: {cfg}")
    return json.loads(out)


def done_fraction(models: Path) -> float:
    for rec in (models / ".chunkpull" / "ingest").glob("*.state"):
        try:
            r = json.loads(rec.read_text())
        except (OSError, ValueError):
            return 0.0
        bits = bytes.fromhex(r["done"])
        nchunks = max(1, -(-r["size"] // (8 << 20)))
        return sum(bin(b).count("1") for b in bits) / nchunks
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"G": 30, "M": 20}[args.size[-1]] if args.size[-1] in "GM" else int(args.size)
    work = Path(tempfile.mkdtemp(prefix="chunkpull-resilience-"))
    try:
        up = work / "up"
        build_model(up, "registry.local/library/big:latest", [size], seed=1, config=False)
        with TestRegistry(up, chunk_size=8 << 20) as reg:
            ref = reg.url + "/library/big:latest"
            base = {"ref": ref, "streams": args.streams}

            def fresh(name: str) -> str:
                d = work / name
                shutil.rmtree(d, ignore_errors=True)
                return str(d)

            run({**base, "models": fresh("warm")})  # warm the server's chunksums and page cache

            # resume after kill -9 at about half
            models = Path(fresh("killed"))
            reg.faults.throttle_bps = max(1, size // (args.streams * 4))  # ~8 s for the whole blob
            p = child({**base, "models": str(models)}, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while done_fraction(models) < 0.5 and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.05)
            p.send_signal(signal.SIGKILL)
            p.wait()
            recorded = done_fraction(models)
            reg.faults.throttle_bps = None
            reg.stats.reset()
            second = run({**base, "models": str(models)})
            fetched = reg.stats.blob_bytes_sent
            print(f"resume: killed with {recorded:.0%} of chunks recorded done; "
                  f"second pull fetched {fetched / size:.1%} of the blob ({fetched} bytes), "
                  f"peak RSS {second['peak_rss'] >> 20} MiB")

            # stall vs no stall
            rows = []
            for label, faults in (("no stall", {}), ("one stalled connection (60 s)", {"stall_s": 60.0, "stall_times": 1, "stall_after": 1 << 20})):
                walls, rss = [], 0
                for _ in range(args.repeat):
                    reg.faults.reset()
                    reg.faults.set(**faults)
                    r = run({**base, "models": fresh("stall")})
                    walls.append(r["wall_s"])
                    rss = max(rss, r["peak_rss"])
                rows.append((label, sorted(walls)[len(walls) // 2], rss))
            reg.faults.reset()
            for label, wall, rss in rows:
                print(f"stall: {label}: median wall {wall:.2f} s, peak RSS {rss >> 20} MiB")

            # durability cost
            for label, extra in (("records + fsync (default)", {}), ("no resume records", {"records": False}), ("no fsync", {"fsync": False})):
                rates, rss = [], 0
                for _ in range(args.repeat):
                    r = run({**base, **extra, "models": fresh("dur")})
                    rates.append(r["bytes"] / r["wall_s"] / 1e9)
                    rss = max(rss, r["peak_rss"])
                rates.sort()
                print(f"durability: {label}: median {rates[len(rates) // 2]:.2f} GB/s "
                      f"(min {rates[0]:.2f}, max {rates[-1]:.2f}), peak RSS {rss >> 20} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
