"""Hedged stragglers in a whole pull, against the built-in registry over real sockets.

The last chunk of a layer drips on its first request only (``drip_times``):
the path it took is slow, a second request for it is not.  In the tail of
the pull (nothing waits for a stream) the engine asks for the rest of that
chunk on another connection and races the two; which one wins is read from
the engine's counters and the registry's log, never from a clock.
"""

from __future__ import annotations

import json

import pytest
from test_data_path import assert_blobs_match, pull_with_engine

pytestmark = pytest.mark.integration

MIB = 1 << 20
CHUNK = 256 << 10
LAST = 3 * MIB // CHUNK - 1  # the last chunk of a 3 MiB layer


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


def _ranges_of(up, digest: str, index: int) -> list[tuple[int, int]]:
    return [(s, e) for (d, s, e) in up.stats.ranges if d == digest and index * CHUNK <= s < (index + 1) * CHUNK]


def test_a_straggling_last_chunk_is_hedged_and_the_hedge_wins(upstream, make_registry):
    up = upstream([3 * MIB], seed=61)
    layer = _layer(up)
    # 32 KiB/s: alone, the last chunk would take 8 s; its hedge is unthrottled.
    up.faults.set(drip_chunk={LAST: 32 << 10}, drip_times=1, only_digest=layer)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), max_streams=2)
    assert_blobs_match(reg, up)
    assert (puller.stats.hedges, puller.stats.hedges_won) == (1, 1), puller.stats
    asked = _ranges_of(up, layer, LAST)
    assert len(asked) == 2, f"the last chunk was asked for {asked}: want once, then once by its hedge"
    assert puller.monitor.aborted == 0, "a hedged straggler is raced, not cut"


def test_when_the_straggler_finishes_first_it_wins_and_the_hedge_is_cut(upstream, make_registry):
    up = upstream([3 * MIB], seed=62)
    layer = _layer(up)
    # Every request for the last chunk drips at the same rate: the first one,
    # started earlier, always finishes first.
    up.faults.set(drip_chunk={LAST: 256 << 10}, only_digest=layer)
    reg = make_registry()
    puller = pull_with_engine(reg, up.ref(), max_streams=2)
    assert_blobs_match(reg, up)
    assert puller.stats.hedges == 1 and puller.stats.hedges_won == 0, puller.stats


def test_a_hedged_pull_through_the_registry_api_commits_a_blob_that_hashes(upstream, make_registry):
    # The same race through the public entry point, at the default (adaptive) stream count.
    up = upstream([3 * MIB], seed=63)
    layer = _layer(up)
    up.faults.set(drip_chunk={LAST: 32 << 10}, drip_times=1, only_digest=layer)
    reg = make_registry()
    reg.pull(up.ref())
    assert_blobs_match(reg, up)
    assert len(_ranges_of(up, layer, LAST)) >= 2


def test_the_cli_reports_cuts_and_hedges(upstream, tmp_path, capsys):
    from chunkpull.cli import main

    # Past the CLI's chunking threshold (64 MiB), so the layer comes in chunks.
    size = 65 * MIB
    last = size // CHUNK - 1
    up = upstream([size], seed=64)
    layer = _layer(up)
    up.faults.set(drip_chunk={last: 32 << 10}, drip_times=1, only_digest=layer)
    assert main(["pull", up.ref(), "--models", str(tmp_path / "m"), "--streams", "2", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sources = next(e for e in events if e["event"] == "sources")
    assert (sources["hedges"], sources["hedges_won"], sources["cuts"]) == (1, 1, 0), sources
    up.faults.set(drip_chunk={last: 32 << 10}, drip_times=1)
    assert main(["pull", up.ref(), "--models", str(tmp_path / "m2"), "--streams", "2"]) == 0
    assert "slow connections: 0 reads cut and resumed, 1 chunk end hedged (1 won by the second connection)" in capsys.readouterr().out
