"""A real HTTP target for forward tests: a threaded server on 127.0.0.1 that answers each path from a
script (statuses, Retry-After, redirects, slow answers, dropped connections) and records every request
it got, with its headers, body and which connection carried it. Optionally HTTPS, with a throwaway CA
made here by `cryptography`.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import socketserver
import ssl
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Answer:
    """One scripted answer: wait `delay_s`, then answer (or `drop` the connection without a word)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    close: bool = False  # answer with Connection: close


@dataclass(frozen=True)
class Received:
    """A request as the target read it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # the same number for requests that came on one connection
    at: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_map(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.server.owner
        path = self.path.split("?")[0]
        target.record(Received(self.command, self.path, list(self.headers.items()), body, self.connection_id,
                               time.monotonic()))
        answer = target.next_answer(path)
        if answer.delay_s and target.stopping.wait(answer.delay_s):
            self.close_connection = True
            return
        if answer.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if answer.close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)

    do_POST = _serve
    do_GET = _serve
    do_OPTIONS = _serve


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: HttpTarget, tls: ssl.SSLContext | None) -> None:
        self.owner, self.tls = owner, tls
        self._open: dict[int, socket.socket] = {}
        self._count = 0
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:  # the handshake runs on the handler's thread, at its first read
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or refuses our certificate is part of the tests; anything else is shown."""
        import sys

        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            super().handle_error(request, client_address)

    def opened(self, sock: socket.socket) -> int:
        with self._lock:
            self._count += 1
            self._open[self._count] = sock
            return self._count

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open = {k: v for k, v in self._open.items() if v is not sock}

    def drop_idle(self) -> int:
        """Shut every open connection down (an application's keep-alive timeout); how many there were."""
        with self._lock:
            socks = list(self._open.values())
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def connections(self) -> int:
        with self._lock:
            return self._count

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)


class HttpTarget:
    """Start with `with HttpTarget() as target:`; script answers per path; read `target.requests()`.

    A path answers its scripted answers in order, then `default` (200) for ever.
    """

    def __init__(self, tls: ssl.SSLContext | None = None, default: Answer | None = None) -> None:
        self.default = default or Answer()
        self.stopping = threading.Event()
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._received: list[Received] = []
        self._lock = threading.Condition()
        self._server = _Server(self, tls)
        self.port = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> HttpTarget:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.drop_idle()
        self._server.server_close()
        self._thread.join(5)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def script(self, path: str, *answers: Answer | int) -> None:
        """Answers for `path`, in order (an int is that status with an empty body)."""
        with self._lock:
            self._scripts[path].extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def clear_scripts(self) -> None:
        """Forget the answers still scripted: every path answers `default` from now on."""
        with self._lock:
            self._scripts.clear()

    def next_answer(self, path: str) -> Answer:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else self.default

    def record(self, request: Received) -> None:
        with self._lock:
            self._received.append(request)
            self._lock.notify_all()

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_requests(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[Received]:
        """The first `count` requests (to `path`), waiting for them up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(got := [r for r in self._received if path is None or r.path == path]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} of {count} requests within {timeout}s")
                self._lock.wait(left)
            return got[:count]

    def drop_idle(self) -> int:
        return self._server.drop_idle()

    def connections(self) -> int:
        """How many connections the target accepted so far."""
        return self._server.connections()

    def open_connections(self) -> int:
        """How many of them are still open on the target's side."""
        return self._server.open_connections()


@dataclass(frozen=True)
class PKI:
    """A CA (ca.pem in `directory`) and a server context whose certificate it signed for 127.0.0.1."""

    ca_file: Path
    server: ssl.SSLContext


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path, host: str = "127.0.0.1") -> PKI:
    """A throwaway CA and a leaf for `host` (an IP address) signed by it; both valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("forward test CA")).issuer_name(_name("forward test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = directory / "leaf.pem", directory / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return PKI(ca_file, server)


def serving(tls: ssl.SSLContext | None = None) -> Iterator[HttpTarget]:
    """For a fixture: `yield from serving()`."""
    with HttpTarget(tls) as target:
        yield target
