"""The bench's report: rows and ratios folded from per-run records, the table, footnotes and plot.

Imports nothing from chunkpull but the default settings it compares at.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import statistics

from .. import _env
from .._hashio import BACKEND
from ..core.units import format_bytes
from ..testing import DEFAULT_CHUNK_SIZE

__all__ = ["Report", "Row", "aggregate", "footnotes", "format_size", "format_table", "table_cells", "write_plot"]

SCHEMA = "chunkpull-bench/1"


def format_size(n: int | None) -> str:
    """Return a size in the bench's binary shorthand ("8M", "1G"), or "-" for none."""
    if n is None:
        return "-"
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# --------------------------------------------------------------------------
# Rows and ratios
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One configuration's figures over its repeats (medians; GB/s also min and max)."""

    method: str
    streams: int | None
    chunk_size: int | None
    verify: str
    backend: str | None
    runs: int
    ok_runs: int
    gbps: float | None = None
    gbps_min: float | None = None
    gbps_max: float | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    ratio: float | None = None  # chunkpull GB/s / this row's GB/s (baselines only)
    ratio_ref: str | None = None  # which chunkpull row the ratio divides
    ttfb_ms: float | None = None
    chunk_p50_ms: float | None = None
    chunk_p90_ms: float | None = None
    chunk_p99_ms: float | None = None
    registry_round_trips_per_blob: float | None = None
    note: str = ""


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs: list[dict], *, default_streams: int = _env.DEFAULT_MAX_STREAMS, default_chunk: int = DEFAULT_CHUNK_SIZE) -> list[Row]:
    """Fold run records into one Row per configuration (in first-run order) and add the ratios."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["streams"], r["chunk_size"], r["verify"]), []).append(r)
    rows = []
    for (method, streams, chunk, verify), rs in groups.items():
        good = [r for r in rs if r["ok"] and r["verified"]]
        row = Row(method, streams, chunk, verify, BACKEND if method == "chunkpull" else None, len(rs), len(good))
        if good:
            rates = [r["gbps"] for r in good]
            row.gbps, row.gbps_min, row.gbps_max = statistics.median(rates), min(rates), max(rates)
            row.wall_s = _median([r["wall_s"] for r in good])
            row.cpu_s = _median([r["cpu_s"] for r in good])
            row.peak_rss_mib = _median([r["peak_rss_mib"] for r in good])
            lat = [r["latency"] for r in good if r.get("latency")]
            if lat:
                for key in ("ttfb_ms", "chunk_p50_ms", "chunk_p90_ms", "chunk_p99_ms", "registry_round_trips_per_blob"):
                    setattr(row, key, _median([x.get(key) for x in lat]))
        failures = [r["error"] for r in rs if not (r["ok"] and r["verified"])]
        if failures:
            row.note = f"{len(failures)} of {len(rs)} failed: {failures[0]}"
        rows.append(row)
    for row in rows:
        if row.method != "chunkpull" and row.gbps:
            ref = _reference(rows, row, default_streams, default_chunk)
            if ref is not None and ref.gbps:
                row.ratio = ref.gbps / row.gbps
                row.ratio_ref = f"chunkpull streams={ref.streams} chunk={format_size(ref.chunk_size)} verify={ref.verify}"
    return rows


def _reference(rows: list[Row], baseline: Row, default_streams: int, default_chunk: int) -> Row | None:
    """Return the chunkpull row a baseline is compared with.

    The python-threads baselines implement chunkpull's own design, so it is compared
    with chunkpull at its exact settings.  The other tools are compared
    with chunkpull's default mode: verify ``blob`` at the default stream
    count (and 8 MiB chunks when swept), else the fastest chunkpull row.
    """
    cps = [r for r in rows if r.method == "chunkpull" and r.gbps]
    if baseline.method.startswith("python-threads"):
        same = [r for r in cps if (r.streams, r.chunk_size, r.verify) == (baseline.streams, baseline.chunk_size, baseline.verify)]
        # An adaptive chunkpull row (streams 0) is compared with the baseline at the default count.
        auto = [r for r in cps if r.streams == 0 and (r.chunk_size, r.verify) == (baseline.chunk_size, baseline.verify)
                and baseline.streams == _env.DEFAULT_MAX_STREAMS]
        return (same or auto or [None])[0]
    pool = [r for r in cps if r.verify == "blob"] or cps
    if baseline.method.startswith("hf_transfer"):
        pool = [r for r in pool if r.chunk_size == baseline.chunk_size] or pool
    for want in ((default_streams, default_chunk), (default_streams, None)):
        for r in pool:
            if r.streams == want[0] and (want[1] is None or r.chunk_size == want[1]):
                return r
    return max(pool, key=lambda r: r.gbps, default=None)


@dataclasses.dataclass
class Report:
    """Everything one benchmark produced: per-run records, table rows, skipped baselines."""

    machine: dict
    settings: dict
    runs: list[dict]
    rows: list[Row]
    skipped: list[dict]

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "machine": self.machine,
            "settings": self.settings,
            "runs": self.runs,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }

    @property
    def failed(self) -> bool:
        """True when a chunkpull run failed or wrote wrong bytes."""
        return any(r["method"] == "chunkpull" and not (r["ok"] and r["verified"]) for r in self.runs)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(report: Report) -> list[list[str]]:
    """Return the result table as rows of cells, the header first (for other renderings, e.g. Markdown)."""
    rows = report.rows
    remote = any(r.ttfb_ms is not None for r in rows)
    repeat = any(r.ok_runs > 1 for r in rows)
    head = ["method", "GB/s"] + (["min-max"] if repeat else []) + ["wall s", "CPU s", "CPU s/GB", "peak RSS MiB", "streams", "chunk", "verify", "backend", "chunkpull x"]
    gb = report.settings.get("bytes", 0) / 1e9
    if remote:
        head += ["TTFB ms", "p50 ms", "p90 ms", "p99 ms", "registry RT/blob"]
    head.append("note")
    body = []
    for r in rows:
        line = [r.method, _num(r.gbps, 3)]
        if repeat:
            line.append(f"{r.gbps_min:.3f}-{r.gbps_max:.3f}" if r.gbps_min is not None else "-")
        line += [
            _num(r.wall_s, 2), _num(r.cpu_s, 2), _num(r.cpu_s / gb if r.cpu_s is not None and gb else None, 2), _num(r.peak_rss_mib, 0),
            str(r.streams) if r.streams else ("auto" if r.method == "chunkpull" else "-"), format_size(r.chunk_size), r.verify, r.backend or "-",
            f"{r.ratio:.2f}x" if r.ratio else "",
        ]
        if remote:
            line += [_num(r.ttfb_ms, 0), _num(r.chunk_p50_ms, 0), _num(r.chunk_p90_ms, 0), _num(r.chunk_p99_ms, 0), _num(r.registry_round_trips_per_blob, 1)]
        line.append(r.note)
        body.append(line)
    for s in report.skipped:
        body.append([s["method"], *["-"] * (len(head) - 2), f"skipped: {s['reason']}"])
    return [head, *body]


def format_table(report: Report) -> str:
    """Return the result table as aligned text, then its footnotes."""
    cells = table_cells(report)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    notes = footnotes(report)
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def footnotes(report: Report) -> list[str]:
    """Return the lines that say how to read the table (units, reference rows)."""
    s = report.settings
    notes = [
        (
            f"{s['model']}, {s['bytes']:,} bytes; GB/s = 10^9 bytes/s of wall time; "
            f"chunk digests {s.get('chunk_digest') or 'as served'}; backend {report.machine['backend']}; "
            f"{report.machine['cpu_count']} CPUs; {s['repeat']} run(s) per row (medians)."
        )
    ]
    refs = sorted({r.ratio_ref for r in report.rows if r.ratio_ref and not r.method.startswith("python-threads")})
    if any(r.ratio for r in report.rows):
        notes.append(
            "chunkpull x = chunkpull GB/s / baseline GB/s; python-threads(-direct) is compared with chunkpull at its own "
            "streams, chunk size and verify mode" + (f"; the others with {', '.join(refs)}." if refs else ".")
        )
    if report.rows and any(r.method != "chunkpull" for r in report.rows):
        notes.append("verify 'after' = the tool's own SHA-256 pass over the finished file (aria2c --checksum; a hashlib or sha256sum pass); "
                     "'stream' = digest checked as the bytes arrive (skopeo); 'none' = not verified at all.")
    for r in report.rows:
        runs = [x for x in report.runs if x.get("sources") and x["method"] == r.method and x["streams"] == r.streams and x["verify"] == r.verify]
        if runs:
            # Per source, summed over the row's runs.
            total: dict[str, list[int]] = {}
            for run in runs:
                for src in run["sources"]:
                    t = total.setdefault(src["source"], [0, 0, 0])
                    t[0], t[1], t[2] = t[0] + src["bytes"], t[1] + src["failures"], t[2] + src["refused_chunks"]
            parts = [f"{name} {format_bytes(b)}" + (f" ({f} failed requests, {c} chunks refused)" if f or c else "") for name, (b, f, c) in total.items()]
            notes.append(f"{r.method} streams={r.streams}: bytes by source over {len(runs)} run(s): " + "; ".join(parts) + ".")
    if any(r.registry_round_trips_per_blob is not None for r in report.rows):
        notes.append("registry RT/blob = blob requests (chunksums, ranges, the registry hop of a redirect) that reached the registry's host, per blob pulled.")
    return notes


def import_pyplot():
    """Return matplotlib.pyplot on a file-only backend, or None when matplotlib is missing."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")  # never open a window; the plot goes to a file
    return importlib.import_module("matplotlib.pyplot")


def write_plot(report: Report, path: str, plt=None) -> None:
    """Plot GB/s against streams (and against chunk size when swept) to path.

    chunkpull and python-threads are lines, one per (chunk size, verify)
    or per (streams, verify); single-point baselines are dashed levels.
    """
    plt = plt or import_pyplot()
    rows = [r for r in report.rows if r.gbps]
    chunks = sorted({r.chunk_size for r in rows if r.method == "chunkpull" and r.chunk_size})
    fig, axes = plt.subplots(1, 2 if len(chunks) > 1 else 1, figsize=(14 if len(chunks) > 1 else 7, 4.5), squeeze=False)

    def curve(ax, method, style, x, label, **match):
        pts = sorted((x(r), r.gbps) for r in rows if r.method == method and all(getattr(r, k) == v for k, v in match.items()))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)

    ax = axes[0][0]
    for method, style in (("chunkpull", "-o"), ("python-threads", "--s")):
        for chunk in chunks or [None]:
            for verify in report.settings["verify"]:
                curve(ax, method, style, lambda r: r.streams, f"{method} {format_size(chunk)} {verify}", chunk_size=chunk, verify=verify)
    for r in rows:
        if r.method not in ("chunkpull", "python-threads"):
            ax.axhline(r.gbps, linestyle=":", color="grey")
            ax.annotate(r.method, (ax.get_xlim()[0], r.gbps), fontsize=8, va="bottom")
    panels = [(ax, "streams")]
    if len(chunks) > 1:
        ax = axes[0][1]
        for streams in sorted({r.streams for r in rows if r.method == "chunkpull"}):
            for verify in report.settings["verify"]:
                curve(ax, "chunkpull", "-o", lambda r: r.chunk_size / (1 << 20), f"chunkpull {streams} streams {verify}", streams=streams, verify=verify)
        ax.set_xscale("log", base=2)
        ax.set_xticks([c / (1 << 20) for c in chunks], [format_size(c) for c in chunks])
        panels.append((ax, "chunk size"))
    for ax, against in panels:
        ax.set_ylim(bottom=0)
        ax.set_xlabel(against)
        ax.set_ylabel("GB/s")
        ax.set_title(f"throughput against {against}")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"chunkpull bench: {report.settings['model']} ({report.machine['cpu_model']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


