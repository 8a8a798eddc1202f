"""Pulls from the real CNCF distribution registry (Debian's ``docker-registry``), started here on 127.0.0.1.

Docker schema-2 and OCI image manifests, OCI indexes and Docker manifest
lists resolved to a platform (or to their single entry), ``@digest`` pins
through ``/manifests/<digest>``, and blobs without chunksums fetched in
client-split ranges.  Images are pushed with the distribution spec's
monolithic upload (``POST`` then ``PUT ?digest=``), so the registry holds
exactly what a real client would have pushed.  ``.ci/run`` installs the
package; where it is missing these tests are skipped with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from chunkpull.core.digest import Digest
from chunkpull.core.names import Name
from chunkpull.errors import ModelNotFoundError

pytestmark = pytest.mark.integration

BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


class Distribution:
    """A running docker-registry on 127.0.0.1 with filesystem storage; its access log is kept."""

    def __init__(self, root: Path, *, extra: str = "", auth: tuple[str, str] | None = None) -> None:
        self.auth = auth  # what the pushes authenticate with (an htpasswd user)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + extra
        )
        self.log_path = root / "registry.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/v2/", auth=self.auth, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def blob_gets(self, repo: str, digest: str) -> int:
        """How many GETs of this blob the access log shows."""
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if f'"GET /v2/{repo}/blobs/{digest} ' in line)

    # -- pushing, as a registry client would --------------------------------------

    def push_blob(self, repo: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = requests.post(f"{self.url}/v2/{repo}/blobs/uploads/", auth=self.auth, timeout=30)
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        location = location if location.startswith("http") else self.url + location
        sep = "&" if "?" in location else "?"
        r = requests.put(f"{location}{sep}digest={digest}", data=data, headers={"Content-Type": "application/octet-stream"}, auth=self.auth, timeout=60)
        assert r.status_code == 201, r.text
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, reference: str, doc: dict, media_type: str) -> str:
        data = json.dumps(doc).encode()
        r = requests.put(f"{self.url}/v2/{repo}/manifests/{reference}", data=data, headers={"Content-Type": media_type}, auth=self.auth, timeout=30)
        assert r.status_code == 201, r.text
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def push_image(self, repo: str, tag: str | None, layers: list[bytes], *, oci: bool, layer_type: str = "") -> tuple[str, list[dict]]:
        """Push an image (config + layers) and its manifest; return (manifest digest, layer descriptors)."""
        config = self.push_blob(repo, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        descs = [self.push_blob(repo, data) for data in layers]
        if oci:
            lt = layer_type or "application/vnd.oci.image.layer.v1.tar"
            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                   "layers": [{"mediaType": lt, **d} for d in descs]}
            media = OCI_MANIFEST
        else:
            lt = layer_type or "application/vnd.docker.image.rootfs.diff.tar.gzip"
            doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
                   "layers": [{"mediaType": lt, **d} for d in descs]}
            media = DOCKER_MANIFEST
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.push_manifest(repo, tag or digest, doc, media)
        return digest, descs


@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    if not os.access(BINARY, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("CI must run these tests: .ci/run installs docker-registry")
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
    server = Distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.stop()


def _blob(reg, digest: str) -> bytes:
    return reg.cache.blob_path(Digest.parse(digest)).read_bytes()


def _pseudo(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("oci", [False, True], ids=["docker-schema2", "oci-manifest"])
def test_pull_an_image_manifest(distribution, make_registry, oci):
    repo = f"library/img-{'oci' if oci else 'docker'}"
    layers = [_pseudo(20 * MIB, 1 + oci), _pseudo(3000, 3 + oci)]
    digest, descs = distribution.push_image(repo, "v1", layers, oci=oci)
    reg = make_registry(chunking_threshold=1 * MIB)
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1")
    assert str(m.digest) == digest
    for data, d in zip(layers, descs):
        assert _blob(reg, d["digest"]) == data
    # No chunksums here: the 20 MiB layer came in client-split ranges.
    assert distribution.blob_gets(repo, descs[0]["digest"]) >= 3
    local = Name(f"127.0.0.1:{distribution.port}", "library", repo.split("/")[1], "v1")
    assert reg.cache.resolve(local) == Digest.parse(digest)


def test_model_artifact_layer_types_are_pulled_as_blobs(distribution, make_registry):
    # ModelPack / Docker Model Runner style: an OCI manifest whose layers have model media types.
    repo = "ai/tiny-model"
    weights = _pseudo(2 * MIB, 5)
    digest, descs = distribution.push_image(repo, "q4", [weights], oci=True, layer_type="application/vnd.docker.ai.gguf.v3")
    reg = make_registry()
    reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:q4")
    assert _blob(reg, descs[0]["digest"]) == weights


@pytest.mark.parametrize("media", [OCI_INDEX, DOCKER_LIST], ids=["oci-index", "docker-manifest-list"])
def test_index_resolves_to_the_platform(distribution, make_registry, media):
    repo = f"library/multi-{'oci' if media == OCI_INDEX else 'docker'}"
    oci = media == OCI_INDEX
    amd, amd_layers = distribution.push_image(repo, None, [_pseudo(MIB, 10)], oci=oci)
    arm, arm_layers = distribution.push_image(repo, None, [_pseudo(MIB, 11)], oci=oci)
    entry_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    sizes = {d: len(requests.get(f"{distribution.url}/v2/{repo}/manifests/{d}", headers={"Accept": entry_type}, timeout=10).content) for d in (amd, arm)}
    index = {"schemaVersion": 2, "mediaType": media, "manifests": [
        {"mediaType": entry_type, "digest": amd, "size": sizes[amd], "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": entry_type, "digest": arm, "size": sizes[arm], "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": entry_type, "digest": amd, "size": sizes[amd], "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}
    distribution.push_manifest(repo, "multi", index, media)
    name = f"http://127.0.0.1:{distribution.port}/{repo}:multi"
    m = make_registry(platform="linux/amd64").pull(name)
    assert str(m.digest) == amd
    reg = make_registry(platform="linux/arm64")
    m = reg.pull(name)
    assert str(m.digest) == arm and _blob(reg, arm_layers[0]["digest"]) == _pseudo(MIB, 11)
    with pytest.raises(ModelNotFoundError, match="linux/riscv64.*linux/amd64, linux/arm64/v8"):
        make_registry(platform="linux/riscv64").pull(name)


def test_single_entry_index_without_platform(distribution, make_registry):
    repo = "ai/artifact"
    inner, layers = distribution.push_image(repo, None, [_pseudo(MIB, 20)], oci=True, layer_type="application/vnd.cncf.model.weight.v1.raw")
    size = len(requests.get(f"{distribution.url}/v2/{repo}/manifests/{inner}", headers={"Accept": OCI_MANIFEST}, timeout=10).content)
    distribution.push_manifest(repo, "v1", {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": inner, "size": size}]}, OCI_INDEX)
    reg = make_registry(platform="linux/s390x")  # whatever the platform: the only entry it is
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1")
    assert str(m.digest) == inner and _blob(reg, layers[0]["digest"]) == _pseudo(MIB, 20)


def test_digest_pin_through_manifests(distribution, make_registry):
    repo = "library/pinned"
    digest, descs = distribution.push_image(repo, "v1", [_pseudo(MIB, 30)], oci=True)
    reg = make_registry()
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1@{digest}")
    assert str(m.digest) == digest and _blob(reg, descs[0]["digest"]) == _pseudo(MIB, 30)
    with pytest.raises(ModelNotFoundError):
        reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1@sha256:{'0' * 64}")


def test_unknown_repository_and_tag_are_not_found(distribution, make_registry):
    reg = make_registry()
    with pytest.raises(ModelNotFoundError):
        reg.pull(f"http://127.0.0.1:{distribution.port}/library/nothing-here:v1")
    distribution.push_image("library/sometags", "v1", [b"x" * 100], oci=True)
    with pytest.raises(ModelNotFoundError):
        reg.pull(f"http://127.0.0.1:{distribution.port}/library/sometags:v2")


def test_nested_repository_path(distribution, make_registry):
    # GitLab, Harbor, ECR and Artifactory name repositories team/vision/detector.
    repo = "team/vision/detector"
    weights = _pseudo(MIB, 40)
    digest, descs = distribution.push_image(repo, "v2", [weights], oci=True)
    reg = make_registry()
    name = f"http://127.0.0.1:{distribution.port}/{repo}:v2"
    m = reg.pull(name)
    assert str(m.digest) == digest and _blob(reg, descs[0]["digest"]) == weights
    stored = reg.cache.manifests_dir / f"127.0.0.1:{distribution.port}" / "team" / "vision" / "detector" / "v2"
    assert stored.is_file()
    listed = [str(n) for n, _m in reg.list_local()]
    assert listed == [f"127.0.0.1:{distribution.port}/{repo}:v2"]
    assert reg.unlink(listed[0])
    assert not stored.exists()
