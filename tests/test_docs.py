"""The documentation runs: docstring examples, the README's library and Ollama-client examples, its CLI session.

README code is run as written, with only the addresses and directories
swapped for the test's own (``http://127.0.0.1:5000`` is a TestRegistry on a
free port, ``/tmp/models`` a temporary directory), so the front page cannot
drift from what the package does.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

import chunkpull
from chunkpull.testing import TestRegistry, build_model

README = Path(__file__).resolve().parent.parent / "README.md"

PUBLIC_MODULES = [
    "chunkpull", "chunkpull.errors", "chunkpull.core.digest", "chunkpull.core.names", "chunkpull.core.index",
    "chunkpull.core.manifest", "chunkpull.core.progress", "chunkpull.result", "chunkpull.tuning", "chunkpull.store.cache",
    "chunkpull.store.ingest", "chunkpull.display", "chunkpull.library", "chunkpull.registry", "chunkpull.bars", "chunkpull.serve.app",
]
# Exported, but defined in engine/ (another workstream's package): documented there.
NOT_HERE = {"SourceStats"}


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    # The module's own names, plus chunkpull's public ones (examples are written as a user would).
    globs = vars(mod) | {name: getattr(chunkpull, name) for name in chunkpull.__all__} | {"chunkpull": chunkpull}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(mod, module, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module} failed (see the output above)"


def _exported():
    for name in chunkpull.__all__:
        obj = getattr(chunkpull, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and name not in NOT_HERE:
            yield name, obj


@pytest.mark.parametrize("name, obj", list(_exported()), ids=[n for n, _ in _exported()])
def test_every_public_class_and_function_has_an_example(name, obj):
    assert ">>>" in (obj.__doc__ or ""), f"chunkpull.{name} has no example in its docstring"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if not attr.startswith("_") and inspect.isfunction(func):
                assert func.__doc__, f"chunkpull.{name}.{attr} has no docstring"


# -- the README ----------------------------------------------------------------------


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else None]


def _blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(title), flags=re.S)


@pytest.fixture
def smol_registry(tmp_path):
    build_model(tmp_path / "up", "registry.local/library/smol:latest", [3 << 20, 10_000], seed=7)
    with TestRegistry(tmp_path / "up", chunk_size=1 << 20) as reg:
        yield reg


def _run_python(code: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        code = code.replace(old, new)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


@pytest.mark.integration
def test_readme_library_examples_run(smol_registry, tmp_path):
    pytest.importorskip("tqdm")
    swaps = {"http://127.0.0.1:5000": smol_registry.url, "/tmp/models": str(tmp_path / "models")}
    blocks = _blocks("Library", "python")
    assert len(blocks) == 5, "the README's library section changed: update this test's expectations"
    outputs = [_run_python(code, swaps) for code in blocks]
    one_call, progress, asyncio_, errors, registry = outputs
    assert one_call.splitlines()[0].startswith(str(tmp_path / "models" / "blobs" / "sha256-")), one_call
    assert one_call.splitlines()[1].endswith(" 0 0"), "first pull: everything fetched, nothing resumed or cached"
    assert progress.count("cached sha256:") == 3, progress
    assert asyncio_.splitlines()[-1].startswith(str(tmp_path / "models" / "blobs")), asyncio_
    assert errors.startswith('not found: model "') and "no-such-model" in errors, errors
    assert registry.splitlines()[0].startswith("sha256:") and "http://127.0.0.1" in registry.splitlines()[1], registry


@pytest.mark.integration
def test_readme_ollama_client_example_runs(smol_registry, tmp_path):
    pytest.importorskip("ollama")
    from chunkpull.serve import Local, Server

    with chunkpull.Registry(tmp_path / "models") as registry, Server(Local(registry), "127.0.0.1", 0) as server:
        swaps = {"http://127.0.0.1:11434": server.url, "http://127.0.0.1:5000": smol_registry.url}
        (code,) = _blocks("Using Ollama's clients with `chunkpull serve`", "python")
        lines = _run_python(code, swaps).splitlines()
    assert lines[0] == "pulling manifest" and lines[1].startswith("pulling "), lines[:2]
    assert lines[-3:-1] == ["success", f"['{smol_registry.url.split('://')[1]}/library/smol:latest']"], lines[-3:]
    assert lines[-1].startswith("404 ") or lines[-1].startswith("500 ") or "not found" in lines[-1], lines[-1]


@pytest.mark.integration
@pytest.mark.slow
def test_readme_cli_session_runs(tmp_path):
    serve_block, session_block = _blocks("Command line", "sh")[:2]
    swaps = {"/tmp/up": str(tmp_path / "up"), "/tmp/models": str(tmp_path / "models"), "--port 5000": "--port 0", "64M": "4M"}

    def commands(block: str) -> list[str]:
        out = []
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for old, new in swaps.items():
                line = line.replace(old, new)
            if line:
                out.append(line.replace("chunkpull ", f"{sys.executable} -m chunkpull ", 1))
        return out

    make, serve = commands(serve_block)
    env = child_env()
    subprocess.run(make, shell=True, check=True, env=env, capture_output=True, timeout=120)
    # exec: the shell becomes the server, so terminate() stops the server itself (dash would leave it running).
    proc = subprocess.Popen("exec " + serve, shell=True, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        outputs = []
        for cmd in commands(session_block):
            cmd = cmd.replace("http://127.0.0.1:5000", url)
            r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
            outputs.append(r.stdout)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    pulled, listed, again, removed = outputs
    assert pulled.startswith(f"pulled {url}/library/smol: ")
    assert listed.splitlines()[1].split()[0] == f"{url}/library/smol", listed
    assert "nothing to fetch" in again and removed == f"deleted {url}/library/smol\n"
