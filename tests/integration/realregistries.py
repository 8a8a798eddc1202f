"""Real servers for the interoperability tests: Debian's docker-registry (CNCF distribution), a token server, a test CA.

``Distribution`` runs ``docker-registry serve`` on 127.0.0.1 with filesystem
storage and keeps its access log; it pushes images the way a registry client
does (monolithic upload, then the manifest), answering Bearer challenges
itself so the fixtures do not depend on the code under test.
``TokenServer`` is a Docker token service (the protocol distribution's
``auth: token`` expects): RS256 JWTs signed with the openssl command line,
identified by the libtrust key ID that distribution derives from its
``rootcertbundle``; it logs every request with its Authorization header.
``make_pki`` makes a CA and a server certificate for 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SERVICE = "chunkpull-test-registry"
ISSUER = "chunkpull-test-issuer"


def require_distribution() -> None:
    if not os.access(BINARY, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("CI must run these tests: .ci/run installs docker-registry")
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it has not gone within timeout_s (the tests' and benchmarks' one way)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(cwd: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], cwd=cwd, input=data, check=True, capture_output=True).stdout


def make_pki(d: Path) -> Path:
    """Make ca.pem/ca.key, server.pem/server.key (for IP 127.0.0.1) and cadir/ (hashed) in d; return d."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=chunkpull test CA")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    (d / "cadir").mkdir(exist_ok=True)
    shutil.copy(d / "ca.pem", d / "cadir" / "ca.pem")
    _openssl(d, "rehash", str(d / "cadir"))
    return d


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker token service on 127.0.0.1 (see the module docstring).

    ``users`` may ask for any action; anonymous callers get ``pull`` on
    repositories under ``public/`` only (and an empty grant elsewhere, as
    real token services answer).  ``rotate()`` switches to a new signing
    key: tokens issued before then stop verifying once the registry trusts
    only the new key.
    """

    def __init__(self, root: Path, users: dict[str, str], *, tls: Path | None = None) -> None:
        self.root, self.users = root, users
        self.log: list[dict] = []
        self.generation = 0
        self._lock = threading.Lock()
        self.rotate()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls / "server.pem", tls / "server.key")
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.realm = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def rotate(self) -> None:
        """Sign with a fresh key from now on; ``cert_path`` names its certificate."""
        with self._lock:
            self.generation += 1
            key, cert = self.root / f"token{self.generation}.key", self.root / f"token{self.generation}.pem"
            _openssl(self.root, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", cert.name,
                     "-days", "2", "-subj", f"/CN=chunkpull token signer {self.generation}")
            der = _openssl(self.root, "pkey", "-in", key.name, "-pubout", "-outform", "DER")
            b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
            self.kid = ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))  # libtrust's key ID
            self.key_path, self.cert_path = key, cert

    def config(self) -> str:
        """The ``auth:`` section of a docker-registry config that trusts this server's current key."""
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {self.cert_path}\n")

    def requests_with(self, secret: str) -> int:
        """How many requests carried secret in their Authorization header (Basic, decoded)."""
        return sum(1 for entry in self.log if secret in entry["credentials"])

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict]:
        query = parse_qs(urlsplit(path).query)
        user, credentials = "", ""
        if authorization and authorization.lower().startswith("basic "):
            credentials = base64.b64decode(authorization.split(" ", 1)[1]).decode(errors="replace")
            name, _, password = credentials.partition(":")
            if self.users.get(name) != password:
                self.log.append({"path": path, "user": None, "credentials": credentials})
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
            user = name
        self.log.append({"path": path, "user": user, "credentials": credentials})
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user else [a for a in wanted if a == "pull" and repo.startswith("public/")]
            if kind == "repository" and granted:
                access.append({"type": "repository", "name": repo, "actions": granted})
        return 200, {"token": self.sign(user, access), "expires_in": 300, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def sign(self, user: str, access: list[dict]) -> str:
        now = int(time.time())
        with self._lock:
            header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
            claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                      "jti": secrets.token_hex(8), "access": access}
            signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}".encode()
            signature = _openssl(self.root, "dgst", "-sha256", "-sign", self.key_path.name, data=signing_input)
        return f"{signing_input.decode()}.{_b64url(signature)}"


class Distribution:
    """A running docker-registry on 127.0.0.1 with filesystem storage; its access log is kept.

    ``extra`` is appended to the config (an ``auth:`` or ``proxy:`` section);
    ``tls`` is a directory from ``make_pki`` to serve https with its server
    certificate; ``port`` reuses a port (to restart with a new config).
    ``auth`` is what the fixture's own pushes authenticate with.
    """

    def __init__(self, root: Path, *, extra: str = "", auth: tuple[str, str] | None = None, tls: Path | None = None,
                 port: int | None = None) -> None:
        self.root, self.auth = root, auth
        self.port = port or free_port()
        self.verify: str | bool = str(tls / "ca.pem") if tls else True
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        tls_conf = f"  tls:\n    certificate: {tls / 'server.pem'}\n    key: {tls / 'server.key'}\n" if tls else ""
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{tls_conf}" + extra
        )
        self.log_path = root / "registry.log"
        self._log = open(self.log_path, "ab")
        # distribution reads REGISTRY_* variables as config overrides (REGISTRY_AUTH_FILE would be auth.file).
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._tokens: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/v2/", timeout=2, verify=self.verify).status_code in (200, 401):
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()

    def blob_gets(self, repo: str, digest: str) -> int:
        """How many GETs of this blob the access log shows."""
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if f'"GET /v2/{repo}/blobs/{digest} ' in line)

    # -- pushing, as a registry client would --------------------------------------

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        """One request, answering a Basic or Bearer challenge with self.auth."""
        headers = kwargs.pop("headers", {})
        for _ in range(2):
            scope_key = urlsplit(url).path
            token = next((t for k, t in self._tokens.items() if scope_key.startswith(k)), None)
            h = dict(headers, Authorization=f"Bearer {token}") if token else headers
            r = requests.request(method, url, headers=h, auth=None if token else self.auth, verify=self.verify, timeout=60, **kwargs)
            challenge = r.headers.get("WWW-Authenticate", "")
            if r.status_code != 401 or not challenge.lower().startswith("bearer"):
                return r
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            t = requests.get(params["realm"], params={"service": params.get("service"), "scope": params.get("scope")}, auth=self.auth,
                             verify=self.verify, timeout=30)
            repo = params.get("scope", "::").split(":")[1]
            self._tokens[f"/v2/{repo}/"] = t.json()["token"]
        return r

    def push_blob(self, repo: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self._send("POST", f"{self.url}/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        location = location if location.startswith("http") else self.url + location
        sep = "&" if "?" in location else "?"
        r = self._send("PUT", f"{location}{sep}digest={digest}", data=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, reference: str, doc: dict, media_type: str) -> str:
        data = json.dumps(doc).encode()
        r = self._send("PUT", f"{self.url}/v2/{repo}/manifests/{reference}", data=data, headers={"Content-Type": media_type})
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


def pull_through_pair(root: Path) -> tuple[Distribution, Distribution]:
    """Start an origin docker-registry and one in ``proxy:`` mode in front of it (under root/origin, root/cache)."""
    (root / "origin").mkdir()
    (root / "cache").mkdir()
    origin = Distribution(root / "origin")
    try:
        return origin, Distribution(root / "cache", extra=f"proxy:\n  remoteurl: {origin.url}\n")
    except BaseException:
        origin.stop()
        raise


def pseudo(n: int, seed: int) -> bytes:
    """n pseudo-random bytes, the same for the same seed."""
    import random

    return random.Random(seed).randbytes(n)
