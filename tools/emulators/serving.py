"""The HTTP side every emulator shares: a handler that never logs a request (requests carry
tokens, assertions and signatures), reads bounded bodies and answers with a body and a type.

Each emulator subclasses `QuietHandler` for its routes and answer shapes; what it verifies stays
in its own module. Imports nothing from oidc_broker.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

JSON = "application/json; charset=utf-8"


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
