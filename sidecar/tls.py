"""HTTPS for the listener: config.yaml's `tls` certificate and key, read again when they change.

A renewed certificate (certbot's deploy hook copying files, cert-manager updating a Secret volume
through its `..data` symlink, a file rewritten in place) is served to new connections within
seconds, without a restart: a thread looks at the files' identity every second and, once they have
stopped changing, builds a fresh SSLContext. A pair that does not load keeps the previous context.
Connections already open keep the certificate they shook hands with.
"""

from __future__ import annotations

import datetime
import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import logs

POLL_S = 1.0  # a change is seen within one poll and loaded at the next, once the files hold still
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
_PLAIN = b'{"error":"this port speaks HTTPS: use https://"}'
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(_PLAIN), _PLAIN))


@dataclass(frozen=True)
class Files:
    """The certificate chain (PEM, leaf first) and its private key (PEM, unencrypted): absolute paths."""

    cert_file: str
    key_file: str


class TLSError(ValueError):
    """A certificate or key that cannot be served; `key` is the config key at fault."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.reason = key, reason


class _Socket(ssl.SSLSocket):
    """An SSLSocket that answers RequestReader's wait for a request's first byte.

    RequestReader waits with recv(1, MSG_PEEK), which leaves the byte in the kernel. TLS bytes
    cannot be peeked at (the kernel holds records, not the request), so this waits for the kernel
    socket to be readable, or for data OpenSSL has already decrypted, and returns b"" either way.
    """

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags != socket.MSG_PEEK:
            return super().recv(buflen, flags)
        if not self.pending():
            timeout = self.gettimeout()
            poller = select.poll()
            poller.register(self.fileno(), select.POLLIN)
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("timed out")
        return b""


def _no_passphrase() -> bytes:
    raise TLSError("key_file", "the key is encrypted with a passphrase; give an unencrypted key"
                               " (protect it by file permissions, or systemd's LoadCredential)")


def load(files: Files) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) for the pair; TLSError naming the file at fault."""
    for key, path in (("cert_file", files.cert_file), ("key_file", files.key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TLSError(key, f"cannot read {path}: {e.strerror}") from e
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cafile=files.cert_file)
    except (ssl.SSLError, ValueError) as e:
        raise TLSError("cert_file", f"no PEM certificate in {files.cert_file} ({_reason(e)})") from e
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    context.sslsocket_class = _Socket
    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=_no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TLSError("key_file", f"{files.key_file} is not the key of the certificate in"
                                       f" {files.cert_file}") from e
        raise TLSError("key_file", f"no usable PEM private key in {files.key_file} ({_reason(e)})") from e
    except OSError as e:  # replaced between the check above and now
        raise TLSError("cert_file", f"cannot read {files.cert_file} or {files.key_file}: {e.strerror}") from e
    return context


def _reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or e)


def describe(cert_file: str) -> dict[str, Any]:
    """The leaf certificate's subject, serial and notAfter for a log line; {} when it cannot be read."""
    try:
        from cryptography import x509  # only with tls configured: most deployments never load it

        with open(cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
    except (OSError, ValueError, IndexError):
        return {}
    # not_valid_after_utc from cryptography 42 on; the naive not_valid_after before it.
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.UTC)
    days = (not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
    return {"subject": cert.subject.rfc4514_string(), "serial": f"{cert.serial_number:x}",
            "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "days_left": round(days, 1)}


def _stamp(files: Files) -> tuple[object, ...]:
    """What changes when a file is rewritten, renamed over, or its symlink re-pointed (stat follows links)."""
    out: list[object] = []
    for path in (files.cert_file, files.key_file):
        try:
            st = os.stat(path)
        except OSError as e:
            out.append(e.errno)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class Certificates:
    """The context new connections get, for one pair of files, rebuilt when the files change."""

    def __init__(self, files: Files, poll_s: float = POLL_S) -> None:
        self.files = files
        self._tried = _stamp(files)  # before loading: a change during the load is seen at the next poll
        self.context = load(files)  # one reference: a connection reads it once, a reload replaces it
        logs.info("tls.loaded", cert_file=files.cert_file, key_file=files.key_file,
                  minimum_version=MINIMUM_VERSION.name, **describe(files.cert_file))
        self._poll_s = poll_s
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="tls", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        seen = self._tried
        while not self._stop.wait(self._poll_s):
            stamp = _stamp(self.files)
            # Load only files that held still for one poll: certbot writes the chain, then the key;
            # a half-replaced pair would be refused, logged, and tried again a second later.
            if stamp != self._tried and stamp == seen:
                self._reload(stamp)
            seen = stamp

    def _reload(self, stamp: tuple[object, ...]) -> None:
        self._tried = stamp  # these files, good or bad, are not tried (nor logged) again until they change
        started = time.monotonic()
        try:
            context = load(self.files)
        except TLSError as e:
            logs.error("tls.reload_failed", file=getattr(self.files, e.key), key=f"tls.{e.key}", error=e.reason,
                       detail="still serving the previous certificate; tried again when the files change")
            return
        self.context = context
        logs.info("tls.reloaded", cert_file=self.files.cert_file, ms=round((time.monotonic() - started) * 1000, 1),
                  **describe(self.files.cert_file))


def follow(current: Certificates | None, files: Files | None) -> Certificates | None:
    """The certificates a reloaded config names: `current` when it already serves those files."""
    if current is not None and current.files == files:
        return current
    if files is None:
        if current is not None:
            current.stop()
            logs.warning("tls.disabled", detail="new connections are plain HTTP")
        return None
    try:
        new = Certificates(files)
    except TLSError as e:  # they loaded when the config was checked, a moment ago
        logs.error("tls.reload_failed", file=getattr(files, e.key), key=f"tls.{e.key}", error=e.reason,
                   detail="new connections keep what they had")
        return current
    if current is not None:
        current.stop()
    return new


def accept(context: ssl.SSLContext, raw: socket.socket, timeout: float, remote: str) -> ssl.SSLSocket:
    """The TLS side of an accepted connection, its handshake done within `timeout` seconds.

    It runs over a duplicate of the descriptor: the raw socket stays what connection admission
    knows (its poll, an eviction's shutdown, its close after release), and the TLS socket is the
    handler's to close. Raises ConnectionError (no TLS, an old version, a reset) or TimeoutError;
    a plain HTTP request gets a plain 400 that says to use https.
    """
    secure = context.wrap_socket(raw.dup(), server_side=True, do_handshake_on_connect=False)
    try:
        _handshake(secure, time.monotonic() + timeout, timeout)
    except ssl.SSLError as e:
        secure.close()
        reason = _reason(e)
        if reason == "HTTP_REQUEST":
            _answer_plain(raw)
            logs.warning("request.rejected", remote=remote, status=400, reason="plain_http",
                         error="plain HTTP on the HTTPS port")
        else:
            logs.debug("tls.handshake_failed", remote=remote, error=reason)
        raise ConnectionAbortedError(f"TLS handshake: {reason}") from e
    except BaseException:
        secure.close()
        raise
    return secure


def _handshake(secure: ssl.SSLSocket, deadline: float, timeout: float) -> None:
    """do_handshake() against one deadline (a socket timeout bounds only one read: a client could trickle)."""
    secure.setblocking(False)
    poller = select.poll()
    poller.register(secure.fileno(), select.POLLIN)
    while True:
        try:
            secure.do_handshake()
            return
        except ssl.SSLWantReadError:
            poller.modify(secure.fileno(), select.POLLIN)
        except ssl.SSLWantWriteError:
            poller.modify(secure.fileno(), select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(f"TLS handshake not complete within {timeout:g} s")


def _answer_plain(raw: socket.socket) -> None:
    """One non-blocking send on the raw socket (the descriptor is non-blocking since the handshake)."""
    try:
        raw.recv(65536)  # drain: a close with unread data would reset the answer
    except OSError:
        pass
    try:
        raw.send(PLAIN_HTTP_ANSWER)
    except OSError:
        pass
