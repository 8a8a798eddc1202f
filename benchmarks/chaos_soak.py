"""Chaos soak: many pulls under random faults and kills; every file under a digest's name must hash to it.

Usage::

    python benchmarks/chaos_soak.py --rounds 60 [--seed 1] [--size 24M]

Each round picks faults at random for the built-in registry (cut
connections, corrupted bytes, stalls, 5xx and 429, a dripping chunk, gzip
bodies, a wrong Content-Range), pulls one model in a child process, and
either lets it finish, sends it SIGKILL, SIGTERM or SIGINT at a random
moment; then it resumes the pull with no faults, which must succeed.  After
each of the two pulls it checks the whole models directory: every file
under ``blobs/`` hashes to its name, and no manifest names a missing blob.  It prints the counts and
exits 1 if any wrong blob or dangling manifest was found.  Bounded: each
child has a deadline, and the registry runs in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from chunkpull.testing import TestRegistry, build_model

CHILD = r"""
import sys
from chunkpull import DiskCache, Registry
from chunkpull.engine.transport import Backoff
reg = Registry(DiskCache(sys.argv[1]), max_streams=4, stall_timeout_s=0.5, backoff=Backoff(attempts=4, base_s=0.01, cap_s=0.05))
try:
    reg.pull(sys.argv[2])
except Exception as err:
    print(type(err).__name__, err, file=sys.stderr)
    sys.exit(1)
"""

FAULTS = ("cut", "corrupt", "stall", "status", "drip", "gzip", "content-range")
ENDINGS = ("finish", "SIGKILL", "SIGTERM", "SIGINT")


def random_faults(rng: random.Random, layer: str, chunks: int) -> dict:
    kinds = rng.sample(FAULTS, rng.randint(1, 3))
    f: dict = {"only_digest": layer}
    for kind in kinds:
        if kind == "cut":
            f.update(cut_after=rng.randint(1, 200_000), cut_times=rng.randint(1, 6))
        elif kind == "corrupt":
            f["corrupt_chunk"] = {rng.randrange(chunks): rng.randint(1, 2)}
        elif kind == "stall":
            f.update(stall_s=rng.choice([1.0, 30.0]), stall_times=rng.randint(1, 3), stall_after=rng.randint(0, 100_000))
        elif kind == "status":
            f["status_times"] = {rng.choice([500, 503, 429]): rng.randint(1, 3)}
        elif kind == "drip":
            f["drip_chunk"] = {rng.randrange(chunks): rng.choice([1, 200])}
        elif kind == "gzip":
            f["gzip_times"] = rng.randint(1, 2)
        elif kind == "content-range":
            f.update(content_range_shift=rng.choice([1, 4096]), content_range_times=1)
    return f


def audit(models: Path) -> tuple[int, int]:
    """Return (wrong blobs, dangling manifest references) in a models directory."""
    wrong = 0
    for p in (models / "blobs").glob("sha256-*"):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while piece := f.read(4 << 20):
                h.update(piece)
        wrong += h.hexdigest() != p.name[7:]
    dangling = 0
    for m in (models / "manifests").rglob("*"):
        if m.is_file():
            doc = json.loads(m.read_bytes())
            for layer in [*doc.get("layers", []), doc.get("config") or {}]:
                if layer.get("digest") and not (models / "blobs" / layer["digest"].replace(":", "-")).exists():
                    dangling += 1
    return wrong, dangling


def run_child(models: Path, ref: str, env: dict, ending: str, rng: random.Random, deadline_s: float) -> str:
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(models), ref], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if ending != "finish":
        time.sleep(rng.uniform(0.02, 0.6))
        if p.poll() is None:
            p.send_signal(getattr(signal, ending))
    try:
        p.wait(deadline_s)
    except subprocess.TimeoutExpired:
        dump = subprocess.run(["py-spy", "dump", "--pid", str(p.pid)], capture_output=True, text=True, check=False).stdout if shutil.which("py-spy") else ""
        p.kill()
        p.wait()
        if dump:
            print(f"hung child's threads:\n{dump}", file=sys.stderr)
        return "hung"
    if ending != "finish":
        return "killed" if p.returncode < 0 else ("stopped" if p.returncode else "finished")
    return "ok" if p.returncode == 0 else "failed: " + (p.stderr.read().strip().splitlines() or ["?"])[-1][:120]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=24 << 20, help="layer size in bytes (default 24 MiB)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    import chunkpull

    env = {**os.environ, "PYTHONPATH": str(Path(chunkpull.__file__).resolve().parents[1])}
    outcomes: Counter = Counter()
    faults_used: Counter = Counter()
    wrong_total = dangling_total = 0
    problems: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chunkpull-chaos-") as tmp:
        up = Path(tmp) / "up"
        build_model(up, "registry.local/library/chaos:latest", [args.size], seed=args.seed)
        chunk = 1 << 20
        with TestRegistry(up, chunk_size=chunk) as server:
            ref = f"{server.url}/library/chaos:latest"
            layer = next(p.name for p in (up / "blobs").iterdir() if p.stat().st_size == args.size).replace("-", ":", 1)
            for r in range(args.rounds):
                # A fresh models directory each round: a blob an earlier round
                # committed would make this one a no-op.
                models = Path(tmp) / f"models{r}"
                faults = random_faults(rng, layer, args.size // chunk)
                faults_used.update(k for k in faults if k != "only_digest")
                server.faults.reset()
                server.faults.set(**faults)
                ending = rng.choice(ENDINGS)
                outcome = run_child(models, ref, env, ending, rng, 120)
                outcomes[outcome] += 1
                if outcome == "hung" or outcome.startswith("failed"):
                    problems.append({"round": r, "ending": ending, "faults": faults, "outcome": outcome})
                server.faults.reset()
                # The invariant holds after the faulty or killed pull too, not only after the resume.
                wrong, dangling = audit(models)
                wrong_total += wrong
                dangling_total += dangling
                outcomes["resume " + run_child(models, ref, env, "finish", rng, 120)] += 1
                wrong, dangling = audit(models)
                wrong_total += wrong
                dangling_total += dangling
                shutil.rmtree(models, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(json.dumps({"rounds": args.rounds, "seed": args.seed, "seconds": round(elapsed, 1), "wrong_blobs": wrong_total,
                      "dangling_manifest_refs": dangling_total, "outcomes": dict(outcomes), "faults": dict(faults_used), "problems": problems}, indent=1, default=str))
    bad_resumes = sum(n for k, n in outcomes.items() if k.startswith("resume") and k != "resume ok")
    return 1 if wrong_total or dangling_total or bad_resumes or any("hung" in k for k in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
