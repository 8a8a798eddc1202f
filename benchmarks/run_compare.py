"""Run ``chunkpull bench --compare`` on a 4 GiB model and write the result into ``benchmarks/RESULTS.md``.

Usage (from a source checkout, on a quiet machine)::

    python benchmarks/run_compare.py                 # 4 GiB, default streams, writes benchmarks/RESULTS.md
    python benchmarks/run_compare.py --size 64M --out /tmp/RESULTS.md   # a quick end-to-end check

Other options are handed to ``chunkpull bench`` unchanged (for example
``--repeat 3`` or ``--streams 4,8``).  The Markdown file holds the machine
it ran on (CPU model, cores, RAM, kernel, Python, backend, date), the exact
command, the table, and each of issue 5's targets that one ``--compare``
run can show, with its measured figure.  The kernel (native against
hashlib) and the 1,000-small-layer targets come from ``bench_hashio.py``
and ``bench_pull.py``.  Nothing fails on speed: a target not met is written
down as not met.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # a source checkout without pip install

from chunkpull.bench import harness as bench
from chunkpull.bench import report as bench_report

DEFAULT_OUT = HERE / "RESULTS.md"

# (baseline method, what chunkpull must reach, issue 5's wording)
RATIO_TARGETS = [
    ("curl+sha256sum", 3.0, "curl to a file, then a SHA-256 pass"),
    ("aria2c", 4.0, "aria2c -x16 -s16 with --checksum"),
    ("hf_transfer-raw", 1.2, "hf_transfer, 8 files, unverified"),
    ("python-threads", 1.5, "plain-Python threads, same verification"),
]
RSS_TARGET_MIB = 100
GBPS_TARGET = 1.2


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/..." -> "7.88.1"; "aria2 version 1.36.0" -> "1.36.0"
    m = re.search(r"\d+\.\d+(?:\.\d+)?", out.splitlines()[0]) if out.strip() else None
    return m.group(0) if m else None


def machine_info(report: bench_report.Report) -> dict:
    """Return the report's machine record plus what only this page shows: tool versions, SHA-NI, usable cores."""
    try:
        hf_version = importlib.metadata.version("hf_transfer") if importlib.util.find_spec("hf_transfer") else None
    except importlib.metadata.PackageNotFoundError:
        hf_version = "installed"
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return {
        **report.machine,
        "cpu_affinity": affinity,
        "sha_ni": "sha_ni" in flags.split(),
        "os": platform.platform(),
        "curl": _tool_version(["curl", "--version"]),
        "aria2c": _tool_version(["aria2c", "--version"]),
        "hf_transfer": hf_version,
    }


def markdown_table(report: bench_report.Report) -> str:
    """Return ``chunkpull bench``'s table as a Markdown table, then its footnotes."""
    head, *body = bench_report.table_cells(report)
    esc = lambda cell: cell.replace("|", "\\|")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    notes = bench_report.footnotes(report)
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def _targets(report: bench_report.Report) -> list[str]:
    rows = {r.method: r for r in report.rows if r.method != "chunkpull"}
    chunkpull = [r for r in report.rows if r.method == "chunkpull" and r.gbps]
    out = ["| target | measured | met |", "|---|---|---|"]
    for method, want, text in RATIO_TARGETS:
        row = rows.get(method)
        if row is None or row.ratio is None:
            skipped = next((s["reason"] for s in report.skipped if s["method"] == method), None)
            out.append(f"| ≥ {want:g}× {text} | {'skipped: ' + skipped if skipped else 'no figure'} | - |")
        else:
            out.append(f"| ≥ {want:g}× {text} | {row.ratio:.2f}× | {'yes' if row.ratio >= want else 'no'} |")
    default = next((r for r in chunkpull if r.verify == "blob" and r.streams == report.settings["default_streams"]), None)
    default = default or (max(chunkpull, key=lambda r: r.gbps) if chunkpull else None)
    if default is not None:
        out.append(f"| peak RSS ≤ {RSS_TARGET_MIB} MiB (default streams) | {default.peak_rss_mib:.0f} MiB | {'yes' if default.peak_rss_mib <= RSS_TARGET_MIB else 'no'} |")
        out.append(f"| ≥ {GBPS_TARGET} GB/s verified (indicative) | {default.gbps:.3f} GB/s | {'yes' if default.gbps >= GBPS_TARGET else 'no'} |")
    return out


def render(report: bench_report.Report, command: str) -> str:
    """Return RESULTS.md's text for a finished report."""
    m = machine_info(report)
    machine = [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu_model']} ({'SHA-NI' if m['sha_ni'] else 'no SHA-NI'}) |",
        f"| cores | {m['cpu_count']} (usable: {m['cpu_affinity']}) |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| kernel | {m['kernel']} ({m['os']}) |",
        f"| Python | {m['python']} |",
        f"| chunkpull | {m['chunkpull']}, backend `{m['backend']}` |",
        f"| tools | curl: {m['curl'] or 'absent'}; aria2c: {m['aria2c'] or 'absent'}; hf_transfer: {m['hf_transfer'] or 'absent'} |",
        f"| date (UTC) | {m['date']} |",
    ]
    return "\n".join([
        "# chunkpull: `--compare` results",
        "",
        (
            "Written by `benchmarks/run_compare.py`; re-run it to replace this file. "
            "One run, all methods side by side on the same machine; each measured pull is a fresh process "
            "(peak RSS and CPU are that process's own), the registry is the built-in one in another process on 127.0.0.1."
        ),
        "",
        "## Machine",
        "",
        *machine,
        "",
        "## Command",
        "",
        f"    {command}",
        "",
        "## Results",
        "",
        markdown_table(report).rstrip(),
        "",
        "## Targets (issue 5) that this run shows",
        "",
        *_targets(report),
        "",
        (
            "The kernel target (native ≥ 1.2× hashlib + os.pwrite) and the 1,000 × 64 KiB target are measured by "
            "`python -m pytest benchmarks -q` (`bench_hashio.py`, `bench_pull.py`)."
        ),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other options go to chunkpull bench unchanged.")
    p.add_argument("--size", default="4G", help="model size (default 4G)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown file to write (default {DEFAULT_OUT})")
    args, rest = p.parse_known_args(argv)
    bench_args = ["--size", args.size, "--compare", *rest]
    try:
        report = bench.run_benchmark(bench.parse_options(bench_args))
    except bench.BenchError as err:
        print(f"run_compare: error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(bench_report.format_table(report))
    command = "python benchmarks/run_compare.py " + " ".join(shlex.quote(a) for a in (["--size", args.size, *rest]))
    args.out.write_text(render(report, command), encoding="utf-8")
    print(f"run_compare: wrote {args.out}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
