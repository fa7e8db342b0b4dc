"""HTTP/1.1 framing and its limits: the request line, the header block, Content-Length.

Stricter than the stdlib's BaseHTTPRequestHandler behind it: HTTP/0.9 is refused, the header
block is at most 64 KiB and 99 fields of `name: value` lines without obs-fold, no chunked bodies.
What is done with a request (admission, deadlines, answers) is the subclasses' business.
"""

from __future__ import annotations

import io
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from . import logs
from .errors import BadRequest, LengthRequired, PayloadTooLarge

DIGITS = re.compile(r"[0-9]+")
HTTP_VERSION = re.compile(r"HTTP/([0-9]{1,10})\.([0-9]{1,10})")
# A header line: a token, a colon, a value without CR, LF or NUL (so no obs-fold, no bare CR).
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*\r?\n")
# A whole header block of such lines, each ending in CRLF, then the blank line: what senders send.
HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*\r\n)*\r\n")
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_FIELDS = 99  # http.client refuses more than 100 lines, the blank one included


class Headers:
    """A request's header fields by lower-case name, built from lines _read_header_block checked.

    What the handler and providers use of http.client's HTTPMessage (get, get_all, items) with
    the same values: the first field of a name wins in get(), surrounding SP and HTAB are not
    part of a value, bytes are ISO-8859-1. The email parser behind HTTPMessage cost about a
    fifth of a delivery's CPU.
    """

    __slots__ = ("_fields",)

    def __init__(self, lines: list[bytes]) -> None:
        # Each line ends in CRLF and holds no other CR (see _read_header_block): one decode for all
        # of them (names are ASCII, so ISO-8859-1 reads them alike), then plain str work per line.
        fields: dict[str, list[str]] = {}
        for line in b"".join(lines).decode("iso-8859-1").split("\r\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            key = name.lower()
            found = fields.get(key)
            if found is None:
                fields[key] = [value.strip(" \t")]
            else:
                found.append(value.strip(" \t"))
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: Any = None) -> Any:
        values = self._fields.get(name.lower())
        return list(values) if values else default

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, values in self._fields.items() for value in values]


class RequestHeaders(Protocol):
    """What the handler reads of a request's header fields: a Headers, or for a rarer spelling of
    HTTP/1.x the stdlib's message (BaseHTTPRequestHandler.parse_request builds it)."""

    def get(self, name: str, default: Any = None) -> Any: ...
    def get_all(self, name: str, default: Any = None) -> Any: ...


def content_length(headers: RequestHeaders, limit: int) -> int:
    """The body's length from one Content-Length; 411 for none or a transfer coding, 413 above `limit`."""
    if headers.get("Transfer-Encoding") is not None:
        raise LengthRequired("chunked or other transfer codings are not accepted; send Content-Length")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise LengthRequired("Content-Length required")
    given = {v.strip(" \t") for v in values}
    # ASCII digits only: str.isdigit() takes '\u00b2', which int() refuses. A length of more
    # than 18 digits is too large without int() (which refuses more than 4300 of them).
    if len(given) != 1 or not DIGITS.fullmatch(value := given.pop()):
        raise BadRequest("invalid Content-Length", reason="bad_length")
    digits = value.lstrip("0") or "0"
    length = int(digits) if len(digits) <= 18 else limit + 1
    if length > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes", reason="too_large")
    return length


class Http11(BaseHTTPRequestHandler):
    """The stdlib's request parsing behind stricter framing; send_error is the subclass's answer."""

    protocol_version = "HTTP/1.1"
    server_version = "webhook-sidecar"
    sys_version = ""
    # Headers and body are one write, and no Nagle delay either.
    disable_nagle_algorithm = True
    raw_requestline: bytes  # set by the stdlib's handle_one_request
    request_headers: RequestHeaders  # set by parse_request: the stdlib's `headers` would be an email Message
    buffered: io.BufferedReader  # rfile, typed: rfile's type has no peek()
    expired = False  # the request missed its deadline (a subclass sets the deadline)
    expects_continue = False

    def parse_request(self) -> bool:
        """Parse the request line and header block; False once an error is answered.

        HTTP/0.9 is refused (a bare `GET /` would get an answer without status line). The header
        block is read here first: at most 64 KiB and 99 fields, each line `name: value` without
        obs-fold; a bare CR or NUL becomes a space (the email parser behind http.client splits lines
        at a bare CR, and silently drops every header after a line it cannot parse). A request line
        or header block cut short (see incomplete) is never handled with the headers so far.
        """
        raw = self.raw_requestline
        words = str(raw, "iso-8859-1").rstrip("\r\n").split()
        self.command, self.request_version = (words[0] if words else ""), self.protocol_version
        if not raw.endswith(b"\n"):
            self.incomplete()
            return False
        version = HTTP_VERSION.fullmatch(words[2]) if len(words) == 3 else None
        if (len(words) == 2 and words[0] == "GET") or (version and int(version[1]) < 1):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/0.9 is not supported")
            return False
        if not version or int(version[1]) >= 2:
            return super().parse_request()  # 400 or 505 from the request line alone, no header read
        lines = self._read_header_block()
        if lines is None:
            return False
        if words[2] in ("HTTP/1.1", "HTTP/1.0"):
            return self._parse_head(words, Headers(lines))
        # A rarer spelling of 1.x (HTTP/1.01): the stdlib's rules, on the checked header block.
        stream, self.rfile = self.rfile, io.BytesIO(b"".join(lines) + b"\r\n")
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = stream
        self.request_headers = self.headers
        return parsed

    def _parse_head(self, words: list[str], headers: Headers) -> bool:
        """What BaseHTTPRequestHandler.parse_request does for HTTP/1.0 and 1.1, without the email parser."""
        self.command, self.path, self.request_version = words
        self.requestline = " ".join(words)
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # as the stdlib does (gh-87389)
        self.request_headers = headers
        self.close_connection = self.request_version != "HTTP/1.1"
        connection = headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if self.request_version == "HTTP/1.1" and headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _read_header_block(self) -> list[bytes] | None:
        """The header lines up to the blank one, each ending in CRLF, or None once an error is answered."""
        # Fast path: the whole block already buffered (a request's head comes in one segment) and
        # every line a plain `name: value` CRLF line: one match, one read. Anything else (a bare LF,
        # CR or NUL, obs-fold, a block not yet all in) goes line by line below, with its limits.
        try:
            buffered = self.buffered.peek(MAX_HEADER_BYTES)
        except TimeoutError:  # the socket timeout fired before the deadline's reaper did
            self.expired = True
            self.incomplete()
            return None
        end = buffered.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES) + 4
        if end > 3 and HEADER_BLOCK.fullmatch(buffered, 0, end):
            lines = self.rfile.read(end).split(b"\r\n")[:-2]
            if len(lines) > MAX_HEADER_FIELDS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"more than {MAX_HEADER_FIELDS} header fields")
                return None
            # A field value has no trailing whitespace (RFC 9110 5.5), as below.
            return [line.rstrip(b" \t") + b"\r\n" for line in lines]
        return self._read_header_lines()

    def _read_header_lines(self) -> list[bytes] | None:
        lines: list[bytes] = []
        size = 0
        while True:
            try:
                line = self.rfile.readline(MAX_HEADER_BYTES + 1)
            except TimeoutError:
                self.expired, line = True, b""
            size += len(line)
            if size > MAX_HEADER_BYTES:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"header block larger than {MAX_HEADER_BYTES} bytes")
                return None
            if not line.endswith(b"\n"):
                self.incomplete()
                return None
            if line in (b"\r\n", b"\n"):
                return lines
            if len(lines) == MAX_HEADER_FIELDS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"more than {MAX_HEADER_FIELDS} header fields")
                return None
            if not HEADER_LINE.fullmatch(line):
                # A NUL or a bare CR becomes SP (RFC 9110 5.5, RFC 9112 2.2); anything else is refused.
                line = line.rstrip(b"\r\n").replace(b"\r", b" ").replace(b"\x00", b" ") + b"\r\n"
                if not HEADER_LINE.fullmatch(line):
                    self.send_error(HTTPStatus.BAD_REQUEST, "malformed header line")
                    return None
            # A field value has no trailing whitespace (RFC 9110 5.5): "push " is the event "push".
            lines.append(line.rstrip(b"\r\n").rstrip(b" \t") + b"\r\n")

    def handle_expect_100(self) -> bool:
        """The stdlib answers 100 Continue while parsing headers; send_continue does it when the body is read."""
        self.expects_continue = True
        return True

    def send_continue(self, length: int) -> None:
        """100 Continue, only once path, method, length and state are checked: a 404, 411, 413 or 503
        goes out instead, and the client never sends a body it would be refused for."""
        if self.expects_continue and length:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def incomplete(self) -> None:
        """The request line or header block was cut short: by its deadline (408), or by the client."""
        if self.expired:
            self.send_error(HTTPStatus.REQUEST_TIMEOUT, "request not complete within the deadline")
        else:
            self.send_error(HTTPStatus.BAD_REQUEST, "connection closed inside the request head")

    def log_message(self, format: str, *args: Any) -> None:
        logs.debug("http", detail=(format % args)[:300], remote=self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # every request gets one JSON line from the subclass instead
