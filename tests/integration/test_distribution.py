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


import pytest
import requests

from chunkpull.core.digest import Digest
from chunkpull.core.names import Name
from chunkpull.errors import ModelNotFoundError

pytestmark = pytest.mark.integration

from realregistries import DOCKER_LIST, DOCKER_MANIFEST, MIB, OCI_INDEX, OCI_MANIFEST, Distribution, pseudo, require_distribution


@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    require_distribution()
    server = Distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.stop()


def _blob(reg, digest: str) -> bytes:
    return reg.cache.blob_path(Digest.parse(digest)).read_bytes()


@pytest.mark.parametrize("oci", [False, True], ids=["docker-schema2", "oci-manifest"])
def test_pull_an_image_manifest(distribution, make_registry, oci):
    repo = f"library/img-{'oci' if oci else 'docker'}"
    layers = [pseudo(20 * MIB, 1 + oci), pseudo(3000, 3 + oci)]
    digest, descs = distribution.push_image(repo, "v1", layers, oci=oci)
    reg = make_registry(chunking_threshold=1 * MIB)
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1").manifest
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
    weights = pseudo(2 * MIB, 5)
    digest, descs = distribution.push_image(repo, "q4", [weights], oci=True, layer_type="application/vnd.docker.ai.gguf.v3")
    reg = make_registry()
    reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:q4")
    assert _blob(reg, descs[0]["digest"]) == weights


@pytest.mark.parametrize("media", [OCI_INDEX, DOCKER_LIST], ids=["oci-index", "docker-manifest-list"])
def test_index_resolves_to_the_platform(distribution, make_registry, media):
    repo = f"library/multi-{'oci' if media == OCI_INDEX else 'docker'}"
    oci = media == OCI_INDEX
    amd, amd_layers = distribution.push_image(repo, None, [pseudo(MIB, 10)], oci=oci)
    arm, arm_layers = distribution.push_image(repo, None, [pseudo(MIB, 11)], oci=oci)
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
    m = reg.pull(name).manifest
    assert str(m.digest) == arm and _blob(reg, arm_layers[0]["digest"]) == pseudo(MIB, 11)
    with pytest.raises(ModelNotFoundError, match="linux/riscv64.*linux/amd64, linux/arm64/v8"):
        make_registry(platform="linux/riscv64").pull(name)


def test_single_entry_index_without_platform(distribution, make_registry):
    repo = "ai/artifact"
    inner, layers = distribution.push_image(repo, None, [pseudo(MIB, 20)], oci=True, layer_type="application/vnd.cncf.model.weight.v1.raw")
    size = len(requests.get(f"{distribution.url}/v2/{repo}/manifests/{inner}", headers={"Accept": OCI_MANIFEST}, timeout=10).content)
    distribution.push_manifest(repo, "v1", {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": inner, "size": size}]}, OCI_INDEX)
    reg = make_registry(platform="linux/s390x")  # whatever the platform: the only entry it is
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1").manifest
    assert str(m.digest) == inner and _blob(reg, layers[0]["digest"]) == pseudo(MIB, 20)


def test_digest_pin_through_manifests(distribution, make_registry):
    repo = "library/pinned"
    digest, descs = distribution.push_image(repo, "v1", [pseudo(MIB, 30)], oci=True)
    reg = make_registry()
    m = reg.pull(f"http://127.0.0.1:{distribution.port}/{repo}:v1@{digest}").manifest
    assert str(m.digest) == digest and _blob(reg, descs[0]["digest"]) == pseudo(MIB, 30)
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
    weights = pseudo(MIB, 40)
    digest, descs = distribution.push_image(repo, "v2", [weights], oci=True)
    reg = make_registry()
    name = f"http://127.0.0.1:{distribution.port}/{repo}:v2"
    m = reg.pull(name).manifest
    assert str(m.digest) == digest and _blob(reg, descs[0]["digest"]) == weights
    stored = reg.cache.manifests_dir / f"127.0.0.1:{distribution.port}" / "team" / "vision" / "detector" / "v2"
    assert stored.is_file()
    listed = [str(n) for n, _m in reg.list_local()]
    assert listed == [f"127.0.0.1:{distribution.port}/{repo}:v2"]
    assert reg.unlink(listed[0])
    assert not stored.exists()
