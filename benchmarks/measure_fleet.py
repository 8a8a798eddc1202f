"""Measure fleet pulls (issue 11's figures) and save them to benchmarks/results/fleet.json.

    python benchmarks/measure_fleet.py [--size 1G] [--quick]

Every pull is ``chunkpull pull … --json`` in a fresh process; registries run
in processes of their own (``chunkpull registry serve``, Debian's
``docker-registry``), each bound to 127.0.0.1.  Four measurements:

- mirrors: a model on an origin throttled to ``--origin-bps`` per
  connection, pulled alone and then with two mirrors, one of which corrupts
  every chunk: bytes per source, GB/s, and the lying mirror's chunks refused;
- pull-through cache: docker-registry in ``proxy:`` mode in front of another
  docker-registry, as the mirror, cold and then warm: GB/s and the bytes the
  origin served (from its access log);
- bulk: 10 models sharing a base layer, pulled in one command: bytes fetched
  against the unique bytes of the set;
- rate cap: one pull with ``--limit-rate``: the measured rate against it.

Nothing here asserts a speed; ``run_compare.py`` renders the JSON into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))  # the tests' docker-registry driver

from realregistries import pull_through_pair, stop_process  # noqa: E402

from chunkpull.core.units import parse_size  # noqa: E402
from chunkpull.testing import build_model  # noqa: E402

CHUNK = 8 << 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``chunkpull registry serve DIR`` in its own process, with fault options."""

    def __init__(self, root: Path, *options: str) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "registry", "serve", str(root), "--port", str(self.port), *options],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/v2/", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("the built-in registry did not start")

    def stop(self) -> None:
        stop_process(self.proc)


def pull(names: list[str], models: Path, *options: str) -> dict:
    """Run ``chunkpull pull --json`` in a fresh process; return its summary, sources and wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "chunkpull", "pull", *names, "--models", str(models), "--json", *options],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    summary = next((e for e in events if e["event"] == "summary"), {})
    sources = next((e["sources"] for e in events if e["event"] == "sources"), [])
    errors = [e for e in events if e["event"] == "error"]
    return {"exit": r.returncode, "wall_s": wall, "elapsed_s": summary.get("elapsed_s"), "fetched_bytes": summary.get("fetched_bytes"),
            "sources": sources, "errors": [e["error"] for e in errors]}


def measure_mirrors(work: Path, size: int, origin_bps: int) -> dict:
    up = work / "up"
    name = "registry.local/library/fleet:latest"
    build_model(up, name, [size], seed=11, config=True)
    chunks = -(-size // CHUNK)
    liar_opts = [opt for k in range(chunks) for opt in ("--corrupt-chunk", f"{k}:1000000")]
    origin = Served(up, "--chunk-size", str(CHUNK), "--throttle", str(origin_bps))
    liar = Served(up, "--chunk-size", str(CHUNK), *liar_opts)
    good = Served(up, "--chunk-size", str(CHUNK))
    ref = f"http://127.0.0.1:{origin.port}/library/fleet:latest"
    try:
        alone = pull([ref], work / "m-alone")
        mirrored = pull([ref], work / "m-mirrored", "--mirror", liar.url, "--mirror", good.url)
    finally:
        for s in (origin, liar, good):
            s.stop()
    for run in (alone, mirrored):
        run["gbps"] = size / run["elapsed_s"] / 1e9 if run["elapsed_s"] else None
        for s in run["sources"]:
            s["role"] = "origin" if s["origin"] else ("lying mirror" if s["source"] == liar.url else "healthy mirror")
    return {"size": size, "origin_bps_per_connection": origin_bps, "chunks": chunks, "origin_only": alone, "with_mirrors": mirrored}


def _origin_blob_bytes(log: Path, digest: str) -> int:
    # distribution's access log: "GET /v2/<repo>/blobs/<digest> HTTP/1.1" <status> <bytes> ...
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(rf'"GET /v2/[^ ]+/blobs/{re.escape(digest)} HTTP/[0-9.]+" \d+ (\d+)', line)
        if m:
            total += int(m.group(1))
    return total


def measure_pull_through(work: Path, size: int) -> dict:
    origin, cache = pull_through_pair(work)
    try:
        blob = numpy.random.default_rng(12).bytes(size)
        _d, descs = origin.push_image("library/fleet", "v1", [blob], oci=True)
        del blob
        digest = descs[0]["digest"]
        ref = f"http://127.0.0.1:{origin.port}/library/fleet:v1"
        before = _origin_blob_bytes(origin.log_path, digest)
        runs = {}
        for phase in ("cold", "warm"):
            start = _origin_blob_bytes(origin.log_path, digest)
            run = pull([ref], work / f"m-{phase}", "--mirror", cache.url)
            if phase == "cold":
                # The cache fetches the blob for itself in the background: wait until it serves ranges.
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    with requests.get(f"{cache.url}/v2/library/fleet/blobs/{digest}", headers={"Range": "bytes=0-0"}, stream=True, timeout=30) as r:
                        if r.status_code == 206:
                            break
                    time.sleep(0.2)
            run["origin_served_bytes"] = _origin_blob_bytes(origin.log_path, digest) - start
            run["gbps"] = size / run["elapsed_s"] / 1e9 if run["elapsed_s"] else None
            runs[phase] = run
        runs["size"] = size
        runs["origin_bytes_before"] = before
        return runs
    finally:
        cache.stop()
        origin.stop()


def measure_bulk(work: Path, base: int, models: int) -> dict:
    up = work / "bulk"
    names, unique = [], {}
    for i in range(models):
        name = f"registry.local/fleet/m{i}:latest"
        build_model(up, name, [base, (1 << 20) * (i + 1)], seed=13)  # layer 0 is the same in every model
        doc = json.loads((up / "manifests" / "registry.local" / "fleet" / f"m{i}" / "latest").read_text())
        for d in [doc["config"], *doc["layers"]]:
            unique[d["digest"]] = d["size"]
        names.append(name)
    total_listed = 0
    for i in range(models):
        doc = json.loads((up / "manifests" / "registry.local" / "fleet" / f"m{i}" / "latest").read_text())
        total_listed += sum(d["size"] for d in [doc["config"], *doc["layers"]])
    server = Served(up, "--chunk-size", str(CHUNK))
    try:
        refs = [f"http://127.0.0.1:{server.port}/fleet/m{i}:latest" for i in range(models)]
        run = pull(refs, work / "m-bulk")
    finally:
        server.stop()
    run.update(models=models, unique_bytes=sum(unique.values()), listed_bytes=total_listed)
    return run


def measure_rate_cap(work: Path, size: int, rate: str) -> dict:
    up = work / "capped"
    build_model(up, "registry.local/library/capped:latest", [size], seed=14)
    server = Served(up, "--chunk-size", str(CHUNK))
    try:
        run = pull([f"http://127.0.0.1:{server.port}/library/capped:latest"], work / "m-capped", "--limit-rate", rate)
    finally:
        server.stop()
    run.update(target_bps=parse_size(rate), size=size, measured_bps=run["fetched_bytes"] / run["elapsed_s"] if run["elapsed_s"] else None)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="model size for the mirror and pull-through runs (default 1G)")
    p.add_argument("--origin-bps", default="16M", help="the throttled origin's rate per connection (default 16M)")
    p.add_argument("--quick", action="store_true", help="64 MiB models, a small bulk set: an end-to-end check")
    p.add_argument("--out", type=Path, default=HERE / "results" / "fleet.json")
    args = p.parse_args(argv)
    size = 64 << 20 if args.quick else parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="chunkpull-fleet-"))
    try:
        doc = {
            "command": "python benchmarks/measure_fleet.py" + (" --quick" if args.quick else f" --size {args.size} --origin-bps {args.origin_bps}"),
            "mirrors": measure_mirrors(work, size, parse_size(args.origin_bps)),
            "pull_through": measure_pull_through(work, size) if shutil.which("docker-registry") else None,
            "bulk": measure_bulk(work, (16 << 20) if args.quick else (128 << 20), 10),
            "rate_cap": measure_rate_cap(work, (32 << 20) if args.quick else (256 << 20), "20M" if args.quick else "50M"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
