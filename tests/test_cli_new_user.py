"""The CLI's rough edges a first-time user hits (issue 13), each as that user meets it.

Commands run in-process through ``main([...])`` against a real TestRegistry;
interrupted downloads are made by a real failed pull, not by writing files
that look like them.
"""

from __future__ import annotations

import fcntl
import os

import pytest

from chunkpull import DiskCache, IntegrityError
from chunkpull.cli import main
from chunkpull.testing import TestRegistry, build_model
from conftest import CHUNK_SIZE

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path):
    build_model(tmp_path / "served", "registry.local/library/smol:latest", [300_000, 12 * CHUNK_SIZE], seed=1)
    with TestRegistry(tmp_path / "served", chunk_size=CHUNK_SIZE) as reg:
        yield reg


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["pull", "x", "--bogus"], "usage: chunkpull pull"),
        (["ls", "--bogus"], "usage: chunkpull ls"),
        (["rm", "x", "--bogus"], "usage: chunkpull rm"),
        (["serve", "--bogus"], "usage: chunkpull serve"),
        (["export", "x", "-o", "f", "--bogus"], "usage: chunkpull export"),
        (["registry", "make", "d", "n", "--size", "1", "--bogus"], "usage: chunkpull registry make"),
        (["--bogus"], "usage: chunkpull [-h]"),
    ],
    ids=["pull", "ls", "rm", "serve", "export", "registry-make", "top-level"],
)
def test_unknown_option_shows_the_subcommands_usage(argv, usage, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert "unrecognized arguments: --bogus" in err, err


def test_ls_prints_a_name_pull_and_rm_accept_as_printed(served, tmp_path, capsys):
    models = str(tmp_path / "models")
    assert main(["pull", f"{served.url}/library/smol", "--models", models]) == 0
    capsys.readouterr()
    assert main(["ls", "--models", models]) == 0
    header, row = _lines(capsys.readouterr().out)
    assert header.split() == ["NAME", "DIGEST", "SIZE", "MODIFIED"]
    name = row.split()[0]
    assert name.startswith("http://"), f"ls printed {name!r}: pasted into pull it would try https"

    assert main(["pull", name, "--models", models]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"pulled {name}: nothing to fetch ("), out  # fully cached: no "0 B in 0.01 s (0.00 MB/s)"
    assert "3 blobs (3 cached)" in out

    assert main(["rm", name, "--models", models]) == 0
    assert capsys.readouterr().out == f"deleted {name}\n"
    assert main(["ls", "--models", models]) == 0
    assert _lines(capsys.readouterr().out) == ["NAME   DIGEST   SIZE   MODIFIED"]


def test_an_https_pull_clears_the_recorded_scheme(tmp_path):
    cache = DiskCache(tmp_path)
    cache.set_scheme("h:1", "http")
    assert cache.scheme("h:1") == "http" and cache.scheme("H:1") == "http"
    cache.set_scheme("h:1", "https")
    assert cache.scheme("h:1") == "https" and not (tmp_path / ".chunkpull" / "schemes" / "h:1").exists()
    assert cache.scheme("../x") == "https"


def _interrupt_a_pull(served: TestRegistry, make_registry, models) -> None:
    """Leave a work file behind: a chunk that is always corrupt fails the pull after the others verified."""
    reg = make_registry(DiskCache(models), verify="chunks", max_streams=1)
    served.faults.corrupt_chunk = {7: 1000}
    with pytest.raises(IntegrityError):
        reg.pull(f"{served.url}/library/smol")
    served.faults.reset()


def test_ls_partials_shows_interrupted_work_and_rm_partials_removes_it(served, make_registry, tmp_path, capsys):
    models = tmp_path / "models"
    _interrupt_a_pull(served, make_registry, models)
    capsys.readouterr()

    assert main(["ls", "--models", str(models)]) == 0
    out, err = capsys.readouterr()
    assert _lines(out) == ["NAME   DIGEST   SIZE   MODIFIED"], "no model: the pull did not complete"
    assert err.startswith("1 interrupted download (3.15 MB) not shown: chunkpull ls --partials"), err

    assert main(["ls", "--partials", "--models", str(models)]) == 0
    out, err = capsys.readouterr()
    header, row = _lines(out)
    assert header.split() == ["BLOB", "SIZE", "CHUNKS", "DONE", "MODIFIED", "STATE"]
    blob, size, unit, done, *rest = row.split()
    assert (size, unit) == ("3.15", "MB") and 0 < int(done) < 12, row
    assert row.endswith("interrupted: the next pull of its model resumes it")
    assert "chunkpull rm --partials" in err

    # A work file a pull holds is shown as such, and rm --partials leaves it.
    partial = next((models / ".chunkpull" / "ingest").glob("*.partial"))
    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert main(["ls", "--partials", "--models", str(models)]) == 0
        assert _lines(capsys.readouterr().out)[1].endswith("a pull is using it")
        assert main(["rm", "--partials", "--models", str(models)]) == 0
        assert capsys.readouterr().out == "removed 0 interrupted downloads (0 B)\n"
    finally:
        os.close(fd)

    assert main(["rm", "--partials", "--models", str(models)]) == 0
    assert capsys.readouterr().out == "removed 1 interrupted download (3.15 MB)\n"
    assert main(["ls", "--partials", "--models", str(models)]) == 0
    assert capsys.readouterr().out == "no interrupted downloads\n"


def test_registry_make_says_what_to_do_next(tmp_path, capsys):
    up = tmp_path / "up"
    assert main(["registry", "make", str(up), "smol", "--size", "1K,2K"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert lines[0].startswith(f"made registry.local/library/smol:latest in {up}: 2 layers (3.07 kB) and a config, manifest sha256:")
    assert lines[1:] == [f"  serve it:  chunkpull registry serve {up} --port 5000",
                         "  pull it:   chunkpull pull http://127.0.0.1:5000/library/smol:latest"]


def test_registry_serve_help_documents_every_option(capsys):
    assert main(["registry", "serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--chunk-digest {sha256,blake3}" in out
    assert "algorithm of the chunk digests" in out


def test_display_waits_for_a_big_layer_even_after_small_blobs_came():
    """The config blob comes at once; the model layer waits for the registry's chunk list: say so, not '0.00 MB/s'."""
    import io

    from chunkpull.core.progress import Aggregator, Progress, State
    from chunkpull.display import ProgressBar

    t = [0.0]
    agg = Aggregator(clock=lambda: t[0])
    out = io.StringIO()
    bar = ProgressBar(agg, out, is_tty=True, clock=lambda: t[0], label="big", width=100)
    big, config = "sha256:" + "a" * 64, "sha256:" + "c" * 64
    agg(Progress(big, 2 << 30, State.START))
    agg(Progress(config, 284, State.START))
    agg(Progress(config, 284, State.BYTES, 284))
    agg(Progress(config, 284, State.DONE))
    for _ in range(3):
        t[0] += 1.0
        bar.tick()
    frame = out.getvalue().split("\r")[-1].replace("\x1b[K", "")
    # Counted from the last byte seen (the config's, sampled at the first tick).
    assert frame.endswith("waiting for the registry 2s"), frame
    agg(Progress(big, 2 << 30, State.BYTES, 4 << 20))
    t[0] += 1.0
    bar.tick()
    assert "waiting" not in out.getvalue().split("\r")[-1]
