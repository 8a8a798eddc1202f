"""Blobs behind a redirecting registry: the redirect is resolved once per blob, its target serves the ranges, and is asked again when it refuses.

The origin is one built-in registry answering blob GETs with 307 to a
"CDN" (another built-in registry process on another port, serving the same
files); each server's log shows who was asked for what.
"""

from __future__ import annotations

import json

import pytest

from chunkpull.core.digest import Digest
from chunkpull.errors import TransportError

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _layer(up) -> str:
    return json.loads(up.manifest())["layers"][0]["digest"]


def _origin_blob_gets(up, layer: str) -> int:
    return sum(1 for m, p, _s in up.stats.log if m == "GET" and p.endswith(f"/blobs/{layer}"))


def test_ranges_go_to_the_redirect_target_after_one_resolve(upstream, make_registry):
    origin = upstream([3 * MIB], seed=100)
    cdn = upstream([3 * MIB], seed=100)
    layer = _layer(origin)
    origin.faults.set(redirect_blobs=cdn.url, only_digest=layer)
    reg = make_registry()
    reg.pull(origin.ref())
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == origin.blob(layer)
    # 12 chunks over 4 streams: one range asks the origin and is redirected;
    # the others wait for its answer, then all go straight to the CDN.
    assert _origin_blob_gets(origin, layer) == 1, origin.stats.log
    assert sum(1 for d, _s, _e in cdn.stats.ranges if d == layer) == 12


def test_an_expired_target_is_resolved_again(upstream, make_registry):
    origin = upstream([3 * MIB], seed=101)
    cdn = upstream([3 * MIB], seed=101)
    layer = _layer(origin)
    origin.faults.set(redirect_blobs=cdn.url, only_digest=layer)
    # After the first few ranges the CDN answers 403 twice, as an expired signed URL does.
    cdn.faults.set(status_times={403: 2}, only_digest=layer)
    reg = make_registry(max_streams=1)
    reg.pull(origin.ref())
    assert reg.cache.blob_path(Digest.parse(layer)).read_bytes() == origin.blob(layer)
    assert 2 <= _origin_blob_gets(origin, layer) <= 4, origin.stats.log
    assert reg.cache.blob_path(Digest.parse(layer)).exists()


def test_a_target_that_always_refuses_fails_clearly(upstream, make_registry):
    origin = upstream([3 * MIB], seed=102)
    cdn = upstream([3 * MIB], seed=102)
    layer = _layer(origin)
    origin.faults.set(redirect_blobs=cdn.url, only_digest=layer)
    cdn.faults.set(status_times={403: 10**6}, only_digest=layer)
    reg = make_registry()
    with pytest.raises(TransportError, match="keeps refusing"):
        reg.pull(origin.ref())


def test_without_a_redirect_nothing_extra_is_asked(upstream, make_registry):
    up = upstream([3 * MIB], seed=103)
    layer = _layer(up)
    reg = make_registry()
    reg.pull(up.ref())
    assert len([1 for d, _s, _e in up.stats.ranges if d == layer]) == 12
