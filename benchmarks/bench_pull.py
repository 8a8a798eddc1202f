"""Whole pulls from the built-in registry (in a subprocess): one big layer, and many small ones.

- ``test_pull_one_layer``: one 256 MiB layer in 8 MiB chunks at the default
  stream count: the data path (network, hash, write, commit).
- ``test_pull_many_layers``: 1,000 layers of 64 KiB, each below the chunking
  threshold and so one request each: the per-request and per-blob overhead
  (connection reuse, ingest files, commits), which a big layer hides.
- ``test_many_layers_aria2c``: the same 1,000 blobs with ``aria2c -j16 -i
  <url list>`` and a ``checksum=sha-256=`` per entry, when aria2c is installed.

Every round pulls into a fresh models directory (removed after the round).
The client runs in this process, the registry in another, so the timings
do not include the server's CPU.  ``extra_info`` has the backend, CPU count,
stream count, chunk size, bytes and GB/s.  Nothing here asserts a speed;
the correctness checks are there so a fast wrong pull cannot pass unseen.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from chunkpull import _env
from chunkpull.store.cache import DiskCache
from chunkpull.registry import Registry

ONE_LAYER = 256 << 20
MANY_LAYERS = 1000
SMALL_LAYER = 64 << 10
CHUNK = 8 << 20
ROUNDS = 3


def _fresh_dir() -> tuple[tuple, dict]:
    return (Path(tempfile.mkdtemp(prefix="chunkpull-benchpull-")),), {}


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _annotate(benchmark, machine_info, nbytes: int, streams: int, layers: int) -> None:
    info = benchmark.extra_info
    info.update(machine_info, streams=streams, chunk_size=CHUNK, bytes=nbytes, layers=layers)
    if benchmark.stats is not None:
        info["gb_s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 3)


def _pull_bench(benchmark, machine_info, served_model, size: int, layers: int) -> None:
    model, _server, target = served_model(size, layers, chunk_size=CHUNK)
    streams = _env.max_streams()
    seen = []

    def pull(models: Path) -> None:
        registry = Registry(DiskCache(models), max_streams=streams)
        try:
            registry.pull(target.name)
        finally:
            registry.close()
        seen.append(sum(1 for _ in (models / "blobs").iterdir()))

    benchmark.pedantic(pull, setup=_fresh_dir, teardown=_remove, rounds=ROUNDS, iterations=1)
    assert seen and all(n == len(model.blobs) + 1 for n in seen)  # every blob and the manifest
    _annotate(benchmark, machine_info, target.size, streams, layers)


def test_pull_one_layer(benchmark, machine_info, served_model):
    _pull_bench(benchmark, machine_info, served_model, ONE_LAYER, 1)


def test_pull_many_layers(benchmark, machine_info, served_model):
    _pull_bench(benchmark, machine_info, served_model, MANY_LAYERS * SMALL_LAYER, MANY_LAYERS)


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c not installed")
def test_many_layers_aria2c(benchmark, machine_info, served_model, tmp_path):
    _model, _server, target = served_model(MANY_LAYERS * SMALL_LAYER, MANY_LAYERS, chunk_size=CHUNK)
    urls = tmp_path / "urls.txt"
    # One entry per blob, with its own output name and checksum (aria2c's input-file syntax).
    urls.write_text("".join(
        f"{b['url']}\n  out={b['digest'].replace(':', '-')}\n  checksum=sha-256={b['digest'].partition(':')[2]}\n"
        for b in target.blob_specs()
    ))

    def pull(out: Path) -> None:
        subprocess.run(
            ["aria2c", "-j16", "-i", str(urls), "-d", str(out), "--quiet=true", "--allow-overwrite=true", "--auto-file-renaming=false"],
            check=True, stdin=subprocess.DEVNULL,
        )

    benchmark.pedantic(pull, setup=_fresh_dir, teardown=_remove, rounds=ROUNDS, iterations=1)
    _annotate(benchmark, machine_info, target.size, 16, MANY_LAYERS)
