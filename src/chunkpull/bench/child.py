"""One measured pull, run in a process of its own by ``chunkpull.bench``.

``chunkpull bench`` starts a fresh Python process for every measured run so
that the figures belong to that pull alone: the peak RSS is this process's
own (or, for the external tools, the largest of the tools' processes), and
the CPU time is what this process and the tools it waited for spent inside
the timed region.  Both halves of the protocol live here: the parent's
``run_child`` writes a JSON *spec* file, starts ``python <this file> SPEC``
(``python -m chunkpull.bench.child SPEC`` for chunkpull itself), and reads
with ``read_child_result`` the JSON *result* file the child's ``main``
writes before exiting.  A result file rather than stdout, because nothing a
tool or library prints can then corrupt it.

Peak RSS is read from ``VmHWM`` in ``/proc/<pid>/status``, not from
``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so every
child of the (large) harness would report at least the harness's own size.
``VmHWM`` belongs to the address space the process got at exec.  For the
external tools it is sampled while they run (it only grows, so the last
sample before exit is within one interval of the true peak).

Methods (``spec["method"]``):

``chunkpull``
    ``Registry.pull`` into ``spec["models_dir"]``; with ``spec["progress"]``
    through ``display.pull_with_progress``, the pull and progress display of
    ``chunkpull pull``; with ``spec["instrument"]`` it also records every
    request's start, first byte and end through ``Transport.observer`` (for
    time to first byte and per-chunk latency).
``single+sha256``
    one requests stream into a reused buffer, written to a file, then a
    separate hashlib SHA-256 pass over the file.
``curl+sha256sum``
    ``curl -o FILE URL`` then ``sha256sum FILE``.
``python-threads``
    ``baselines.py`` beside this file: requests (streamed, ``readinto``
    reused buffers) + ThreadPoolExecutor + hashlib + os.pwrite over the
    registry's chunks, the whole-blob SHA-256 in order from memory.
``python-threads-direct``
    the same, writing page-aligned buffers with ``O_DIRECT`` as chunkpull does.
``aria2c``
    ``aria2c -x16 -s16 -k8M --checksum=sha-256=<hex>``.
``hf_transfer``
    ``hf_transfer.download`` (unverified) then a hashlib SHA-256 pass.

This module imports only the standard library at module level, and nothing
from chunkpull unless the method is ``chunkpull``: a baseline's process must
not carry chunkpull's imports (the registry client, the native extension
and what they import) in its peak RSS.  The baselines' own checks (a digest
mismatch fails the run) are part of what they cost, and so is the fsync of
their output files (``_durable``), as chunkpull's commit fsyncs each blob;
the parent checks every output file again with ``blob_problem``, outside
the timed region.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from urllib.parse import urlsplit

__all__ = ["EXTERNAL_METHODS", "METHODS", "blob_problem", "child_env", "main", "read_child_result", "run_child"]

METHODS = ("chunkpull", "single+sha256", "curl+sha256sum", "python-threads", "python-threads-direct", "aria2c", "hf_transfer", "hf_transfer-raw", "skopeo")
# Methods whose work happens in other programs: their peak RSS is the
# tools', not this Python wrapper's.
EXTERNAL_METHODS = frozenset({"curl+sha256sum", "aria2c", "skopeo"})

# The single-stream baseline's read buffer: large enough that the Python
# loop costs nothing next to the copy, like a careful plain-Python program.
SINGLE_STREAM_BUFFER = 1 << 20
# An external tool's VmHWM is sampled every millisecond at first (a short
# run must not end between two samples), backing off to this interval so
# the sampling itself costs next to no CPU on long runs.
_RSS_POLL_S = 0.02


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """Return a live process's peak RSS (VmHWM) in KiB, or None when unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


_tool_peak_kib = 0  # the largest VmHWM seen among this process's tools


def _run_tool(cmd: list[str]) -> tuple[int, str]:
    """Run an external tool to completion, sampling its peak RSS; return (exit status, stderr text)."""
    global _tool_peak_kib
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err if cmd[0] == "sha256sum" else subprocess.DEVNULL, stderr=err)
        interval = 0.001
        while True:
            peak = peak_rss_kib(proc.pid)
            if peak is not None:
                _tool_peak_kib = max(_tool_peak_kib, peak)
            try:
                code = proc.wait(interval)
                break
            except subprocess.TimeoutExpired:
                interval = min(interval * 2, _RSS_POLL_S)
        err.seek(0)
        return code, err.read().decode(errors="replace").strip()


class MethodError(Exception):
    """A method ran but its result is wrong (a digest mismatch, a tool's failure)."""


def _out_path(spec: dict, blob: dict) -> str:
    return os.path.join(spec["out_dir"], blob["digest"].replace(":", "-", 1))


def blob_problem(path: str | os.PathLike[str], digest: str, size: int | None = None, *, got_hex: str | None = None) -> str | None:
    """Return why the file at path is not the blob ``sha256:<hex>`` (of size bytes, if given), or None when it is.

    ``got_hex`` is the file's SHA-256 as another tool (sha256sum) computed
    it; without it the file is hashed here, with hashlib.
    """
    try:
        if size is not None and (have := os.path.getsize(path)) != size:
            return f"blob {digest} has {have} bytes, want {size}"
        if got_hex is None:
            with open(path, "rb") as f:
                got_hex = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return f"no file for blob {digest}"
    return None if got_hex == digest.partition(":")[2] else f"blob {digest} hashed to sha256:{got_hex}"


def _check(blob: dict, path: str, who: str, got_hex: str | None = None) -> None:
    problem = blob_problem(path, blob["digest"], got_hex=got_hex)
    if problem:
        raise MethodError(f"{who}: {problem}")


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------


def _run_single(spec: dict) -> dict:
    import requests

    buf = bytearray(SINGLE_STREAM_BUFFER)
    view = memoryview(buf)
    with requests.Session() as session:
        session.verify = spec["verify_tls"]
        for blob in spec["blobs"]:
            path = _out_path(spec, blob)
            with session.get(blob["url"], stream=True, timeout=(10, 60)) as r:
                r.raise_for_status()
                with open(path, "wb", buffering=0) as f:
                    while True:
                        n = r.raw.readinto(view)
                        if not n:
                            break
                        f.write(view[:n])
            # The second pass the chunksums design exists to avoid.
            _check(blob, path, "single+sha256")
    return {}


def _run_curl(spec: dict) -> dict:
    for blob in spec["blobs"]:
        path = _out_path(spec, blob)
        cmd = ["curl", "-s", "-S", "-f", "-L", "-o", path, blob["url"]]
        if not spec["verify_tls"]:
            cmd.insert(1, "-k")
        code, text = _run_tool(cmd)
        if code:
            raise MethodError(f"curl exited {code}: {text[:300]}")
        # sha256sum's stdout and stderr share the file: its output is one line on success.
        code, text = _run_tool(["sha256sum", path])
        if code:
            raise MethodError(f"sha256sum exited {code}: {text[:300]}")
        _check(blob, path, "curl+sha256sum", got_hex=text.split()[0])
    return {}


def _run_skopeo(spec: dict) -> dict:
    """``skopeo copy docker://… dir:…``: the image (manifest, config, layers), each blob verified as it streams."""
    scheme, sep, rest = spec["name"].partition("://")
    if not sep:
        scheme, rest = "https", spec["name"]
    dest = os.path.join(spec["out_dir"], "skopeo")
    cmd = ["skopeo", "--insecure-policy", "copy", f"docker://{rest}", f"dir:{dest}"]
    if scheme != "https" or not spec["verify_tls"]:
        cmd.insert(3, "--src-tls-verify=false")  # plain http (or an unverified https) registry
    code, text = _run_tool(cmd)
    if code:
        raise MethodError(f"skopeo exited {code}: {text[:300]}")
    for blob in spec["blobs"]:  # dir: names blobs by hex; the harness checks them under sha256-<hex>
        os.replace(os.path.join(dest, blob["digest"].partition(":")[2]), _out_path(spec, blob))
    return {}


def _run_threads(spec: dict, *, direct: bool = False) -> dict:
    # By path, not "import chunkpull.bench.baselines": that would import
    # the package, and its imports would count in this baseline's RSS.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines.py")
    module_spec = importlib.util.spec_from_file_location("chunkpull_baselines", path)
    baseline = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(baseline)
    pull_threads = baseline.pull_threads

    for blob in spec["blobs"]:
        pull_threads(
            blob["url"],
            blob["chunksums_url"],
            blob["size"],
            blob["digest"].partition(":")[2],
            _out_path(spec, blob),
            streams=spec["streams"],
            check_chunks=spec["verify"] == "chunks",
            chunk_size=spec["chunk_size"],
            verify_tls=spec["verify_tls"],
            direct=direct,
        )
    return {}


def _run_aria2c(spec: dict) -> dict:
    if len(spec["blobs"]) > 1:
        return _run_aria2c_many(spec)
    for blob in spec["blobs"]:
        path = _out_path(spec, blob)
        cmd = [
            "aria2c", "-x16", "-s16", "-k8M",
            f"--checksum=sha-256={blob['digest'].partition(':')[2]}",
            # Output control only: no progress, no renaming, no .aria2 control file left behind.
            "--quiet=true", "--allow-overwrite=true", "--auto-file-renaming=false",
            "-d", os.path.dirname(path), "-o", os.path.basename(path), blob["url"],
        ]
        if not spec["verify_tls"]:
            cmd.insert(1, "--check-certificate=false")
        code, text = _run_tool(cmd)
        if code:
            # aria2c exits 32 on a checksum mismatch.
            raise MethodError(f"aria2c exited {code}: {text[:300]}")
    return {}


def _run_aria2c_many(spec: dict) -> dict:
    """Many blobs: one aria2c with an input file and 16 downloads at once (-j16), each checked by its SHA-256."""
    listing = os.path.join(spec["out_dir"], "aria2c-input.txt")
    os.makedirs(spec["out_dir"], exist_ok=True)
    with open(listing, "w") as f:
        for blob in spec["blobs"]:
            path = _out_path(spec, blob)
            f.write(f"{blob['url']}\n  out={os.path.basename(path)}\n  checksum=sha-256={blob['digest'].partition(':')[2]}\n")
    cmd = ["aria2c", "-j16", "-x1", "--quiet=true", "--allow-overwrite=true", "--auto-file-renaming=false",
           "-d", spec["out_dir"], "-i", listing]
    if not spec["verify_tls"]:
        cmd.insert(1, "--check-certificate=false")
    code, text = _run_tool(cmd)
    os.unlink(listing)
    if code:
        raise MethodError(f"aria2c exited {code}: {text[:300]}")
    return {}


def _run_hf_transfer(spec: dict, *, verify: bool = True) -> dict:
    import hf_transfer

    for blob in spec["blobs"]:
        path = _out_path(spec, blob)
        if blob["size"] == 0:
            open(path, "wb").close()  # hf_transfer asks for a range of an empty body
        else:
            hf_transfer.download(blob["url"], path, max_files=spec["streams"], chunk_size=spec["chunk_size"])
        if verify:
            # hf_transfer verifies nothing; this pass is what makes it comparable.
            _check(blob, path, "hf_transfer")
    return {}


def _run_hf_transfer_raw(spec: dict) -> dict:
    # Unverified, as hf_transfer is used in practice: the fastest tool with
    # no integrity check at all (the parent checks the file after timing).
    return _run_hf_transfer(spec, verify=False)


# --------------------------------------------------------------------------
# chunkpull
# --------------------------------------------------------------------------


class _RequestLog:
    """Record each HTTP request's start, first byte (response headers) and end.

    Installed as the ``Transport.observer`` of the measured ``Registry``:
    both data paths report there (blob ranges over chunkpull's own
    connections, manifests and chunk lists over requests), so the timed pull
    is the one users run.  A redirected request counts both hosts.
    """

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self._lock = threading.Lock()

    def record(self, t) -> None:
        """Take one ``engine.observe.RequestTiming``."""
        hosts = [urlsplit(t.url).netloc]
        if urlsplit(t.answered).netloc != hosts[0]:
            hosts.append(urlsplit(t.answered).netloc)
        entry = {
            "start": t.start,
            "first": t.first,
            "end": t.end,
            "status": t.status,
            "ranged": t.ranged,
            "blob": "/blobs/" in t.url or t.ranged,
            "hosts": hosts,
            "blob_related": any(part in u for u in (t.url, t.answered) for part in ("/blobs/", "/chunksums/")),
        }
        with self._lock:
            self.entries.append(entry)

    def summary(self, t0: float, registry_host: str = "", blob_count: int = 0) -> dict:
        """Return time to first blob byte (from t0), per-chunk latency percentiles in ms, and round trips per blob.

        ``registry_round_trips_per_blob`` counts the blob-related requests
        (chunksums, ranges, and the registry hop of a redirected range) that
        reached ``registry_host``, divided by the blobs pulled: with a CDN
        front, bytes should come from the target, not through the registry.
        """
        with self._lock:
            entries = list(self.entries)
        to_registry = sum(e["hosts"].count(registry_host) for e in entries if e["blob_related"])
        to_others = sum(len(e["hosts"]) - e["hosts"].count(registry_host) for e in entries if e["blob_related"])
        blob = [e for e in entries if e["blob"] and e["status"] in (200, 206)]
        chunks = sorted((e["end"] - e["start"]) * 1e3 for e in blob if e["end"] is not None)
        ttfbs = sorted((e["first"] - e["start"]) * 1e3 for e in blob)
        return {
            "requests": len(entries),
            "ttfb_ms": (min(e["first"] for e in blob) - t0) * 1e3 if blob else None,
            "request_ttfb_p50_ms": percentile(ttfbs, 50),
            "chunk_p50_ms": percentile(chunks, 50),
            "chunk_p90_ms": percentile(chunks, 90),
            "chunk_p99_ms": percentile(chunks, 99),
            "chunks": len(chunks),
            "registry_round_trips_per_blob": to_registry / blob_count if blob_count else None,
            "target_requests_per_blob": to_others / blob_count if blob_count else None,
        }


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Return the p-th percentile of already sorted values (linear interpolation), or None if empty."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _prepare_chunkpull(spec: dict):
    """Import and build everything before the timed region; return the pull to time."""
    from chunkpull.registry import PullReport, Registry, Tuning
    from chunkpull.store.cache import DiskCache

    if spec.get("progress"):
        # Only then: the CLI's imports would count in a quiet run's RSS.
        from chunkpull.display import pull_with_progress

    log = _RequestLog() if spec.get("instrument") else None
    registry = Registry(
        DiskCache(spec["models_dir"], fsync=spec.get("fsync", True)),
        max_streams=spec["streams"],
        verify=spec["verify"],
        tuning=Tuning(chunking_threshold=spec["threshold"]) if spec.get("threshold") is not None else None,
        mirrors=spec.get("mirrors") or None,
    )
    if log is not None:
        registry.transport.observer = log.record
    report = PullReport()

    def run(t0: float) -> dict:
        try:
            if spec.get("progress"):
                # chunkpull pull's display, on the stderr the harness handed down.
                pull_with_progress(registry, spec["name"], spec.get("label", "chunkpull"), quiet=False, stream=sys.stderr, report=report)
            else:
                registry.pull(spec["name"], report=report)
        finally:
            registry.close()
        extra = {"sources": report.to_json()} if len(report.sources) > 1 else {}
        if log is None:
            return extra
        host = urlsplit(spec["blobs"][0]["url"]).netloc if spec["blobs"] else ""
        return {"latency": log.summary(t0, host, len(spec["blobs"])), **extra}

    return run


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

_RUNNERS = {
    "single+sha256": _run_single,
    "curl+sha256sum": _run_curl,
    "python-threads": _run_threads,
    "python-threads-direct": lambda spec: _run_threads(spec, direct=True),
    "aria2c": _run_aria2c,
    "hf_transfer": _run_hf_transfer,
    "hf_transfer-raw": _run_hf_transfer_raw,
    "skopeo": _run_skopeo,
}


def _durable(spec: dict, extra: dict | None) -> dict | None:
    """fsync a baseline's files on its clock (unless asked not to): chunkpull fsyncs each blob before its commit, and a
    baseline timed with its bytes still in the page cache would be timed on an easier job (memory speed, not disk)."""
    if spec.get("fsync", True):
        fsync_tree(spec["out_dir"])
    return extra


def fsync_tree(top: str | os.PathLike[str]) -> None:
    """fsync every file under top, and the directories that hold them."""
    for root, _dirs, files in os.walk(top):
        for path in [*(os.path.join(root, name) for name in files), root]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def measure(spec: dict) -> dict:
    """Run the spec's method once and return the result record (never raises for a failed pull)."""
    method = spec["method"]
    if method not in METHODS:
        return {"ok": False, "error": f"unknown method {method!r}"}
    try:
        if method == "chunkpull":
            timed = _prepare_chunkpull(spec)
        else:
            runner = _RUNNERS[method]
            timed = lambda t0: _durable(spec, runner(spec))
    except Exception as err:  # noqa: BLE001 - reported in the result, not as a traceback
        return {"ok": False, "error": f"setup failed: {type(err).__name__}: {err}"}
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    error = None
    extra: dict = {}
    try:
        extra = timed(t0) or {}
    except Exception as err:  # noqa: BLE001 - a failed run is a result too
        error = f"{type(err).__name__}: {err}"
        if os.environ.get("CHUNKPULL_BENCH_DEBUG"):
            traceback.print_exc()
    wall = time.perf_counter() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if method in EXTERNAL_METHODS:
        rss_kib = _tool_peak_kib
    else:
        # ru_maxrss (KiB on Linux) only where /proc is missing: see the module docstring.
        rss_kib = peak_rss_kib() or self1.ru_maxrss
    return {
        "ok": error is None,
        "error": error,
        "wall_s": wall,
        "user_s": (self1.ru_utime - self0.ru_utime) + (kids1.ru_utime - kids0.ru_utime),
        "sys_s": (self1.ru_stime - self0.ru_stime) + (kids1.ru_stime - kids0.ru_stime),
        "peak_rss_kib": rss_kib,
        "bytes": sum(b["size"] for b in spec["blobs"]),
        "pid": os.getpid(),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the spec file argv[0] and write its result file; exit 0 if the pull succeeded."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m chunkpull.bench.child SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    result = measure(spec)
    tmp = spec["result"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, spec["result"])  # the parent never reads half a result
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------
# The parent's half
# --------------------------------------------------------------------------

# A baseline runs this file as a plain script, outside the chunkpull package,
# so that its process never imports chunkpull and its peak RSS is its own.
# (-c keeps the script's directory off sys.path.)
_RUN_FILE = "import runpy, sys; path = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(path, run_name='__main__')"
_RESULT_FIELDS = ("wall_s", "user_s", "sys_s", "peak_rss_kib", "bytes")


def child_env() -> dict[str, str]:
    """Return the environment for child processes: ours, with chunkpull's package importable and its bytecode written."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from .bytecode import compile_package  # the parent's half runs inside the package

    compile_package(os.path.join(here, "chunkpull"))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(spec: dict, workdir: str | os.PathLike[str], *, timeout_s: float | None = None) -> dict:
    """Run one measurement in a fresh child process and return its result record.

    The child inherits stderr (for the progress display); it has no stdin
    and its stdout is discarded, so nothing it prints reaches a ``--json``
    document.  A run that outlives ``timeout_s`` is killed and reported as
    failed.
    """
    spec = dict(spec, result=os.path.join(workdir, "result.json"))
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    if spec["method"] == "chunkpull":
        cmd = [sys.executable, "-m", "chunkpull.bench.child", spec_path]
    else:
        cmd = [sys.executable, "-c", _RUN_FILE, os.path.abspath(__file__), spec_path]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=child_env(), start_new_session=True)
    try:
        returncode = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return {"ok": False, "error": f"killed after {timeout_s:g} s"}
    except BaseException:
        _kill(proc)
        raise
    return read_child_result(spec["result"], returncode)


def _kill(proc: subprocess.Popen) -> None:
    # The child leads its own session: this also stops curl or aria2c under it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def read_child_result(path: str | os.PathLike[str], returncode: int | None = None) -> dict:
    """Return a child's result record, or a failed one saying what went wrong.

    A successful record carries ``wall_s``, ``user_s``, ``sys_s``,
    ``peak_rss_kib`` and ``bytes`` as non-negative numbers; a record that
    lacks any of them, a file that is not JSON, or no file at all (the child
    crashed) becomes ``{"ok": False, "error": ...}``.  Never raises.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {"ok": False, "error": f"the run exited with status {returncode} and wrote no result"}
    try:
        record = json.loads(text)
    except ValueError:
        return {"ok": False, "error": f"unreadable result from the run: {text[:200]!r}"}
    if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        return {"ok": False, "error": f"malformed result from the run: {text[:200]!r}"}
    if not record["ok"]:
        record.setdefault("error", "failed")
        return record
    for key in _RESULT_FIELDS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            return {"ok": False, "error": f"result from the run lacks a valid {key!r}"}
    if record["wall_s"] <= 0:
        return {"ok": False, "error": "result from the run has no elapsed time"}
    return record


if __name__ == "__main__":
    sys.exit(main())
