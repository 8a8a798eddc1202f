"""A 1 GiB image behind a redirecting front: the real docker-registry redirects blob GETs to nginx, as CDN-backed registries do.

Usage (as root or not; needs Debian's ``docker-registry``, ``nginx`` and, for
the comparison, ``skopeo`` and ``curl``)::

    python benchmarks/cdn_front.py [--size 1G] [--repeat 3] [--json FILE]

docker-registry (CNCF distribution) stores blobs on the file system and its
``redirect`` storage middleware answers every blob GET with a 307 to
``<nginx>/docker/registry/v2/blobs/…/data``; nginx serves those files, the
way a CDN serves a registry's object store.  One OCI image with one layer of
pseudo-random bytes is pushed, then ``chunkpull bench <image> --baselines
skopeo,curl+sha256sum`` measures, in one run with methods taking turns:
chunkpull (which resolves the redirect once and sends its ranges to the
target), ``skopeo copy`` (one stream per layer, digest checked as it copies)
and ``curl -L | sha256sum``.  The report's ``registry RT/blob`` column counts
chunkpull's blob requests that reached the registry itself.

``benchmarks/run_compare.py --only cdn-front`` runs this and renders it into
RESULTS.md.  Nothing fails on speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))  # the tests' docker-registry driver

from realregistries import Distribution, free_port, stop_process  # noqa: E402

REPO, TAG = "bench/cdn-model", "v1"


class Nginx:
    """nginx on 127.0.0.1 serving root as static files (the "CDN")."""

    def __init__(self, root: Path, work: Path) -> None:
        self.port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(
            "daemon off;\nworker_processes 1;\nuser root;\n"
            f"pid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {work}/nginx-access.log;\n  sendfile on;\n  tcp_nopush on;\n"
            f"  client_body_temp_path {work}/body;\n  proxy_temp_path {work}/proxy;\n  fastcgi_temp_path {work}/fcgi;\n"
            f"  uwsgi_temp_path {work}/uwsgi;\n  scgi_temp_path {work}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; location / {{ }} }}\n"
            "}\n"
        )
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(work / "nginx-error.log")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                break
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(work / 'nginx-error.log').read_text()[-1000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


def run(size: int, repeat: int, *, quiet: bool = True, baselines: str = "skopeo,curl+sha256sum", streams: str | None = None,
        tmpdir: str | None = None) -> dict:
    """Set up the front, run chunkpull bench against it, and return its JSON document (with the command and setup)."""
    for tool in ("docker-registry", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"cdn_front: {tool} is not installed (apt-get install docker-registry nginx-light skopeo)")
    work = Path(tempfile.mkdtemp(prefix="chunkpull-cdn-front-"))
    storage = work / "registry"
    storage.mkdir()
    nginx = Nginx(storage / "data", work)
    registry = Distribution(
        storage, extra=f"middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: http://127.0.0.1:{nginx.port}/\n"
    )
    try:
        blob = numpy.random.default_rng(size).bytes(size)  # pseudo-random: nothing compresses it
        digest, _ = registry.push_image(REPO, TAG, [blob], oci=True)
        del blob
        name = f"http://127.0.0.1:{registry.port}/{REPO}:{TAG}"
        probe = requests.get(f"{registry.url}/v2/{REPO}/blobs/{_layer(registry)}", allow_redirects=False, timeout=10)
        if probe.status_code not in (301, 302, 303, 307, 308):
            raise SystemExit(f"cdn_front: the registry answered a blob GET with {probe.status_code}, not a redirect")
        cmd = [sys.executable, "-m", "chunkpull", "bench", name, "--baselines", baselines, "--repeat", str(repeat), "--json"]
        if streams:
            cmd += ["--streams", streams]
        if tmpdir:
            cmd += ["--tmpdir", tmpdir]
        if quiet:
            cmd.append("-q")
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False).stdout
        if not out.strip():
            raise SystemExit("cdn_front: chunkpull bench produced no report")
        doc = json.loads(out)
        doc["command"] = f"python benchmarks/cdn_front.py --size {size} --repeat {repeat}" + (f" --baselines {baselines}" if baselines != "skopeo,curl+sha256sum" else "") + (f" --streams {streams}" if streams else "") + (f" --tmpdir {tmpdir}" if tmpdir else "")
        doc["setup"] = {"manifest": digest, "redirect": probe.headers.get("Location", "").split("?", 1)[0].replace(str(storage / "data"), "")}
        return doc
    finally:
        registry.stop()
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


def _layer(registry: Distribution) -> str:
    r = requests.get(f"{registry.url}/v2/{REPO}/manifests/{TAG}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    return r.json()["layers"][0]["digest"]


def main(argv: list[str] | None = None) -> int:
    from chunkpull.core.units import parse_size

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="layer size (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="runs per method (default 3)")
    p.add_argument("--json", type=Path, help="write the report's JSON document here")
    p.add_argument("--baselines", default="skopeo,curl+sha256sum", help="chunkpull bench baselines to run beside chunkpull (default skopeo,curl+sha256sum)")
    p.add_argument("--streams", help="chunkpull stream counts to sweep, e.g. auto,8 (default: chunkpull's default)")
    p.add_argument("--tmpdir", help="where the runs write (chunkpull bench --tmpdir), e.g. /dev/shm to take the disk out")
    args = p.parse_args(argv)
    doc = run(parse_size(args.size), args.repeat, quiet=False, baselines=args.baselines, streams=args.streams, tmpdir=args.tmpdir)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    for row in doc["rows"]:
        rt = (row.get("registry_round_trips_per_blob"))
        print(f"{row['method']:16} {row['gbps'] or 0:.3f} GB/s  registry RT/blob {rt if rt is not None else '-'}  {row.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
