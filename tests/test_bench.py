"""The benchmark harness (``chunkpull.bench``): it runs end to end, reports what it measured, and never asserts speed.

Real processes and sockets on tiny models (a few MiB in 256 KiB chunks):
the harness, its registry subprocess and its per-run children all run for
real.  No figure is compared with a number; only its presence and type are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from chunkpull._hashio import BACKEND
from chunkpull.bench import harness as bench
from chunkpull.bench.baselines import pull_threads
from chunkpull.bench.child import read_child_result, run_child
from chunkpull.bench.harness import bench_main
from chunkpull.bench.model import Blob, Target
from chunkpull.bench.report import SCHEMA, Report, aggregate, format_table, write_plot

RUN_FIELDS = {"method", "backend", "cpu_count", "streams", "chunk_size", "verify", "ok", "verified", "bytes",
              "wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_mib", "gbps"}
TINY = ["--size", "4M", "--chunk-size", "256K", "-q"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch):
    # Generated models go to this test's directory, never to ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _run_json(capsys, argv: list[str]) -> dict:
    code = bench_main(argv + ["--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def _good_run(record: dict) -> None:
    missing = RUN_FIELDS - record.keys()
    assert not missing, f"record lacks {missing}: {record}"
    assert record["ok"] and record["verified"], record
    for key in ("wall_s", "cpu_s", "peak_rss_mib", "gbps"):
        assert isinstance(record[key], float) and record[key] > 0, (key, record)


# -- end to end ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_end_to_end_json(capsys, tmp_path):
    doc = _run_json(capsys, TINY + ["--streams", "1,2", "--tmpdir", str(tmp_path)])
    assert doc["schema"] == SCHEMA
    assert [(r["method"], r["streams"], r["chunk_size"], r["verify"]) for r in doc["runs"]] == [
        ("chunkpull", 1, 256 << 10, "blob"),
        ("chunkpull", 2, 256 << 10, "blob"),
    ]
    for r in doc["runs"]:
        _good_run(r)
        assert r["backend"] == BACKEND
        assert r["bytes"] == doc["settings"]["bytes"] > 4 << 20  # the layer plus its config blob
    for key in ("cpu_model", "cpu_count", "ram_gib", "kernel", "python", "backend", "date"):
        assert key in doc["machine"], key
    assert [r["method"] for r in doc["rows"]] == ["chunkpull", "chunkpull"]
    # Every temporary models directory was removed.
    assert not list(tmp_path.glob("chunkpull-bench-*"))
    # The model was generated once, under $XDG_CACHE_HOME.
    assert len(list((tmp_path / "xdg" / "chunkpull" / "bench").glob("size*"))) == 1


@pytest.mark.integration
@pytest.mark.slow
def test_compare_runs_the_always_available_baselines(capsys, tmp_path, monkeypatch):
    # As on a machine without the optional tools (CI may lack them): they are skipped with a note.
    optional = {"curl+sha256sum", "aria2c", "hf_transfer", "hf_transfer-raw"}
    real = bench._missing
    monkeypatch.setattr(bench, "_missing", lambda m: "not installed here" if m in optional else real(m))
    doc = _run_json(capsys, TINY + ["--compare", "--streams", "2", "--verify", "chunks", "--tmpdir", str(tmp_path)])
    methods = [r["method"] for r in doc["runs"]]
    assert methods == ["chunkpull", "single+sha256", "python-threads", "python-threads-direct"]
    skipped = {s["method"]: s["reason"] for s in doc["skipped"]}
    assert skipped.pop("skopeo").startswith("skopeo only reads container images")  # installed or not: not for an Ollama model
    assert skipped == dict.fromkeys(optional, "not installed here")
    for r in doc["runs"]:
        _good_run(r)  # verified: the parent re-hashed every file each method wrote
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["python-threads"]["verify"] == "chunks"
    for method in ("single+sha256", "python-threads", "python-threads-direct"):
        assert rows[method]["ratio"] > 0
        assert rows[method]["ratio_ref"] == "chunkpull streams=2 chunk=256K verify=chunks"


@pytest.mark.integration
@pytest.mark.slow
def test_table_is_printed_without_json(capsys, tmp_path):
    assert bench_main(TINY + ["--streams", "2", "--tmpdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["method", "GB/s", "wall"]
    assert lines[1].split()[0] == "chunkpull"
    assert "256K" in lines[1].split() and BACKEND in lines[1].split()


@pytest.mark.integration
def test_registry_name_adds_latency(capsys, tmp_path, upstream):
    up = upstream(sizes=[2 << 20])
    doc = _run_json(capsys, [up.ref(), "--streams", "2", "--threshold", "1M", "-q", "--tmpdir", str(tmp_path)])
    [run] = doc["runs"]
    _good_run(run)
    lat = run["latency"]
    # One ranged GET per 256 KiB chunk of the layer, and one for the config blob.
    assert lat["chunks"] == (2 << 20) // (256 << 10) + 1
    for key in ("ttfb_ms", "chunk_p50_ms", "chunk_p90_ms", "chunk_p99_ms"):
        assert lat[key] > 0, key
    assert lat["chunk_p50_ms"] <= lat["chunk_p90_ms"] <= lat["chunk_p99_ms"]
    assert doc["rows"][0]["ttfb_ms"] > 0
    assert doc["settings"]["chunk_sizes"] == [256 << 10]  # read from the registry's chunksums


@pytest.mark.integration
def test_embedded_only_options_are_refused_with_a_name(capsys, upstream):
    up = upstream(sizes=[1 << 20])
    assert bench_main([up.ref(), "--size", "4M"]) == 1
    assert "--size only apply to the embedded model" in capsys.readouterr().err


# -- the baselines' own files ------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("method", ["single+sha256", "python-threads"])
def test_baseline_child_writes_the_blob(tmp_path, upstream, method):
    from chunkpull.core.manifest import Manifest
    from chunkpull.core.names import parse_ref

    up = upstream(sizes=[3 << 20])
    m = Manifest.parse(up.manifest())
    target = Target(up.ref(), parse_ref(up.ref()).base_url, tuple(Blob(str(b.digest), b.size) for b in m.blobs()))
    (tmp_path / "out").mkdir()
    spec = {"method": method, "name": target.name, "blobs": target.blob_specs(), "out_dir": str(tmp_path / "out"),
            "models_dir": str(tmp_path / "models"), "streams": 3, "chunk_size": 256 << 10, "verify": "chunks",
            "verify_tls": True}
    result = run_child(spec, tmp_path)
    assert result["ok"], result
    assert result["bytes"] == m.size
    for b in m.blobs():
        assert (tmp_path / "out" / b.digest.filename).read_bytes() == up.blob(str(b.digest))


@pytest.mark.integration
@pytest.mark.parametrize("fsync", [True, False])
def test_a_baselines_output_is_fsynced_on_the_clock_as_a_pull_commits(tmp_path, upstream, monkeypatch, fsync):
    from chunkpull.bench import child
    from chunkpull.core.manifest import Manifest
    from chunkpull.core.names import parse_ref

    up = upstream(sizes=[1 << 20])
    m = Manifest.parse(up.manifest())
    target = Target(up.ref(), parse_ref(up.ref()).base_url, tuple(Blob(str(b.digest), b.size) for b in m.blobs()))
    (tmp_path / "out").mkdir()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(child.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    spec = {"method": "single+sha256", "name": target.name, "blobs": target.blob_specs(), "out_dir": str(tmp_path / "out"),
            "models_dir": str(tmp_path / "models"), "streams": 1, "chunk_size": None, "verify": "after", "verify_tls": True, "fsync": fsync}
    assert child.measure(spec)["ok"]
    want = {str(tmp_path / "out" / b.digest.filename) for b in m.blobs()} | {str(tmp_path / "out")}
    assert set(synced) == (want if fsync else set()), synced


@pytest.mark.integration
def test_threads_baseline_rejects_a_corrupt_chunk(tmp_path, upstream):
    up = upstream(sizes=[1 << 20])
    layer = json.loads(up.manifest())["layers"][0]
    up.faults.corrupt_chunk = {2: 1}
    base = up.url + "/v2/library/smol"
    with pytest.raises(ValueError, match="does not match"):
        pull_threads(f"{base}/blobs/{layer['digest']}", f"{base}/chunksums/{layer['digest']}", layer["size"],
                     layer["digest"][7:], str(tmp_path / "blob"), streams=2)


# -- the child's result ------------------------------------------------------


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_child_result_is_parsed(tmp_path):
    good = {"ok": True, "error": None, "wall_s": 0.5, "user_s": 0.25, "sys_s": 0.125, "peak_rss_kib": 51200, "bytes": 1 << 20}
    assert read_child_result(_write(tmp_path / "r.json", good), 0) == good


@pytest.mark.parametrize(
    ("content", "want"),
    [
        pytest.param(None, "exited with status 1 and wrote no result", id="no-file"),
        pytest.param("{not json", "unreadable result", id="not-json"),
        pytest.param([1, 2], "malformed result", id="not-an-object"),
        pytest.param({"ok": True, "wall_s": 1.0, "user_s": 0, "sys_s": 0, "bytes": 1}, "lacks a valid 'peak_rss_kib'", id="missing-field"),
        pytest.param({"ok": True, "wall_s": "1", "user_s": 0, "sys_s": 0, "peak_rss_kib": 1, "bytes": 1}, "lacks a valid 'wall_s'", id="wrong-type"),
        pytest.param({"ok": True, "wall_s": 0, "user_s": 0, "sys_s": 0, "peak_rss_kib": 1, "bytes": 1}, "no elapsed time", id="zero-time"),
        pytest.param({"ok": False, "error": "IntegrityError: bad"}, "IntegrityError: bad", id="failed-run"),
    ],
)
def test_bad_child_results_become_failed_runs(tmp_path, content, want):
    path = tmp_path / "r.json"
    if content is not None:
        _write(path, content)
    got = read_child_result(path, 1)
    assert got["ok"] is False and want in got["error"], got


# -- plotting ----------------------------------------------------------------


def test_plot_without_matplotlib_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    assert bench_main(TINY + ["--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"{bench.PROG}: --plot needs matplotlib, which is not installed (pip install matplotlib)"]
    # Checked before any work: no model was generated.
    assert not (tmp_path / "xdg").exists()


def _fake_runs() -> list[dict]:
    runs = []
    for method, streams, chunk, verify, gbps in [
        ("chunkpull", 1, 8 << 20, "blob", 0.5), ("chunkpull", 8, 8 << 20, "blob", 1.0), ("chunkpull", 8, 4 << 20, "blob", 0.9),
        ("python-threads", 1, 8 << 20, "blob", 0.25), ("python-threads", 8, 8 << 20, "blob", 0.5),
        ("curl+sha256sum", 1, None, "after", 0.25), ("aria2c", 16, 8 << 20, "after", 0.2),
    ]:
        runs.append({"method": method, "streams": streams, "chunk_size": chunk, "verify": verify, "ok": True, "verified": True,
                     "error": None, "gbps": gbps, "wall_s": 1 / gbps, "cpu_s": 1.0, "peak_rss_mib": 50.0})
    return runs


def _fake_report(runs: list[dict], skipped=()) -> Report:
    machine = {"backend": BACKEND, "cpu_count": 2, "cpu_model": "test cpu"}
    settings = {"model": "test", "bytes": 1, "repeat": 1, "verify": ["blob"], "chunk_digest": "sha256"}
    return Report(machine, settings, runs, aggregate(runs, default_streams=8), list(skipped))


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    write_plot(_fake_report(_fake_runs()), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- rows, ratios and the table --------------------------------------------------


def test_ratios_compare_like_with_like():
    rows = {(r.method, r.streams, r.chunk_size): r for r in aggregate(_fake_runs(), default_streams=8)}
    # python-threads: against chunkpull at its own settings.
    assert rows[("python-threads", 1, 8 << 20)].ratio == pytest.approx(2.0)
    assert rows[("python-threads", 8, 8 << 20)].ratio == pytest.approx(2.0)
    # other tools: against chunkpull's default mode (8 streams, 8 MiB chunks, blob).
    assert rows[("curl+sha256sum", 1, None)].ratio == pytest.approx(4.0)
    assert rows[("aria2c", 16, 8 << 20)].ratio == pytest.approx(5.0)
    assert rows[("chunkpull", 8, 8 << 20)].ratio is None


def test_repeats_give_median_min_max():
    runs = _fake_runs()[:1] * 3
    runs = [dict(r, gbps=g) for r, g in zip(runs, (0.3, 0.9, 0.5))]
    [row] = aggregate(runs)
    assert (row.gbps, row.gbps_min, row.gbps_max, row.runs, row.ok_runs) == (0.5, 0.3, 0.9, 3, 3)


def test_failed_and_skipped_runs_are_noted_in_the_table():
    runs = _fake_runs()[:2] + [dict(_fake_runs()[3], ok=False, verified=False, error="killed after 5 s")]
    table = format_table(_fake_report(runs, [{"method": "aria2c", "reason": "aria2c not installed"}]))
    lines = {line.split()[0]: line for line in table.splitlines() if line and line.split()[0] in ("python-threads", "aria2c")}
    assert "1 of 1 failed: killed after 5 s" in lines["python-threads"]
    assert "skipped: aria2c not installed" in lines["aria2c"]


def _run_compare_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_compare.py"
    if not path.is_file():
        pytest.skip("benchmarks/ is not here (an installed package)")
    spec = importlib.util.spec_from_file_location("run_compare", path)
    run_compare = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_compare", run_compare)  # its dataclasses look their module up
    spec.loader.exec_module(run_compare)
    return run_compare


def test_run_compare_renders_results_and_the_readme_block(tmp_path):
    run_compare = _run_compare_module()
    doc = _fake_report(_fake_runs()).to_json()
    doc["machine"].update(ram_gib=1, kernel="k", python="p", chunkpull="0", date="d")
    doc["command"] = "chunkpull bench --size 1G"
    md = run_compare.markdown_table(doc)
    assert md.splitlines()[0].startswith("| method | GB/s |") and md.splitlines()[1].startswith("|---|")
    docs = {"compare": doc, "streams": doc}
    page = run_compare.render(docs)
    assert "## Side by side, back to back" in page and "    chunkpull bench --size 1G" in page
    # The README's block is replaced, and only the block.
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{run_compare.BEGIN}\nstale figures\n{run_compare.END}\nafter\n")
    run_compare.update_readme(docs, readme)
    text = readme.read_text()
    assert "stale figures" not in text and text.startswith("before\n") and text.endswith("after\n")
    block = text.split(run_compare.BEGIN)[1].split(run_compare.END)[0]
    assert "| python-threads, 8 streams | 0.50 | " in block, block
    assert "streams (GB/s over bare loopback; test): 1: 0.50, 8: 1.00" in block, block


def test_run_compare_renders_the_api_against_the_cli(tmp_path):
    run_compare = _run_compare_module()
    doc = _fake_report(_fake_runs()).to_json()
    doc["machine"].update(ram_gib=1, kernel="k", python="p", chunkpull="0", date="d")
    doc["command"] = "chunkpull bench --size 1G"
    runs = [{"method": "api", "ok": True, "time_s": 2.2, "cpu_s": 2.0, "rep": 0},
            {"method": "cli", "ok": True, "time_s": 2.0, "wall_s": 2.5, "cpu_s": 2.6, "rep": 0}]
    api = {"command": "python benchmarks/api_vs_cli.py", "size": 1 << 30, "repeat": 1, "runs": runs,
           "summary": {"api_s": 2.2, "cli_pull_s": 2.0, "cli_wall_s": 2.5, "api_cpu_s": 2.0, "cli_cpu_s": 2.6,
                       "api_over_cli_pull": 1.1, "api_over_cli_wall": 0.88}}
    page = run_compare.render({"compare": doc}, api=api)
    assert "## The API path against the CLI" in page and "| 1 | cli | 2.00 | 2.50 | 2.60 | yes |" in page
    assert "API over CLI 1.10x (0.88x of the CLI's wall time)" in page
    readme = tmp_path / "README.md"
    readme.write_text(f"{run_compare.BEGIN}\n{run_compare.END}\n")
    run_compare.update_readme({"compare": doc}, readme, api=api)
    assert "API path (`benchmarks/api_vs_cli.py`, 1.00 GiB, medians of 1)" in readme.read_text()


def test_bench_children_start_from_compiled_bytecode(tmp_path):
    # As pip leaves an installed package, even where PYTHONDONTWRITEBYTECODE keeps imports from writing it.
    from chunkpull.bench.bytecode import compile_package

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("X = 1\n")
    compile_package(str(pkg))
    assert [p.name for p in (pkg / "__pycache__").iterdir()] == [f"mod.{sys.implementation.cache_tag}.pyc"]


def test_missing_tools_are_skipped_not_failed(monkeypatch):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    assert bench._missing("aria2c") == "aria2c not installed"
    assert bench._missing("curl+sha256sum") == "curl and sha256sum not installed"
    assert "not installed" in bench._missing("hf_transfer")
    # Part of the package: always there.
    assert bench._missing("single+sha256") is None
    assert bench._missing("python-threads") is None


def test_sizes_are_binary_units():
    # testregistry.parse_size, as in "chunkpull registry make --size" (its tests are in test_testregistry.py).
    assert bench.parse_options(["--size", "1G"]).size == 1 << 30
    assert bench.parse_options(["--chunk-size", "256KiB,1M"]).chunk_sizes == [256 << 10, 1 << 20]
    assert "GiB = 2^30" in " ".join(bench._parser().format_help().split())


@pytest.mark.integration
def test_bench_a_registry_model_with_a_mirror_reports_bytes_per_source(capsys, tmp_path):
    from chunkpull.testing import TestRegistry, build_model

    build_model(tmp_path / "up", "registry.local/library/m:latest", [4 << 20], seed=3)
    with TestRegistry(tmp_path / "up", chunk_size=256 << 10) as origin, TestRegistry(tmp_path / "up", chunk_size=256 << 10) as mirror:
        origin_host, mirror_url = origin.url.split("://")[1], mirror.url
        doc = _run_json(capsys, [f"{origin.url}/library/m:latest", "--mirror", mirror_url, "--threshold", "1M", "-q", "--tmpdir", str(tmp_path)])
    run = doc["runs"][0]
    _good_run(run)
    by = {s["source"]: s for s in run["sources"]}
    assert set(by) == {origin_host, mirror_url}
    assert sum(s["bytes"] for s in by.values()) >= 4 << 20
    table = format_table(Report(doc["machine"], doc["settings"], doc["runs"], aggregate(doc["runs"]), doc["skipped"]))
    assert "bytes by source" in table and mirror_url in table


def test_mirror_needs_a_registry_name(capsys):
    assert bench_main(["--mirror", "http://m:5000", "-q"]) == 1  # like the other option conflicts
    assert "needs a registry NAME" in capsys.readouterr().err
