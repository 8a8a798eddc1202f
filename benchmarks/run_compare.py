"""Run every measurement the README cites and write them into ``benchmarks/RESULTS.md`` and the README.

Usage (from a source checkout with chunkpull installed, as root for the
caches-dropped protocol, on a quiet machine)::

    python benchmarks/run_compare.py                  # everything: ~15 minutes on 2 cores
    python benchmarks/run_compare.py --quick          # 64 MiB, one run each: an end-to-end check
    python benchmarks/run_compare.py --render-only    # re-render from benchmarks/results/*.json

Each *section* is one ``chunkpull bench ... --json`` run in a process of its
own (so that environment settings such as ``CHUNKPULL_IO`` and
``CHUNKPULL_BACKEND`` apply to it alone); its raw JSON document is kept in
``benchmarks/results/<section>.json``.  ``RESULTS.md`` is then rendered from
those documents alone: the machine, the exact commands, every table.  The
README's block between ``<!-- results:begin -->`` and ``<!-- results:end -->``
is rendered from the same documents, so no figure in either file is typed
by hand.  Nothing fails on speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
DEFAULT_OUT = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclasses.dataclass(frozen=True)
class Section:
    key: str
    title: str
    what: str  # one sentence: what the section shows
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    big: bool = False  # the 4 GiB comparison (the rest are 1 GiB)


SECTIONS = (
    Section("compare", "Side by side, back to back",
            "every method pulls the same blob in turn; the machine's memory holds the previous runs' pages.",
            ("--compare", "--repeat", "3", "--streams", "auto,8"), big=True),
    Section("compare-dropped", "Side by side, caches dropped",
            "the same, but the page cache is emptied before every run (the served blob is read back in first), "
            "so each run starts with free memory, as on a freshly booted node.",
            ("--compare", "--repeat", "3", "--streams", "auto,8", "--drop-caches"), big=True),
    Section("streams", "Streams", "chunkpull at 1 to 32 streams, and adaptive (auto), over bare loopback.",
            ("--repeat", "3", "--streams", "1,2,4,8,16,32,auto")),
    Section("verify", "Verification modes", "`--verify blob` (one SHA-256 pass) against `chunks` (a second pass over every chunk).",
            ("--repeat", "3", "--verify", "blob,chunks")),
    Section("verify-blake3", "Verification modes, BLAKE3 chunk digests", "the same with a registry serving `blake3:` chunk digests.",
            ("--repeat", "3", "--verify", "blob,chunks", "--chunk-digest", "blake3")),
    Section("io-direct", "Writes with O_DIRECT", "`CHUNKPULL_IO=direct`, back to back.", ("--repeat", "3"), (("CHUNKPULL_IO", "direct"),)),
    Section("io-buffered", "Writes through the page cache", "`CHUNKPULL_IO=buffered`, back to back.", ("--repeat", "3"), (("CHUNKPULL_IO", "buffered"),)),
    Section("io-direct-dropped", "Writes with O_DIRECT, caches dropped", "`CHUNKPULL_IO=direct`, free memory before every run.",
            ("--repeat", "3", "--drop-caches"), (("CHUNKPULL_IO", "direct"),)),
    Section("io-buffered-dropped", "Writes through the page cache, caches dropped", "`CHUNKPULL_IO=buffered`, free memory before every run.",
            ("--repeat", "3", "--drop-caches"), (("CHUNKPULL_IO", "buffered"),)),
    Section("backend-native", "Native backend", "`CHUNKPULL_BACKEND=native`: the Cython kernels.", ("--repeat", "3"), (("CHUNKPULL_BACKEND", "native"),)),
    Section("backend-python", "Pure-Python backend", "`CHUNKPULL_BACKEND=python`: hashlib and os.pwrite.", ("--repeat", "3"), (("CHUNKPULL_BACKEND", "python"),)),
)


def bench_command(section: Section, *, quick: bool) -> list[str]:
    size = "64M" if quick else ("4G" if section.big else "1G")
    args = list(section.args)
    if quick:
        args = [a if prev != "--repeat" else "1" for prev, a in zip([None, *args], args)]
    return ["chunkpull", "bench", "--size", size, *args]


def run_section(section: Section, *, quick: bool) -> dict:
    """Run one section's ``chunkpull bench --json`` in its own process; return its JSON document."""
    cmd = bench_command(section, quick=quick)
    env = {**os.environ, **dict(section.env)}
    print(f"run_compare: {' '.join(f'{k}={v}' for k, v in section.env)} {shlex.join(cmd)}".strip(), file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, "-m", "chunkpull", *cmd[1:], "--json", "-q"], env=env, stdout=subprocess.PIPE, text=True, check=False)
    if not r.stdout.strip():
        raise SystemExit(f"run_compare: section {section.key} produced no report (exit {r.returncode})")
    doc = json.loads(r.stdout)
    doc["command"] = " ".join([*(f"{k}={v}" for k, v in section.env), shlex.join(cmd)])
    return doc


CDN_FRONT = "cdn-front"  # benchmarks/cdn_front.py: docker-registry redirecting to nginx, against python-threads, skopeo and curl
CDN_BASELINES = "python-threads,skopeo,curl+sha256sum"


def run_cdn_front(results: Path, *, quick: bool) -> None:
    """Run ``benchmarks/cdn_front.py`` (4 GiB from nginx behind a redirecting front) into results/cdn-front.json."""
    sys.path.insert(0, str(HERE))
    import cdn_front

    size, repeat = (64 << 20, 1) if quick else (4 << 30, 3)
    print(f"run_compare: python benchmarks/cdn_front.py --size {size} --repeat {repeat} --baselines {CDN_BASELINES}", file=sys.stderr, flush=True)
    doc = cdn_front.run(size, repeat, baselines=CDN_BASELINES)
    (results / f"{CDN_FRONT}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def cdn_front_line(doc: dict) -> str | None:
    """One summary line: chunkpull behind the redirecting front, its registry round trips, and the two baselines."""
    me = _row(doc, "chunkpull")
    if not me or not me["gbps"]:
        return None
    others = [f"{r['method'].replace('curl+sha256sum', 'curl -L | sha256sum')} {r['gbps']:.2f} GB/s, {_cpu_per_gb(doc, r):.2f} CPU-s/GB ({r['ratio']:.2f}x)"
              for r in _rows(doc) if r["method"] != "chunkpull" and r["gbps"] and r["ratio"]]
    rt = me.get("registry_round_trips_per_blob")
    rss = f", peak RSS {me['peak_rss_mib']:.0f} MiB" if me.get("peak_rss_mib") else ""
    return (f"from nginx behind a redirecting front (docker-registry answering blob GETs with 307; {doc['settings']['model'].split(',')[0]}, "
            f"{doc['settings']['bytes'] / 2**30:.2f} GiB, default streams): chunkpull {me['gbps']:.2f} GB/s, {_cpu_per_gb(doc, me):.2f} CPU-s/GB{rss}"
            + (f", {rt:.1f} registry round trips per blob" if rt is not None else "") + (f"; {', '.join(others)}" if others else ""))


FLEET = "fleet"  # benchmarks/measure_fleet.py: mirrors, a pull-through cache, bulk pulls, the rate cap


def run_fleet(results: Path, *, quick: bool) -> None:
    cmd = [sys.executable, str(HERE / "measure_fleet.py"), "--out", str(results / f"{FLEET}.json")] + (["--quick"] if quick else [])
    print(f"run_compare: {shlex.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def fleet_lines(doc: dict) -> list[str]:
    """The Fleets section: mirrors with a liar, a pull-through cache cold and warm, bulk pulls, the rate cap."""
    out = [f"    {doc['command']}", ""]
    m = doc["mirrors"]
    out += [f"A {m['size'] / 2**30:.2f} GiB model ({m['chunks']} chunks of 8 MiB); the origin is throttled to "
            f"{m['origin_bps_per_connection'] / 2**20:.0f} MiB/s per connection; one mirror corrupts every chunk, one is healthy.", "",
            "| pull | GB/s | source | bytes | chunks | chunks refused | dropped |", "|---|---|---|---|---|---|---|"]
    for label, key in (("origin only", "origin_only"), ("origin + 2 mirrors", "with_mirrors")):
        run = m[key]
        for n, src in enumerate(run["sources"]):
            first = n == 0  # the pull's label and rate on its first line only
            out.append(f"| {label if first else ''} | {f'{run_gbps:.3f}' if first and (run_gbps := run['gbps']) else ''} | {src['role']} | "
                       f"{_mb(src['bytes'])} | {src['chunks']} | {src['refused_chunks']} | {src['demoted'] or ''} |")
    pt = doc.get("pull_through")
    if pt:
        out += ["", f"docker-registry in `proxy:` mode as the mirror of another docker-registry; {pt['size'] / 2**30:.2f} GiB layer.", "",
                "| pull | GB/s | bytes the origin served | from the origin (chunkpull) | from the cache (chunkpull) | cache dropped |",
                "|---|---|---|---|---|---|"]
        for phase in ("cold", "warm"):
            run = pt[phase]
            origin = next((s for s in run["sources"] if s["origin"]), {})
            cache = next((s for s in run["sources"] if not s["origin"]), {})
            out.append(f"| {phase} | {run['gbps']:.3f} | {_mb(run['origin_served_bytes'])} | {_mb(origin.get('bytes'))} | "
                       f"{_mb(cache.get('bytes'))} | {cache.get('demoted') or ''} |")
    b = doc["bulk"]
    out += ["", f"Bulk: {b['models']} models sharing a base layer, one `chunkpull pull` ({b['elapsed_s']:.2f} s): "
            f"{_mb(b['listed_bytes'])} listed in their manifests, {_mb(b['unique_bytes'])} unique, {_mb(b['fetched_bytes'])} fetched."]
    r = doc["rate_cap"]
    out += ["", f"Rate cap: `--limit-rate {r['target_bps'] // 2**20}M` on a {r['size'] / 2**20:.0f} MiB pull: "
            f"{r['measured_bps'] / 2**20:.1f} MiB/s measured (fetched bytes over the pull's wall time, resolve included), "
            f"{r['measured_bps'] / r['target_bps']:.2f} of the cap."]
    return out


def run_kernels(results: Path, *, quick: bool) -> None:
    """Run ``benchmarks/bench_hashio.py`` (native against hashlib + os.pwrite) into results/kernels.json."""
    out = results / "kernels.json"
    cmd = [sys.executable, "-m", "pytest", str(HERE / "bench_hashio.py"), "-q", "-p", "no:cacheprovider", f"--benchmark-json={out}"]
    if quick:
        cmd += ["-k", "1t"]
    print(f"run_compare: {shlex.join(cmd[2:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=HERE.parent, check=True, stdout=subprocess.DEVNULL)


def kernel_lines(doc: dict) -> list[str]:
    """Return the kernel table: MiB/s per backend and the native/python ratio, per case."""
    rates: dict[tuple, dict[str, float]] = {}
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        if "mib_s" in info:
            rates.setdefault((info["algorithm"], info["size"], info["threads"]), {})[info["kernel_backend"]] = info["mib_s"]
    out = ["| algorithm | buffers | threads | python MiB/s | native MiB/s | native x |", "|---|---|---|---|---|---|"]
    for (alg, size, threads), r in sorted(rates.items()):
        if "python" in r and "native" in r:
            out.append(f"| {alg} | {size} | {threads} | {r['python']:.0f} | {r['native']:.0f} | {r['native'] / r['python']:.2f}x |")
    return out


# -- rendering -----------------------------------------------------------------


def _report(doc: dict):
    from chunkpull.bench.report import Report, Row

    return Report(doc["machine"], doc["settings"], doc["runs"], [Row(**r) for r in doc["rows"]], doc["skipped"])


def markdown_table(doc: dict) -> str:
    from chunkpull.bench.report import footnotes, table_cells

    report = _report(doc)
    head, *body = table_cells(report)
    esc = lambda cell: cell.replace("|", "\\|")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    return "\n".join(out + [""] + footnotes(report))


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\d+\.\d+(?:\.\d+)?", out.splitlines()[0]) if out.strip() else None
    return m.group(0) if m else None


def machine_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    try:
        flags = next((line for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace") if line.startswith("flags")), "")
    except OSError:
        flags = ""
    hf = importlib.metadata.version("hf_transfer") if importlib.util.find_spec("hf_transfer") else "absent"
    return [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu_model']} ({'SHA-NI' if 'sha_ni' in flags.split() else 'no SHA-NI'}) |",
        f"| cores | {m['cpu_count']} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| kernel | {m['kernel']} |",
        f"| Python | {m['python']} |",
        f"| chunkpull | {m['chunkpull']} |",
        f"| tools | curl {_tool_version(['curl', '--version']) or 'absent'}; aria2c {_tool_version(['aria2c', '--version']) or 'absent'}; hf_transfer {hf} |",
        f"| date (UTC) | {m['date']} |",
    ]


def _rows(doc: dict) -> list[dict]:
    return doc["rows"]


def _row(doc: dict, method: str, **match) -> dict | None:
    return next((r for r in _rows(doc) if r["method"] == method and all(r.get(k) == v for k, v in match.items()) and r["gbps"]), None)


def _cpu_per_gb(doc: dict, row: dict) -> float:
    return row["cpu_s"] / (doc["settings"]["bytes"] / 1e9)


def wan_line(wan: dict) -> str | None:
    """One summary line: efficiency on each WAN path, chunkpull's default against the other contenders."""
    names = {c["contender"] for p in wan["paths"] for c in p["contenders"]}
    if "chunkpull" not in names:
        return None

    def effs(name: str) -> str:
        cells = []
        for p in wan["paths"]:
            c = next((c for c in p["contenders"] if c["contender"] == name), None)
            cells.append(f"{p['key']} {c['efficiency']:.2f}" if c and c.get("efficiency") else f"{p['key']} -")
        return ", ".join(cells)

    others = [n for n in ("chunkpull-8", "chunkpull-16", "hf_transfer", "aria2c", "curl+openssl") if n in names]
    label = {"hf_transfer": "hf_transfer + SHA-256 pass", "aria2c": "aria2c --checksum", "chunkpull-8": "chunkpull --streams 8",
             "chunkpull-16": "chunkpull --streams 16"}
    return ("WAN paths (`benchmarks/wan_bench.py`, 1 GiB through a shaped link; efficiency = ideal time at the link rate / measured): "
            f"chunkpull's default {effs('chunkpull')}; " + "; ".join(f"{label.get(n, n)} {effs(n)}" for n in others))


def api_line(doc: dict) -> str | None:
    """One summary line: the API path's time over the CLI's on the same pull."""
    s = doc["summary"]
    if not s.get("api_over_cli_pull"):
        return None
    return (f"API path (`benchmarks/api_vs_cli.py`, {doc['size'] / 2**30:.2f} GiB, medians of {doc['repeat']}): `POST /api/pull` through "
            f"`chunkpull serve` {s['api_s']:.2f} s, {s['api_cpu_s']:.2f} CPU-s; `chunkpull pull` {s['cli_pull_s']:.2f} s as it measures "
            f"the pull ({s['cli_wall_s']:.2f} s with start-up), {s['cli_cpu_s']:.2f} CPU-s; API over CLI {s['api_over_cli_pull']:.2f}x "
            f"({s['api_over_cli_wall']:.2f}x of the CLI's wall time)")


def summary_lines(docs: dict[str, dict], kernels: dict | None = None, wan: dict | None = None, api: dict | None = None) -> list[str]:
    """Return the README's block: the headline comparison in both memory protocols, then the tuning figures."""
    out: list[str] = []
    compare = [(k, docs[k]) for k in ("compare", "compare-dropped") if k in docs]
    if compare:
        out += ["| method | back to back: GB/s | CPU s/GB | chunkpull x | caches dropped: GB/s | CPU s/GB | chunkpull x | peak RSS MiB | verified |",
                "|---|---|---|---|---|---|---|---|---|"]
        first = compare[0][1]
        for r in _rows(first):
            if not r["gbps"]:
                continue
            streams = r["streams"] if r["streams"] or r["method"] != "chunkpull" else "auto"
            cells = [f"{r['method']}" + (f", {streams} streams" if streams and r["method"] not in ("single+sha256", "curl+sha256sum") else "")]
            for _key, doc in compare:
                same = _row(doc, r["method"], streams=r["streams"], verify=r["verify"])
                if same is None:
                    cells += ["-", "-", "-"]
                    continue
                cells += [f"{same['gbps']:.2f}", f"{_cpu_per_gb(doc, same):.2f}", f"{same['ratio']:.2f}x" if same["ratio"] else ""]
            verified = {"blob": "whole-blob SHA-256, while downloading", "chunks": "every chunk and the whole blob",
                        "after": "a SHA-256 pass after", "none": "**no**"}[r["verify"]]
            cells += [f"{r['peak_rss_mib']:.0f}", verified]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"{first['settings']['model']}; medians of {first['settings']['repeat']}; chunkpull x = chunkpull's GB/s over the row's "
                   "(the python-threads rows against chunkpull at the same streams, the others against chunkpull's default, auto).")
        out.append("")

    def line(key: str, label: str, method: str = "chunkpull", **match) -> str | None:
        doc = docs.get(key)
        row = doc and _row(doc, method, **match)
        return f"{label} {row['gbps']:.2f} GB/s, {_cpu_per_gb(doc, row):.2f} CPU-s/GB" if row else None

    tuning = []
    sizes = {d["settings"]["model"] for k, d in docs.items() if not k.startswith("compare") and k != CDN_FRONT}
    if sizes:
        tuning.append(f"tuning runs: {', '.join(sorted(sizes))}; medians of 3")
    if "streams" in docs:
        parts = [f"{r['streams'] or 'auto'}: {r['gbps']:.2f}" for r in _rows(docs["streams"]) if r["gbps"]]
        tuning.append(f"streams (GB/s over bare loopback; {docs['streams']['settings']['model']}): " + ", ".join(parts))
    for key, what in (("verify", "sha256"), ("verify-blake3", "blake3")):
        a, b = line(key, "blob", verify="blob"), line(key, "chunks", verify="chunks")
        if a and b:
            tuning.append(f"verify with {what} chunk digests: {a}; {b}")
    for proto, suffix in (("back to back", ""), ("caches dropped", "-dropped")):
        a, b = line(f"io-direct{suffix}", "O_DIRECT"), line(f"io-buffered{suffix}", "page cache")
        if a and b:
            tuning.append(f"writes, {proto}: {a}; {b}")
    a, b = line("backend-native", "native"), line("backend-python", "pure Python")
    if a and b:
        tuning.append(f"backends: {a}; {b}")
    if kernels is not None:
        ratios = [line.split("|")[-2].strip() for line in kernel_lines(kernels)[2:] if line.startswith("| sha256")]
        if ratios:
            tuning.append(f"kernels (`bench_hashio.py`, SHA-256 hash+write, native over hashlib + os.pwrite): {min(ratios)} to {max(ratios)}")
    if CDN_FRONT in docs and (cdn := cdn_front_line(docs[CDN_FRONT])):
        tuning.append(cdn)
    if wan is not None and (w := wan_line(wan)):
        tuning.append(w)
    if api is not None and (a := api_line(api)):
        tuning.append(a)
    out += [f"- {t}" for t in tuning]
    return out


def render(docs: dict[str, dict], kernels: dict | None = None, fleet: dict | None = None, wan: dict | None = None,
           api: dict | None = None) -> str:
    first = next(iter(docs.values()))
    parts = [
        "# chunkpull: measured results",
        "",
        "Written by `benchmarks/run_compare.py` from the JSON documents in `benchmarks/results/`; re-run it to replace "
        "this file (nothing here is typed by hand). Each section is one `chunkpull bench` run: every measured pull is a "
        "fresh process (peak RSS and CPU are that process's own; CPU includes the kernel's time for its sockets and writes), "
        "the registry is the built-in one in another process on 127.0.0.1, methods take turns run by run.",
        "",
        "## Machine",
        "",
        *machine_lines(first),
        "",
        "## Summary (as in the README)",
        "",
        *summary_lines(docs, kernels, wan, api),
        "",
    ]
    for s in SECTIONS:
        if s.key not in docs:
            continue
        doc = docs[s.key]
        parts += [f"## {s.title}", "", s.what, "", f"    {doc['command']}", "", markdown_table(doc), ""]
    if fleet is not None:
        parts += ["## Fleets", "", *fleet_lines(fleet), ""]
    if wan is not None:
        sys.path.insert(0, str(HERE))
        import wan_bench

        parts += ["## WAN paths", "", *wan_bench.render_markdown(wan), ""]
    if api is not None:
        parts += ["## The API path against the CLI", "", api_section_what(), "", f"    {api['command']}", "", *api_lines(api), ""]
    if CDN_FRONT in docs:
        doc = docs[CDN_FRONT]
        parts += [
            "## Behind a redirecting front", "",
            "Debian's docker-registry (CNCF distribution) with its `redirect` storage middleware answers every blob GET with a 307 "
            "to nginx, which serves the registry's files (as a CDN serves a registry's object store). One OCI image with one "
            "pseudo-random layer; chunkpull, the `python-threads` baseline, `skopeo copy docker://… dir:…` and `curl -L | sha256sum` take turns. "
            "`registry RT/blob` counts chunkpull's blob requests that reached the registry itself.", "",
            f"    {doc['command']}", "", markdown_table(doc), "",
        ]
    if kernels is not None:
        parts += [
            "## Kernels", "",
            "`benchmarks/bench_hashio.py`: 64 MiB hashed and written per round at disjoint offsets of one file, native "
            "(the Cython kernels) against the pure-Python twin (hashlib + os.pwrite) in the same threads. SHA-256 is "
            "`sha256_update_pwrite` (a fused hash+write pass on native); `piece` reuses one 4 MiB buffer per thread "
            "(cache-hot), `chunk` cycles 8 MiB chunks through a 64 MiB working set per thread (from RAM).", "",
            "    python -m pytest benchmarks/bench_hashio.py", "",
            *kernel_lines(kernels), "",
        ]
    return "\n".join(parts)


def api_section_what() -> str:
    return ("The same model from the built-in registry, methods taking turns, every blob fetched each run: `api` is "
            "`POST /api/pull` to one long-running `chunkpull serve` (warmed by an untimed pull; the model deleted through "
            "`/api/delete` before each run; timed from the request to the `success` line; CPU is the server's over the "
            "request), `cli` is `chunkpull pull --json` into an empty models directory in a fresh process (`pull s` is its "
            "own measure of the pull, `wall s` adds the interpreter's start-up; CPU is the process's).")


def api_lines(doc: dict) -> list[str]:
    out = ["| run | method | pull s | wall s | CPU-s | ok |", "|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        wall = f"{r['wall_s']:.2f}" if r.get("wall_s") is not None else "-"
        took = f"{r['time_s']:.2f}" if r.get("time_s") is not None else "-"
        out.append(f"| {r['rep'] + 1} | {r['method']} | {took} | {wall} | {r['cpu_s']:.2f} | {'yes' if r['ok'] else '**no**'} |")
    if (line := api_line(doc)) is not None:
        out += ["", line + "."]
    return out


def update_readme(docs: dict[str, dict], path: Path = README, kernels: dict | None = None, wan: dict | None = None,
                  api: dict | None = None) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"run_compare: {path} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = "\n".join(["", "<!-- generated by benchmarks/run_compare.py from benchmarks/results/; do not edit -->", *summary_lines(docs, kernels, wan, api), ""])
    path.write_text(head + BEGIN + block + END + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", metavar="KEY[,KEY...]", help=f"run only these sections: {', '.join(s.key for s in SECTIONS)}, kernels, {CDN_FRONT}, {FLEET}")
    p.add_argument("--quick", action="store_true", help="64 MiB, one run each, written to a scratch directory (an end-to-end check)")
    p.add_argument("--render-only", action="store_true", help="measure nothing: render from the saved JSON documents")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help=f"where the JSON documents live (default {RESULTS_DIR})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown file to write (default {DEFAULT_OUT})")
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = p.parse_args(argv)
    if args.quick and args.results == RESULTS_DIR:
        raise SystemExit("run_compare: --quick needs --results DIR (and --out FILE): its figures must not replace the real ones")
    only = set(args.only.split(",")) if args.only else {s.key for s in SECTIONS} | {"kernels", CDN_FRONT, FLEET}
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        for s in SECTIONS:
            if s.key in only:
                doc = run_section(s, quick=args.quick)
                (args.results / f"{s.key}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        if "kernels" in only:
            run_kernels(args.results, quick=args.quick)
        if CDN_FRONT in only:
            run_cdn_front(args.results, quick=args.quick)
        if FLEET in only:
            run_fleet(args.results, quick=args.quick)
    keys = [s.key for s in SECTIONS] + [CDN_FRONT]
    docs = {k: json.loads((args.results / f"{k}.json").read_text()) for k in keys if (args.results / f"{k}.json").exists()}
    if not docs:
        raise SystemExit(f"run_compare: no results in {args.results}")
    kernels_path = args.results / "kernels.json"
    kernels = json.loads(kernels_path.read_text()) if kernels_path.exists() else None
    fleet_path = args.results / f"{FLEET}.json"
    fleet = json.loads(fleet_path.read_text()) if fleet_path.exists() else None
    wan_path = args.results / "wan.json"  # benchmarks/wan_bench.py (root: its own network namespace)
    wan = json.loads(wan_path.read_text()) if wan_path.exists() else None
    api_path = args.results / "api-vs-cli.json"  # benchmarks/api_vs_cli.py
    api = json.loads(api_path.read_text()) if api_path.exists() else None
    args.out.write_text(render(docs, kernels, fleet, wan, api), encoding="utf-8")
    print(f"run_compare: wrote {args.out}", file=sys.stderr)
    if not args.no_readme and not args.quick:
        update_readme(docs, kernels=kernels, wan=wan, api=api)
        print(f"run_compare: updated {README}", file=sys.stderr)
    failed = [k for k, d in docs.items() if any(r["method"] == "chunkpull" and not (r["ok"] and r["verified"]) for r in d["runs"])]
    if failed:
        print(f"run_compare: chunkpull failed in {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
