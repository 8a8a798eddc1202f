"""WAN benchmark (issue 12, item 1): pulls over a shaped link in a network namespace of its own.

    sudo python benchmarks/wan_bench.py [--paths S1,S2,S3,S4] [--size 1G] [--repeat 3] [--quick]

Root only.  It creates a network namespace with a unique name (deleted at
the end, on errors and Ctrl-C too), brings its loopback up and re-runs
itself inside it.  There, per path, it shapes the loopback with ``tbf`` (the
link), starts the built-in registry (``python -m chunkpull.testing.main``)
with the path's per-connection switches, and runs the contenders against
it, interleaved (each repeat goes round all of them, starting one further
along), each run a fresh process:

- ``chunkpull`` (its default: adaptive streams, unless
  ``$CHUNKPULL_MAX_STREAMS`` pins them), ``chunkpull-8`` (the former
  default), ``chunkpull-16``, ``chunkpull-32`` (pinned): ``chunkpull.bench.child``'s chunkpull run (``Registry.pull`` of
  the model by name, fsync as a pull does);
- ``hf_transfer``: ``hf_transfer.download`` (16 files, 8 MiB chunks), then a
  SHA-256 pass (the bench child's ``hf_transfer``);
- ``aria2c``: ``aria2c -x16 -s16 -k8M --checksum=sha-256=…`` (the bench child's);
- ``curl+openssl``: ``curl -sS -f URL | tee FILE | openssl dgst -sha256``, one
  pass, run here (coreutils' sha256sum on Debian does not use OpenSSL and
  has no SHA-NI code; ``chunkpull bench`` has only curl+sha256sum).

The baselines fetch the layer blob (the model's config, a few hundred
bytes, is left to chunkpull's pull by name: given two blobs the bench
child's aria2c switches to one connection per blob).  Every contender's
output is fsynced before its clock stops, as chunkpull's commit does.

The per-connection caps are the registry's own: ``--pace`` sets
``SO_MAX_PACING_RATE`` on every accepted socket (Linux TCP pacing, the body
still goes out with sendfile), ``--straggler 8:BPS`` paces every 8th
connection slower, ``--reset-after`` resets (RST) a connection once it has
sent that many body bytes; all go by the connection's serial number, which
the registry restarts at 1 before every run (``/_testregistry/stats?reset=1``),
so every contender meets the same sequence.  After a run the same route
gives the blob body bytes the registry sent (less what an RST dropped):
divided by the bytes the contender kept (the model's blobs), that is
"bytes served per byte kept".

Figures per path and contender (medians of the repeats): wall seconds,
GB/s, efficiency (the ideal time at the link rate, bytes / rate, over the
measured time), CPU-s/GB (the contender's processes, user + system, tools
included; not the registry's, which is recorded apart as ``server_cpu_s``)
and served/kept; ``verified`` is true when every run's files hash to their
digests (checked again here after each run, outside the timing).

No propagation delay: tc's netem is not available here, so the round trip
is the loopback's (tbf's queue adds up to its ``latency`` at most).

Writes ``benchmarks/results/wan.json`` (``--out``); ``render_markdown(doc)``
turns it into the lines of RESULTS.md's WAN section (``run_compare.py``
calls it).  Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))  # the tests' server drivers

from realregistries import stop_process  # noqa: E402
DEFAULT_OUT = HERE / "results" / "wan.json"
COMMAND = "sudo python benchmarks/wan_bench.py"

MB = 1_000_000
GBIT = 1_000_000_000
# tbf: a burst well above the loopback's 64 KiB GSO packets and one
# kernel tick at 1 Gbit/s; the queue holds at most 50 ms of the rate.
TBF_BURST = "256kb"
TBF_LATENCY = "50ms"
CHUNK = 8 << 20  # the registry's chunk size, and the baselines' split
# 16 connections, as issue 12 measured it: 8 could not pass 8 x 15 MB/s on S1.
HF_TRANSFER_FILES = 16
STATS_PATH = "/_testregistry/stats"


@dataclasses.dataclass(frozen=True)
class Path_:
    key: str
    title: str
    link_bps: int  # bits per second
    pace: int | None = None  # bytes per second per connection
    straggler: tuple[int, int] | None = None  # (every, bytes per second)
    reset_after: int | None = None  # body bytes per connection

    def registry_options(self) -> list[str]:
        opts = []
        if self.pace:
            opts += ["--pace", str(self.pace)]
        if self.straggler:
            opts += ["--straggler", f"{self.straggler[0]}:{self.straggler[1]}"]
        if self.reset_after is not None:
            opts += ["--reset-after", str(self.reset_after)]
        return opts


PATHS = {
    "S1": Path_("S1", "1 Gbit/s link, 15 MB/s per connection", GBIT, pace=15 * MB),
    "S2": Path_("S2", "as S1, every 8th connection 0.5 MB/s (a straggler)", GBIT, pace=15 * MB, straggler=(8, MB // 2)),
    "S3": Path_("S3", "200 Mbit/s link, no per-connection cap", 200_000_000),
    "S4": Path_("S4", "as S1, each connection reset after 128 MiB", GBIT, pace=15 * MB, reset_after=128 << 20),
}
CONTENDERS = ("chunkpull", "chunkpull-8", "chunkpull-16", "chunkpull-32", "hf_transfer", "aria2c", "curl+openssl")
# What the full run leaves out, to stay near 25 minutes at 1 GiB:
# - more streams cannot help on S3 (no per-connection cap): chunkpull's default only;
# - curl's one connection is serial 1 on every path, never a straggler: on S1
#   and S2 it is bound by the 15 MB/s cap (72 s for 1 GiB), measured once.
SKIP = {("S3", "chunkpull-8"), ("S3", "chunkpull-16"), ("S3", "chunkpull-32")}
ONE_RUN = {("S1", "curl+openssl"), ("S2", "curl+openssl")}


def _status(text: str) -> None:
    print(f"wan_bench: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The namespace (outside)
# --------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_outside(argv: list[str]) -> int:
    """Create the namespace, run this script inside it, delete the namespace; return the inner status."""
    missing = [tool for tool in ("ip", "tc", "curl", "openssl", "tee") if shutil.which(tool) is None]
    if missing:
        print(f"wan_bench: needs {', '.join(missing)} (iproute2, curl, openssl, coreutils)", file=sys.stderr)
        return 2
    ns = f"cpwan-{os.getpid()}-{secrets.token_hex(3)}"
    signal.signal(signal.SIGTERM, _interrupt)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        _status(f"network namespace {ns}")
        # ip netns exec execs the command: proc is the inner Python itself.
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inside", *argv])
        return proc.wait()
    except KeyboardInterrupt:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # it stops its registry and runs, then exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _status("interrupted")
        return 130
    finally:
        # Whatever is still inside (only what this run started) goes first.
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        _status(f"deleted network namespace {ns}")


# --------------------------------------------------------------------------
# Inside: the link, the registry, the runs
# --------------------------------------------------------------------------


def shape(link_bps: int) -> str:
    """Shape the namespace's loopback with tbf at link_bps; return the qdisc line."""
    cmd = ["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", f"{link_bps}bit", "burst", TBF_BURST, "latency", TBF_LATENCY]
    subprocess.run(cmd, check=True)
    return " ".join(cmd)


class Registry:
    """The built-in registry in a subprocess, with a path's switches and the stats route."""

    def __init__(self, models_dir: Path, options: list[str]) -> None:
        from chunkpull.bench import child

        self.options = ["--chunk-size", str(CHUNK), "--stats-route", *options]
        cmd = [sys.executable, "-m", "chunkpull.testing.main", str(models_dir), "--port", "0", *self.options]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the registry runs; closed in stop()
        # A session of its own: Ctrl-C reaches this script, which stops it in order.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=child.child_env(), start_new_session=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        self.url = self.proc.stdout.readline().decode().strip() if ready else ""
        if not self.url.startswith("http"):
            self.stop()
            self._log.seek(0)
            raise RuntimeError(f"the registry did not start: {self._log.read()[-2000:].decode(errors='replace')}")

    def ref(self, name: str) -> str:
        """The pullable name of a model it serves (what ``bench.model.embedded_target`` asks for)."""
        return f"http://{self.url.split('://', 1)[1]}/{name.split('/', 1)[1]}"

    def stats(self, *, reset: bool = True) -> dict:
        """Return the registry's counters (and reset them: the next connection is serial 1).

        ``connections`` is the run's own: the stats requests' connections since the last reset are taken off.
        """
        with urllib.request.urlopen(self.url + STATS_PATH + ("?reset=1" if reset else ""), timeout=30) as r:
            doc = json.loads(r.read())
        self._polls = getattr(self, "_polls", 0) + 1
        doc["connections"] -= self._polls
        if reset:
            self._polls = 0
        return doc

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until the last run's connections are gone, so their bytes count in its figures."""
        deadline = time.monotonic() + timeout_s
        while self.stats(reset=False)["open"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc.stdout.close()
        self._log.close()


def _curl_openssl(target: Any, workdir: Path, timeout_s: float) -> dict:
    """``curl -sS -f URL | tee FILE | openssl dgst -sha256`` per blob; wall and CPU of the pipelines."""
    script = 'set -o pipefail; curl -sS -f "$1" | tee "$2" | openssl dgst -sha256 -r'
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    error = None
    for blob in target.blob_specs():
        path = workdir / "out" / blob["digest"].replace(":", "-", 1)
        proc = subprocess.Popen(["bash", "-c", script, "curl+openssl", blob["url"], str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
            error = f"killed after {timeout_s:g} s"
            break
        if proc.returncode:
            error = f"exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
            break
        got = out.decode().split()[0] if out.split() else ""
        if got != blob["digest"].partition(":")[2]:
            error = f"openssl: {blob['digest']} hashed to sha256:{got}"
            break
    if error is None:
        from chunkpull.bench.child import fsync_tree

        fsync_tree(workdir / "out")  # on the disk before the clock stops, as every contender's output
    wall = time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    return {"ok": error is None, "error": error, "wall_s": wall, "user_s": kids1.ru_utime - kids0.ru_utime, "sys_s": kids1.ru_stime - kids0.ru_stime, "cpu_s": cpu}


def _streams(contender: str, default: int | None) -> int | None:
    return int(contender.rsplit("-", 1)[1]) if contender.startswith("chunkpull-") else default


def run_once(contender: str, target: Any, default_streams: int | None, timeout_s: float) -> dict:
    """One measured run in a fresh process; the outputs are checked afterwards."""
    from chunkpull.bench import child

    workdir = Path(tempfile.mkdtemp(prefix="chunkpull-wan-"))
    try:
        (workdir / "out").mkdir()
        if contender == "curl+openssl":
            result = _curl_openssl(target, workdir, timeout_s)
        else:
            method = "chunkpull" if contender.startswith("chunkpull") else contender
            spec = {
                "method": method,
                "name": target.name,
                "blobs": target.blob_specs(),
                "models_dir": str(workdir / "models"),
                "out_dir": str(workdir / "out"),
                "streams": _streams(contender, default_streams) if method == "chunkpull" else HF_TRANSFER_FILES,
                "chunk_size": CHUNK,
                "verify": "blob" if method == "chunkpull" else "after",
                "threshold": None,  # chunkpull pull's own
                "fsync": True,
                "progress": False,
                "label": contender,
                "instrument": False,
                "mirrors": [],
                "verify_tls": True,
            }
            result = child.run_child(spec, workdir, timeout_s=timeout_s)
            if result.get("ok") and "cpu_s" not in result:
                result["cpu_s"] = result["user_s"] + result["sys_s"]
        problem = None
        if result.get("ok"):
            where = workdir / ("models/blobs" if contender.startswith("chunkpull") else "out")
            for blob in target.blobs:
                problem = problem or child.blob_problem(where / blob.digest.replace(":", "-", 1), blob.digest, blob.size)
        result["verified"] = bool(result.get("ok")) and problem is None
        if problem:
            result["error"] = f"wrong output: {problem}"
        record = {k: result.get(k) for k in ("ok", "verified", "error", "wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_kib")}
        return {**record, "kept_bytes": target.size}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(path: Path_, contender: str, runs: list[dict], size: int) -> dict:
    """One contender on one path: medians of its verified runs; size is the layer's (the ideal time's) bytes."""
    good = [r for r in runs if r["verified"]]
    wall = _median([r["wall_s"] for r in good])
    ideal = size / (path.link_bps / 8)
    return {
        "contender": contender,
        "repeats": len(runs),
        "verified_runs": len(good),
        "verified": bool(runs) and len(good) == len(runs),
        "median_wall_s": wall,
        "gbps": size / wall / 1e9 if wall else None,
        "efficiency": ideal / wall if wall else None,
        "cpu_s_per_gb": _median([r["cpu_s"] / (size / 1e9) for r in good]),
        "served_per_kept": _median([r["served_bytes"] / r["kept_bytes"] for r in good]),
        # Of every run: a failed run met its resets too.
        "resets": _median([r["resets"] for r in runs]),
        "connections": _median([r["connections"] for r in runs]),
        "server_cpu_s": _median([r["server_cpu_s"] for r in good]),
        "errors": sorted({r["error"] for r in runs if r["error"]}),
        "runs": runs,
    }


def measure_path(path: Path_, model: Any, contenders: list[str], repeat: int, default_streams: int | None, *, full: bool) -> dict:
    from chunkpull.bench.model import embedded_target, warm

    qdisc = shape(path.link_bps)
    chosen = [c for c in contenders if not (full and (path.key, c) in SKIP)]
    reg = Registry(model.root, path.registry_options())
    try:
        target = embedded_target(reg, model)
        warm(target)  # chunksums computed, blob in the page cache: outside every run
        # The bench model's blobs are its layers, then its config: baselines fetch the layers.
        layers = dataclasses.replace(target, blobs=target.blobs[:-1])
        size = layers.size
        ideal = size / (path.link_bps / 8)
        timeout_s = max(600.0, 30 * ideal)
        runs: dict[str, list[dict]] = {c: [] for c in chosen}
        for rep in range(repeat):
            order = chosen[rep % len(chosen):] + chosen[: rep % len(chosen)]
            for contender in order:
                if rep > 0 and full and (path.key, contender) in ONE_RUN:
                    continue
                reg.stats(reset=True)
                cpu0 = reg.cpu_s()
                record = run_once(contender, target if contender.startswith("chunkpull") else layers, default_streams, timeout_s)
                reg.settle()
                stats = reg.stats(reset=True)
                record.update(
                    repeat=rep,
                    served_bytes=stats["blob_bytes_sent"],
                    resets=stats["resets"],
                    connections=stats["connections"],
                    server_cpu_s=reg.cpu_s() - cpu0,
                )
                runs[contender].append(record)
                if record["verified"]:
                    _status(f"{path.key} [{rep + 1}/{repeat}] {contender}: {record['wall_s']:.2f} s, {size / record['wall_s'] / 1e9:.3f} GB/s, "
                            f"efficiency {ideal / record['wall_s']:.2f}, {record['cpu_s']:.2f} CPU-s, served/kept {stats['blob_bytes_sent'] / record['kept_bytes']:.3f}, "
                            f"{stats['connections']} connections, {stats['resets']} resets")
                else:
                    _status(f"{path.key} [{rep + 1}/{repeat}] {contender}: FAILED: {record['error']}")
        qdisc_stats = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=False).stdout.strip()
    finally:
        reg.stop()
    return {
        "key": path.key,
        "title": path.title,
        "link_bps": path.link_bps,
        "pace_bps": path.pace,
        "straggler": {"every": path.straggler[0], "bps": path.straggler[1]} if path.straggler else None,
        "reset_after": path.reset_after,
        "ideal_s": ideal,
        "qdisc": qdisc,
        "qdisc_stats": qdisc_stats,
        "registry": " ".join(["python -m chunkpull.testing.main MODELS", *reg.options]),
        "skipped": [c for c in contenders if c not in chosen],
        "contenders": [summarize(path, c, runs[c], size) for c in chosen],
    }


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def tool_versions() -> dict:
    try:
        hf = importlib.metadata.version("hf_transfer")
    except importlib.metadata.PackageNotFoundError:
        hf = None
    return {
        "aria2c": _version(["aria2c", "--version"]),
        "curl": _version(["curl", "--version"]),
        "openssl": _version(["openssl", "version"]),
        "hf_transfer": hf,
        "tc": _version(["tc", "-V"]),
    }


def source_tree() -> dict:
    """The commit measured, and how many files under src/ differ from it (an editable install runs the tree)."""
    def git(*cmd: str) -> str:
        r = subprocess.run(["git", "-C", str(HERE.parent), *cmd], capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "src")
    return {"head": git("rev-parse", "HEAD") or None, "modified_under_src": len(changed.splitlines())}


def run_inside(args: argparse.Namespace) -> int:
    from chunkpull import _env
    from chunkpull.bench.harness import machine_info
    from chunkpull.bench.model import ensure_model

    contenders = list(args.contenders)
    if importlib.util.find_spec("hf_transfer") is None and "hf_transfer" in contenders:
        _status("hf_transfer is not installed (pip install hf_transfer): left out")
        contenders.remove("hf_transfer")
    if shutil.which("aria2c") is None and "aria2c" in contenders:
        _status("aria2c is not installed: left out")
        contenders.remove("aria2c")
    _status(f"preparing the {args.size / 2**30:g} GiB model")
    model = ensure_model(args.size, 1, 0)
    default_streams = _env.pinned_streams()  # None: chunkpull's adaptive default
    full = not args.quick and not args.everything
    doc: dict[str, Any] = {
        "command": COMMAND + (" " + " ".join(args.argv) if args.argv else ""),
        "machine": machine_info(),
        "tools": tool_versions(),
        "source": source_tree(),
        "notes": [],
        "settings": {
            "bytes": sum(b.size for b in model.blobs),
            "blob": args.size,
            "repeat": args.repeat,
            "contenders": contenders,
            "chunkpull_default_streams": default_streams or "adaptive",
            "baselines_fsync": True,  # every contender's output is on the disk before its clock stops
            "registry_chunk_size": CHUNK,
            "hf_transfer_files": HF_TRANSFER_FILES,
            "tbf": {"burst": TBF_BURST, "latency": TBF_LATENCY},
            "cut": ([f"{c} on {p}: not run (more streams cannot pass a link with no per-connection cap)" for p, c in sorted(SKIP)]
                    + [f"{c} on {p}: one run (serial 1, bound by the 15 MB/s cap)" for p, c in sorted(ONE_RUN)]) if full else [],
        },
        "paths": [],
    }
    started = time.monotonic()
    for key in args.paths:
        path = PATHS[key]
        if path.reset_after is not None and args.size != 1 << 30:
            # The same number of resets per blob at any size (128 MiB of 1 GiB).
            every = max(1 << 20, path.reset_after * args.size // (1 << 30))
            path = dataclasses.replace(path, reset_after=every, title=f"as S1, each connection reset after {every / 2**20:g} MiB")
        _status(f"{key}: {path.title}")
        doc["paths"].append(measure_path(path, model, contenders, args.repeat, default_streams, full=full))
    doc["elapsed_s"] = time.monotonic() - started
    if args.keep_from is not None:
        keep_rows(doc, json.loads(args.keep_from.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    _status(f"wrote {args.out} ({doc['elapsed_s'] / 60:.1f} min)")
    for line in render_markdown(doc):
        print(line)
    failed = [f"{p['key']}/{c['contender']}" for p in doc["paths"] for c in p["contenders"] if c["contender"].startswith("chunkpull") and not c["verified"]]
    return 1 if failed else 0


def keep_rows(doc: dict, earlier: dict) -> None:
    """Add to doc the baseline rows (not chunkpull's) that this run did not measure, from an earlier document.

    For re-measuring chunkpull after a change without the hour of baselines
    that do not depend on it; every kept row says where it came from.
    """
    src = earlier.get("source", {})
    origin = f"kept from an earlier run ({src.get('head', '?')[:10]}, {earlier.get('machine', {}).get('date', src.get('date', '?'))})"
    by_key = {p["key"]: p for p in earlier.get("paths", [])}
    kept: dict[str, set[str]] = {}  # where each kept row was measured: contenders
    for path in doc["paths"]:
        have = {c["contender"] for c in path["contenders"]}
        for c in by_key.get(path["key"], {}).get("contenders", []):
            if c["contender"] not in have and not c["contender"].startswith("chunkpull"):
                row = {**c, "kept_from": c.get("kept_from", origin)}  # a row kept twice names the run that measured it
                path["contenders"].append(row)
                kept.setdefault(row["kept_from"], set()).add(c["contender"])
    for where, names in kept.items():
        doc["notes"].append(f"{', '.join(sorted(names))}: {where}, same script and machine; they do not run chunkpull's code.")
    if kept and not earlier.get("settings", {}).get("baselines_fsync"):
        doc["settings"]["baselines_fsync"] = False  # the kept rows were measured before their outputs were fsynced


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_markdown(doc: dict) -> list[str]:
    """Return RESULTS.md's WAN section (without its heading): the setup, a summary of efficiency, a table per path."""
    s = doc["settings"]
    out = [
        (f"A {s['blob'] / 2**30:g} GiB blob (one layer, and the config) pulled through a network namespace's loopback, "
        f"shaped with `tbf` (burst {s['tbf']['burst']}, latency {s['tbf']['latency']}); per-connection caps are the built-in "
        "registry's `SO_MAX_PACING_RATE` on each accepted socket, stragglers and resets go by connection serial number, "
        "restarted before every run, so every contender meets the same sequence. No propagation delay (no netem here). "
        f"Medians of {s['repeat']} interleaved runs; efficiency = ideal time at the link rate / measured time; CPU-s/GB is the "
        "contender's processes (user + system); served/kept = blob body bytes the registry sent / bytes kept; "
        "connections and resets are per run (medians). "
        f"`chunkpull` is its default (streams: {s['chunkpull_default_streams']}), `chunkpull-N` pinned to N streams, pulling the model "
        f"by name; the baselines fetch the layer blob: `hf_transfer` {s.get('hf_transfer_files', HF_TRANSFER_FILES)} files of 8 MiB then a SHA-256 pass, "
        "`aria2c -x16 -s16 -k8M --checksum`, `curl | tee FILE | openssl dgst -sha256`; "
        + ("every contender's output is fsynced before its clock stops." if s.get("baselines_fsync") else
           "chunkpull fsyncs each blob before it commits it, the baselines' outputs were not fsynced (an easier job).")),
        "",
        f"    {doc['command']}",
        "",
    ]
    if s.get("cut"):
        out += ["Left out to keep the run short: " + "; ".join(s["cut"]) + ".", ""]
    out += [*doc.get("notes", []), ""] if doc.get("notes") else []
    names = list(dict.fromkeys(c["contender"] for p in doc["paths"] for c in p["contenders"]))
    out += ["| efficiency | " + " | ".join(f"{p['key']}" for p in doc["paths"]) + " |", "|---|" + "---|" * len(doc["paths"])]
    for name in names:
        cells = []
        for p in doc["paths"]:
            c = next((c for c in p["contenders"] if c["contender"] == name), None)
            cells.append("" if c is None else (_f(c["efficiency"], ".2f") if c["verified"] else "failed"))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    for p in doc["paths"]:
        reset = (f"; a connection is reset once it has carried {p['reset_after'] / 2**20:g} MiB, so a contender spreading the blob "
                 f"over more than {s['blob'] // p['reset_after']} connections meets no reset") if p.get("reset_after") else ""
        out += ["", f"{p['key']}: {p['title']} (ideal {p['ideal_s']:.1f} s{reset})", "",
                "| contender | runs | median s | GB/s | efficiency | CPU-s/GB | served/kept | connections | resets | verified |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for c in p["contenders"]:
            verified = "yes" if c["verified"] else f"no ({c['verified_runs']}/{c['repeats']}: {'; '.join(c['errors'])[:120]})"
            out.append(f"| {c['contender']} | {c['repeats']} | {_f(c['median_wall_s'], '.2f')} | {_f(c['gbps'], '.3f')} | "
                       f"{_f(c['efficiency'], '.2f')} | {_f(c['cpu_s_per_gb'], '.2f')} | {_f(c['served_per_kept'], '.3f')} | "
                       f"{_f(c['connections'], '.0f')} | {_f(c['resets'], '.0f')} | {verified} |")
    return out


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from chunkpull.core.units import parse_size

    def paths(text: str) -> list[str]:
        keys = [k.strip().upper() for k in text.split(",") if k.strip()]
        bad = [k for k in keys if k not in PATHS]
        if bad or not keys:
            raise argparse.ArgumentTypeError(f"unknown path(s) {', '.join(bad) or text!r} (want some of {', '.join(PATHS)})")
        return list(dict.fromkeys(keys))

    def contenders(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in CONTENDERS]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown contender(s) {', '.join(bad) or text!r} (want some of {', '.join(CONTENDERS)})")
        return list(dict.fromkeys(names))

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paths", type=paths, default=list(PATHS), help=f"paths to run, e.g. S1,S3 (default all: {', '.join(PATHS)})")
    p.add_argument("--contenders", type=contenders, default=list(CONTENDERS), help=f"default: {','.join(CONTENDERS)}")
    p.add_argument("--size", type=parse_size, default=1 << 30, help="blob size (default 1G = 2^30 bytes)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender and path (default 3)")
    p.add_argument("--quick", action="store_true", help="a smoke test: a 64 MiB blob, one run each, written to a scratch file")
    p.add_argument("--everything", action="store_true", help="do not leave out the runs the full default leaves out (longer)")
    p.add_argument("--out", type=Path, help=f"JSON document to write (default {DEFAULT_OUT.relative_to(HERE.parent)}; --quick: a scratch file)")
    p.add_argument("--keep-from", type=Path, metavar="JSON",
                   help="add the baseline rows this run leaves out (see --contenders) from an earlier JSON document, marked as kept")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Ctrl-C must clean up even when started where SIGINT is ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if importlib.util.find_spec("chunkpull") is None:
        print(f"wan_bench: chunkpull is not importable by {sys.executable} (pip install -e . in a virtualenv, "
              "then run that virtualenv's python with sudo)", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    if not args.inside:
        if os.geteuid() != 0:
            print("wan_bench: must run as root (it creates a network namespace and shapes its loopback with tc): "
                  f"sudo {sys.executable} {' '.join([__file__, *argv])}", file=sys.stderr)
            return 2
        return run_outside(argv)
    if args.quick:
        if "--size" not in argv:
            args.size = 64 << 20
        if "--repeat" not in argv:
            args.repeat = 1
        args.out = args.out or Path(tempfile.gettempdir()) / "wan-quick.json"
    args.out = args.out or DEFAULT_OUT
    args.argv = [a for a in argv if a != "--inside"]
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_inside(args)
    except KeyboardInterrupt:
        _status("interrupted: registry and runs stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
