"""The HTTP side every emulator shares: a handler that never logs a request (requests carry
tokens, assertions and signatures), reads bounded bodies and answers with a body and a type.

Each emulator subclasses `QuietHandler` for its routes and answer shapes; what it verifies stays
in its own module. Imports nothing from oidc_broker.
"""

from __future__ import annotations

import errno
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON = "application/json; charset=utf-8"


def bind(handler: type[BaseHTTPRequestHandler], host: str, port: int, fallback: bool = False) -> ThreadingHTTPServer:
    """A threading server on host:port; with `fallback`, on a free port when that one is taken
    (a port a person types, e.g. in `docker login`, is worth trying first, never worth failing over)."""
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if not (fallback and port and e.errno == errno.EADDRINUSE):
            raise
        server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    return server


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tokens travel in requests, never log them
        pass

    def content_length(self) -> int:
        """The request's Content-Length; -1 when it is not a number."""
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return -1

    def read_body(self, limit: int | None = None) -> bytes:
        """The request body; at most `limit` + 1 bytes are read, so a caller can tell it was too long."""
        length = self.content_length()
        if length <= 0:
            return b""
        return self.rfile.read(length if limit is None else min(length, limit + 1))

    def reply(self, status: int, data: bytes, content_type: str, **headers: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def reply_json(self, status: int, document: Any, content_type: str = JSON, **headers: str) -> None:
        data = (document if isinstance(document, str) else json.dumps(document)).encode()
        self.reply(status, data, content_type, **headers)
