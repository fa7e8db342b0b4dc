"""HTTPS on the listener (`tls:`): a real sidecar, certificates made by the openssl command for each run,
clients that verify them against the test's own CA."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar import config as config_mod
from sidecar import sandbox
from sidecar.errors import ConfigError

from .conftest import BASIC, ROOT, Response, Sidecar, github_signature, start_sidecar, wait_for, write_config
from .support import outside_writable_dirs, table

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command to make certificates")

PUSH = json.dumps({"ref": "refs/heads/main"}).encode()


@dataclass
class PKI:
    """A throwaway CA in `directory` that signs leaf certificates for 127.0.0.1 and localhost."""

    directory: Path

    def __post_init__(self) -> None:
        self.ca = self.directory / "ca.pem"
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
        (self.directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.directory, check=True, capture_output=True, timeout=30)

    def leaf(self, name: str, serial: int) -> tuple[Path, Path]:
        """(certificate, key) of a new leaf with CN=name and this serial number."""
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
                      str(serial), "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def tls_config(directory: Path, cert: str, key: str) -> Path:
    """BASIC with `tls:` (paths relative to the config file)."""
    return write_config(directory, f"tls: {{{{cert_file: {cert}, key_file: {key}}}}}\n" + BASIC)


def https(port: int, context: ssl.SSLContext, method: str = "GET", path: str = "/healthz", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[Response, dict[str, Any]]:
    """One request on a new connection; the response and the certificate the server presented."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        peer = conn.sock.getpeercert()
        assert peer is not None, "the server presented no certificate"
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()), peer
    finally:
        conn.close()


def serial(port: int, context: ssl.SSLContext) -> int:
    return int(https(port, context)[1]["serialNumber"], 16)


@pytest.fixture(scope="module")
def secure(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    """One sidecar serving HTTPS with a leaf of serial 1; yields (sidecar, hook output dir)."""
    directory = tmp_path_factory.mktemp("secure")
    cert, key = pki.leaf("first", 1)
    sidecar = start_sidecar(tls_config(directory, str(cert), str(key)))
    yield sidecar, directory / "out"
    sidecar.stop()
    if sidecar.proc.stdout:
        sidecar.proc.stdout.close()


def test_signed_delivery_over_https_runs_its_hook(secure: tuple[Sidecar, Path], pki: PKI) -> None:
    sidecar, out = secure
    loaded = sidecar.wait_log(lambda e: e.get("msg") == "tls.loaded")
    assert loaded["subject"] == "CN=first" and loaded["minimum_version"] == "TLSv1_2" and loaded["not_after"]
    delivery = str(uuid.uuid4())
    resp, peer = https(sidecar.port, pki.client(), "POST", "/webhook", PUSH, {
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_signature(PUSH)})
    assert resp.status == 200, resp.body
    assert resp.json() == {"status": "accepted", "delivery": delivery, "routes": ["main_push", "every"]}
    assert dict(x[0] for x in peer["subject"]) == {"commonName": "first"}
    wait_for((out / f"{delivery}.main_push.body").exists)
    assert (out / f"{delivery}.main_push.body").read_bytes() == PUSH
    # Health and metrics on the same listener, over TLS too.
    assert https(sidecar.port, pki.client(), path="/readyz")[0].status == 200
    metrics = https(sidecar.port, pki.client(), path="/metrics")[0]
    assert metrics.status == 200 and b"webhook_" in metrics.body


def test_tls_1_1_is_refused_and_1_2_accepted(secure: tuple[Sidecar, Path], pki: PKI) -> None:
    sidecar, _ = secure
    old = pki.client()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1 itself is deprecated
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client's own OpenSSL would refuse TLS 1.1 otherwise
    with pytest.raises(ssl.SSLError) as refused:
        https(sidecar.port, old)
    assert "PROTOCOL_VERSION" in str(refused.value)  # the server's alert, not a local refusal
    current = pki.client()
    current.maximum_version = ssl.TLSVersion.TLSv1_2
    assert https(sidecar.port, current)[0].status == 200


def test_plain_http_and_stalled_clients_do_not_hold_the_server(secure: tuple[Sidecar, Path], pki: PKI) -> None:
    sidecar, _ = secure
    plain = sidecar.request("GET", "/healthz", timeout=5)  # plain HTTP to the HTTPS port
    assert plain.status == 400 and b"https://" in plain.body
    sidecar.wait_log(lambda e: e.get("msg") == "request.rejected" and e.get("reason") == "plain_http")
    # A client that connects and never finishes its handshake, and one that stops inside its request:
    # neither delays anyone else, and both are closed by the deadline (request_timeout_s: 2).
    silent = socket.create_connection(("127.0.0.1", sidecar.port), timeout=10)
    half = pki.client().wrap_socket(socket.create_connection(("127.0.0.1", sidecar.port), timeout=10),
                                    server_hostname="127.0.0.1")
    half.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert https(sidecar.port, pki.client())[0].status == 200
    assert time.monotonic() - started < 1.0
    assert silent.recv(100) == b""  # closed when the handshake's deadline passed
    try:
        answer = half.recv(4096)  # a 408, inside TLS (the deadline shut the raw socket, not the TLS state)
    except ssl.SSLError as e:
        # On a loaded machine the server's side of the handshake may still be running when the deadline
        # passes: then the connection ends with a TLS alert instead of the 408. Closed in time either way.
        answer = f"alert: {e.reason}".encode()
    assert answer.startswith((b"HTTP/1.1 408 ", b"alert: ")), answer
    assert 1.5 < time.monotonic() - started < 6
    silent.close()
    half.close()


def test_renewed_certificate_is_served_without_restart(pki: PKI, tmp_path: Path) -> None:
    # A Kubernetes Secret volume's layout: tls.crt -> ..data/tls.crt, ..data -> a timestamped directory.
    live = tmp_path / "tls"
    (live / "v1").mkdir(parents=True)
    cert, key = pki.leaf("one", 11)
    shutil.copy(cert, live / "v1" / "tls.crt")
    shutil.copy(key, live / "v1" / "tls.key")
    os.symlink("v1", live / "..data")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", live / name)
    sidecar = start_sidecar(tls_config(tmp_path, "tls/tls.crt", "tls/tls.key"))
    try:
        client = pki.client()
        assert serial(sidecar.port, client) == 11

        # 1. cert-manager's update: a new directory, then ..data re-pointed by rename.
        cert, key = pki.leaf("two", 12)
        (live / "v2").mkdir()
        shutil.copy(cert, live / "v2" / "tls.crt")
        shutil.copy(key, live / "v2" / "tls.key")
        os.symlink("v2", live / "..data_tmp")
        os.replace(live / "..data_tmp", live / "..data")
        changed = time.monotonic()
        wait_for(lambda: serial(sidecar.port, client) == 12, timeout=5, interval=0.1)
        assert time.monotonic() - changed < 5
        line = sidecar.wait_log(lambda e: e.get("msg") == "tls.reloaded" and e.get("serial") == "c")
        assert line["subject"] == "CN=two" and line["not_after"]

        # 2. certbot's deploy hook: new files renamed over the names the config gives.
        cert, key = pki.leaf("three", 13)
        shutil.copy(key, live / "key.tmp")
        os.replace(live / "key.tmp", live / "tls.key")
        shutil.copy(cert, live / "crt.tmp")
        os.replace(live / "crt.tmp", live / "tls.crt")
        wait_for(lambda: serial(sidecar.port, client) == 13, timeout=5, interval=0.1)

        # 3. A broken renewal (a certificate with some other key): refused, the last good pair still served.
        other, _ = pki.leaf("stray", 14)
        shutil.copy(other, live / "crt.tmp")
        os.replace(live / "crt.tmp", live / "tls.crt")
        failed = sidecar.wait_log(lambda e: e.get("msg") == "tls.reload_failed")
        assert failed["file"] == str(live / "tls.key") and "is not the key of" in failed["error"]
        assert serial(sidecar.port, client) == 13
        # 4. Garbage written in place: refused as well, naming the certificate file.
        (live / "tls.crt").write_text("not a certificate\n")
        sidecar.wait_log(lambda e: e.get("msg") == "tls.reload_failed" and e.get("key") == "tls.cert_file")
        assert serial(sidecar.port, client) == 13
        # 5. config.yaml names other files: a reload of the table, served to new connections.
        cert, key = pki.leaf("five", 15)
        tls_config(tmp_path, str(cert), str(key))
        wait_for(lambda: serial(sidecar.port, client) == 15, timeout=5, interval=0.1)
        assert sidecar.proc.poll() is None and len(sidecar.find_logs("server.listening")) == 1
    finally:
        sidecar.stop()
        if sidecar.proc.stdout:
            sidecar.proc.stdout.close()


def test_unusable_certificate_is_a_config_error_naming_the_file(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.leaf("cfg", 21)
    other, _ = pki.leaf("cfg-other", 22)
    cases = {
        ("missing.crt", str(key)): f"tls.cert_file: cannot read {tmp_path / 'missing.crt'}: No such file",
        (str(key), str(key)): f"tls.cert_file: no PEM certificate in {key}",
        (str(cert), str(cert)): f"tls.key_file: no usable PEM private key in {cert}",
        (str(other), str(key)): f"tls.key_file: {key} is not the key of the certificate in {other}",
    }
    for (cert_file, key_file), expected in cases.items():
        path = tls_config(tmp_path, cert_file, key_file)
        with pytest.raises(ConfigError) as e:
            config_mod.load(path, environ={"WEBHOOK_SECRET": "s"})
        assert len(e.value.errors) == 1 and f"config.yaml:1: {expected}" in e.value.errors[0], e.value.errors
    write_config(tmp_path, "tls: {{cert_file: a.crt, key_fil: b}}\n" + BASIC)
    with pytest.raises(ConfigError) as e:
        config_mod.load(tmp_path / "config.yaml", environ={"WEBHOOK_SECRET": "s"})
    assert any("tls: missing required key 'key_file'" in x for x in e.value.errors), e.value.errors
    assert any("tls.key_fil: unknown key" in x for x in e.value.errors), e.value.errors
    # And `serve` refuses to start, naming the file, rather than serving plain HTTP.
    tls_config(tmp_path, "missing.crt", str(key))
    served = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--config", str(tmp_path / "config.yaml"),
                             "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**os.environ, "WEBHOOK_SECRET": "s"})
    assert served.returncode == 1 and f"cannot read {tmp_path / 'missing.crt'}" in served.stderr, served.stderr


@pytest.mark.skipif(sandbox.abi() == 0, reason="the kernel has no Landlock (or it is disabled)")
def test_hooks_cannot_read_the_tls_key(pki: PKI, tmp_path: Path) -> None:

    state = outside_writable_dirs()
    try:
        cert, key = pki.leaf("hidden", 41)
        (state / "tls").mkdir()
        shutil.copy(cert, state / "tls" / "tls.crt")
        shutil.copy(key, state / "tls" / "tls.key")
        out = tmp_path / "out"
        out.mkdir()
        config = state / "config.yaml"
        config.write_text(table(f"""
- event: "*"
  run: [sh, -c, 'cat tls/tls.crt > "$OUT/crt"; cat tls/tls.key > "$OUT/key" 2>&1; echo $? > "$OUT/rc"']
  env: {{OUT: {out}}}
""", "tls: {cert_file: tls/tls.crt, key_file: tls/tls.key}\n"))
        sidecar = start_sidecar(config)
        try:
            line = sidecar.wait_log(lambda e: e.get("msg") == "hooks.sandboxed")
            assert str(state / "tls" / "tls.key") in line["hidden"]
            resp, _ = https(sidecar.port, pki.client(), "POST", "/webhook", PUSH, {
                "Content-Type": "application/json", "X-GitHub-Event": "push",
                "X-Hub-Signature-256": github_signature(PUSH)})
            assert resp.status == 200
            wait_for((out / "rc").exists)
            assert (out / "rc").read_text().strip() != "0" and b"PRIVATE KEY" not in (out / "key").read_bytes()
            assert (out / "crt").read_bytes() == cert.read_bytes()  # the certificate is public
        finally:
            sidecar.stop()
            if sidecar.proc.stdout:
                sidecar.proc.stdout.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
