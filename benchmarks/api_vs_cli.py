"""Measure the API path against the CLI on the same pull (issue 12, item 5) and save benchmarks/results/api-vs-cli.json.

    python benchmarks/api_vs_cli.py [--size 1G] [--repeat 5] [--tmpdir DIR]

One model (the embedded synthetic one, ``chunkpull bench``'s) on the
built-in registry in a process of its own.  The two methods take turns, and
every run starts from an empty models directory:

- ``api``: one ``chunkpull serve`` process for the whole run, on a
  directory of its own, warmed by one untimed pull; before each run the
  model is deleted through ``DELETE /api/delete`` (its blobs go with it),
  then the clock runs from the ``POST /api/pull`` to the stream's
  ``{"status":"success"}`` line.  CPU is the server process's
  (``/proc/PID/stat``) over the request.
- ``cli``: ``chunkpull pull NAME --json`` in a fresh process.  ``pull_s`` is
  the pull as the process measured it (its summary's ``elapsed_s``: the
  same work as the API request, without the interpreter's start-up);
  ``wall_s`` includes that start-up.  CPU is the child's (``wait4``).

The ratio the issue asks for is the API's time over the CLI's ``pull_s``
(1.0 = the same; under 1.1 = within 10 %); over ``wall_s`` it is printed
too.  Nothing here asserts a speed; ``run_compare.py`` renders the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from chunkpull.bench.child import child_env
from chunkpull.bench.harness import machine_info
from chunkpull.bench.model import RegistryProcess, ensure_model
from chunkpull.core.units import parse_size

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "api-vs-cli.json"
TICKS = os.sysconf("SC_CLK_TCK")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _fsync_gone(models: Path) -> None:
    shutil.rmtree(models, ignore_errors=True)
    os.sync()  # the last run's dirty pages are not this run's to write


class Serve:
    """``chunkpull serve`` on one models directory, in a process of its own (a context manager)."""

    def __init__(self, models: Path) -> None:
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "serve", "--port", str(self.port), "--models", str(models)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())

    def __enter__(self) -> Serve:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.base + "/api/version", timeout=1).raise_for_status()
                return self
            except requests.RequestException:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("chunkpull serve did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def delete(self, ref: str) -> None:
        r = requests.delete(self.base + "/api/delete", json={"model": ref}, timeout=60)
        if r.status_code not in (200, 404):
            raise RuntimeError(f"DELETE /api/delete answered {r.status_code}: {r.text[:200]}")

    def pull(self, ref: str) -> dict:
        """One timed ``POST /api/pull``, streamed to its last line."""
        cpu0, t0 = _cpu_s(self.proc.pid), time.perf_counter()
        last = None
        with requests.post(self.base + "/api/pull", json={"model": ref, "stream": True}, stream=True, timeout=(5, 600)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line:
                    last = json.loads(line)
        elapsed = time.perf_counter() - t0
        return {"method": "api", "ok": last == {"status": "success"}, "time_s": elapsed, "cpu_s": _cpu_s(self.proc.pid) - cpu0, "last": last}


def run_cli(ref: str, models: Path) -> dict:
    """One ``chunkpull pull --json`` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "chunkpull", "pull", ref, "--models", str(models), "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = next((e for e in events if e.get("event") == "summary"), {})
    ok = proc.returncode == 0 and summary.get("failed") == 0
    return {"method": "cli", "ok": ok, "time_s": summary.get("elapsed_s"), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r["ok"] and r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="embedded model size (default 1G = 2^30 bytes)")
    p.add_argument("--repeat", type=int, default=5, help="runs per method (default 5)")
    p.add_argument("--tmpdir", type=Path, default=None, help="where the runs' models directories go (default: the system's)")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON document to write (default {OUT})")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    model = ensure_model(size)
    runs: list[dict] = []
    with RegistryProcess(model.root) as registry, tempfile.TemporaryDirectory(prefix="api-vs-cli-", dir=args.tmpdir) as tmp, \
            Serve(Path(tmp) / "served") as server:
        ref = registry.ref(model.name)
        # A server runs for long: its first pull (lazy imports, a cold pool) is not what its users wait for.
        server.pull(ref)
        for rep in range(args.repeat):
            for method in ("api", "cli") if rep % 2 == 0 else ("cli", "api"):
                if method == "api":
                    server.delete(ref)
                    os.sync()
                    record = server.pull(ref)
                else:
                    models = Path(tmp) / "models"
                    _fsync_gone(models)
                    record = run_cli(ref, models)
                record["rep"] = rep
                runs.append(record)
                print(f"api_vs_cli: [{rep + 1}/{args.repeat}] {method}: {record['time_s']:.2f} s"
                      + (f" (wall {record['wall_s']:.2f} s)" if "wall_s" in record else "") + f", {record['cpu_s']:.2f} CPU-s"
                      + ("" if record["ok"] else "  FAILED"), file=sys.stderr)
    api = [r for r in runs if r["method"] == "api"]
    cli = [r for r in runs if r["method"] == "cli"]
    summary = {"api_s": _median(api, "time_s"), "cli_pull_s": _median(cli, "time_s"), "cli_wall_s": _median(cli, "wall_s"),
               "api_cpu_s": _median(api, "cpu_s"), "cli_cpu_s": _median(cli, "cpu_s")}
    if summary["api_s"] and summary["cli_pull_s"] and summary["cli_wall_s"]:
        summary["api_over_cli_pull"] = summary["api_s"] / summary["cli_pull_s"]
        summary["api_over_cli_wall"] = summary["api_s"] / summary["cli_wall_s"]
    doc = {"command": "python benchmarks/api_vs_cli.py " + " ".join(argv if argv is not None else sys.argv[1:]), "size": size,
           "model": model.name, "tmpdir": str(args.tmpdir or tempfile.gettempdir()), "repeat": args.repeat,
           "machine": machine_info(), "runs": runs, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"api_vs_cli: {json.dumps(summary)}; wrote {args.out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
