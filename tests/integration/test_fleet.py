"""Fleet pulls: many models under one budget, a bandwidth cap, JSON events for automation.

Real sockets to built-in registries; models that share a layer are built
from the same seed, so the registry's byte counter shows whether a shared
blob crossed the wire once.
"""

from __future__ import annotations

import json
import time

import pytest

from chunkpull.cli import main
from chunkpull.errors import ModelNotFoundError

pytestmark = pytest.mark.integration

MIB = 1 << 20
A, B, MISSING = "registry.local/library/a:latest", "registry.local/library/b:latest", "registry.local/library/missing:latest"


@pytest.fixture
def shared(upstream):
    """Two models sharing their 2 MiB layer (same seed, same index), on one registry."""
    up = upstream([2 * MIB, MIB], name=A, seed=5)
    up.add(B, [2 * MIB], seed=5)
    return up


def _blob_bytes(up, name: str) -> dict[str, int]:
    doc = json.loads(up.manifest(name))
    return {d["digest"]: d["size"] for d in [doc["config"], *doc["layers"]]}


def test_bulk_pull_fetches_a_shared_blob_once_and_a_missing_model_does_not_stop_the_others(shared, make_registry):
    reg = make_registry()
    names = [shared.ref(A), shared.ref(MISSING), shared.ref(B)]
    results = reg.pull_many(names)
    assert isinstance(results[shared.ref(MISSING)], ModelNotFoundError)
    assert str(results[shared.ref(A)].digest) == shared.digests[A] and str(results[shared.ref(B)].digest) == shared.digests[B]
    unique = {**_blob_bytes(shared, A), **_blob_bytes(shared, B)}
    assert len(unique) < len(_blob_bytes(shared, A)) + len(_blob_bytes(shared, B)), "the fixture must share a blob"
    assert shared.stats.blob_bytes_sent == sum(unique.values())  # the shared layer crossed the wire once
    for name in (A, B):
        assert reg.resolve_local(shared.ref(name)).digest == results[shared.ref(name)].digest


def test_cli_bulk_pull_exit_status_and_summary(shared, tmp_path, capsys):
    listing = tmp_path / "models.txt"
    listing.write_text(f"# fleet list\n{shared.ref(A)}\n\n{shared.ref(MISSING)}   # not there\n")
    rc = main(["pull", shared.ref(B), "--from-file", str(listing), "--models", str(tmp_path / "m"), "-q"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"pulled {shared.ref(B)}: " in out and f"pulled {shared.ref(A)}: " in out
    assert "2 of 3 models pulled" in out
    assert f"chunkpull: error: {shared.ref(MISSING)}: " in err and "not found" in err


def test_json_events(shared, tmp_path, capsys):
    rc = main(["pull", shared.ref(A), shared.ref(MISSING), "--models", str(tmp_path / "m"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1 and err == ""  # everything is in the events
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "summary" and "sources" in kinds
    assert {e["model"]: e["event"] for e in events if e["event"] in ("done", "error")} == {shared.ref(A): "done", shared.ref(MISSING): "error"}
    error = next(e for e in events if e["event"] == "error")
    assert error["kind"] == "ModelNotFoundError"
    summary = events[-1]
    assert summary["failed"] == 1 and summary["fetched_bytes"] == sum(_blob_bytes(shared, A).values())


def test_limit_rate_caps_the_whole_pull(upstream, make_registry):
    # A lower bound only: a slow machine takes longer, never shorter.
    up = upstream([6 * MIB], seed=7)
    rate = 4 * MIB
    reg = make_registry(limit_rate=rate, max_streams=4)
    t0 = time.monotonic()
    reg.pull(up.ref())
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8 * (6 * MIB - 0.1 * rate) / rate, f"{6 * MIB / elapsed / MIB:.1f} MiB/s is over the 4 MiB/s cap"


def test_limit_rate_option_is_validated(capsys):
    assert main(["pull", "x", "--limit-rate", "fast"]) == 2
    assert "want a rate" in capsys.readouterr().err


def test_the_report_lists_the_adaptive_stream_counts(upstream, make_registry):
    from chunkpull.registry import PullReport

    up = upstream([128 * MIB], seed=8, chunk_size=MIB)
    up.faults.throttle_bps = 4 * MIB  # per connection: more streams carry more; two 48 MiB windows of the controller
    reg = make_registry(max_streams=0)  # --streams auto: adaptive
    report = PullReport()
    reg.pull(up.ref(), report=report)
    assert report.streams[0] == 8 and max(report.streams) > 8, report.streams
