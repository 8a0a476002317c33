"""A fault-injecting HTTP proxy for tests: put it between the job and the local S3 server (moto).

It forwards every request to ``upstream`` unless a fault applies:

- ``flaky``: a deterministic fraction of requests is answered 503 SlowDown (S3's own rate-limit reply) or
  has its connection dropped without an answer. Whether attempt ``n`` of a (method, path) fails depends only
  on the seed, the key and ``n``, never on the order of concurrent requests, and no key fails more than
  ``max_in_a_row`` times running, so a client that retries is sure to get through.
- ``stall``: the first ``times`` requests for a path ending in ``suffix`` get no answer at all (a stuck read)
  until the proxy stops.
- ``deny``: requests with a method whose path contains ``part`` get an S3 error reply (e.g. 403
  AccessDenied), after the first ``after`` of them went through.

Counters (``faults``, ``stalled``, ``denied``, ``requests``) let a test check that its faults really fired.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass(frozen=True)
class Deny:
    """Answer ``status``/``code`` to ``method`` requests whose path contains ``part``, after ``after`` passed."""

    method: str
    part: str
    status: int = 403
    code: str = "AccessDenied"
    message: str = "Access Denied"
    after: int = 0


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream``; use as a context manager."""

    def __init__(self, upstream: str, *, fault_rate: float = 0.0, seed: int = 0, max_in_a_row: int = 2,
                 stall: tuple[str, int] | None = None, deny: Deny | None = None):
        self.upstream = urlsplit(upstream)
        self.fault_rate, self.seed, self.max_in_a_row = fault_rate, seed, max_in_a_row
        self.stall, self.deny = stall, deny
        self.requests: Counter[str] = Counter()   # method -> requests seen
        self.faults: Counter[str] = Counter()     # "503" / "drop" -> faults injected
        self.stalled = self.denied = 0
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._in_a_row: Counter[tuple[str, str]] = Counter()
        self._matching_deny = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # releases stalled requests
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def decide(self, method: str, path: str) -> str | Deny | None:
        """The fault for this request: "stall", "drop", "503", a Deny, or None to forward it."""
        with self._lock:
            self.requests[method] += 1
            if self.stall and path.split("?")[0].endswith(self.stall[0]) and self.stalled < self.stall[1]:
                self.stalled += 1
                return "stall"
            if self.deny and method == self.deny.method and self.deny.part in path:
                self._matching_deny += 1
                if self._matching_deny > self.deny.after:
                    self.denied += 1
                    return self.deny
            return self._flaky(method, path)

    def _flaky(self, method: str, path: str) -> str | None:
        key = (method, path)
        attempt = self._attempts[key]
        self._attempts[key] += 1
        digest = hashlib.sha256(f"{self.seed}|{method}|{path}|{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.fault_rate or self._in_a_row[key] >= self.max_in_a_row:
            self._in_a_row[key] = 0
            return None
        self._in_a_row[key] += 1
        fault = "503" if digest[8] % 2 else "drop"
        self.faults[fault] += 1
        return fault

    def wait_while_stalled(self) -> None:
        self._stopping.wait(timeout=600)

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream as it came (Host header included: it is signed); the whole answer."""
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients hanging up (a killed worker, a dropped connection) are expected here, not errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args) -> None:  # one line per request would bury test output
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._read_body()
        fault = proxy.decide(self.command, self.path)
        if fault in ("drop", "stall"):
            if fault == "stall":
                proxy.wait_while_stalled()
            self.close_connection = True
            return
        if fault == "503":
            self._reply_error(503, "SlowDown", "Please reduce your request rate.")
        elif isinstance(fault, Deny):
            self._reply_error(fault.status, fault.code, fault.message)
        else:
            self._relay(proxy, body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _read_chunked(self) -> bytes:
        """The de-chunked body (forwarded with a Content-Length); trailers are dropped."""
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _relay(self, proxy: FaultProxy, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        status, reason, upstream_headers, data = proxy.forward(self.command, self.path, headers, body)
        self.send_response(status, reason)
        length = str(len(data))
        for name, value in upstream_headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
            elif name.lower() == "content-length" and self.command == "HEAD":
                length = value  # a HEAD answer has no body but tells the object's size
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reply_error(self, status: int, code: str, message: str) -> None:
        data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>{self.path.split('?')[0]}</Resource><RequestId>faultproxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
