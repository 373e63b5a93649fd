"""A CI issuer the tests control: its keys sign whatever a test needs, its endpoints misbehave on demand.

Each path prefix is one issuer: /gh (a well-behaved GitHub-like issuer with an RSA and an EC key),
/slow (answers after 6 s), /huge (a 1 MB key set), /empty (no keys), /redirect (sends the
key set request to another host), /rotating (publishes whichever key the test chose), /liar (its discovery names /gh),
/trickle (headers at once, then the body a byte every TRICKLE s), /trickle-head (the status line and headers too),
/sluggish (each document after 2 s: each within a read timeout, both together past the fetch deadline).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from oidc_broker_cli.local import free_port

TRICKLE = 0.5  # seconds between bytes: a whole document would take minutes


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": alg}


class HostileIssuer:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rotating_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rotating_kid = "rot-1"
        self.fetches: dict[str, int] = {}
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.other_host = f"http://localhost:{port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- tokens --------------------------------------------------------------------------------
    def claims(self, broker: str, issuer: str = "gh", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url(issuer), "aud": broker, "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app", "repository_id": "42", "repository_owner": "acme", "repository_owner_id": "7",
            "ref": "refs/heads/main", "event_name": "push", "iat": now, "nbf": now, "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any], *, alg: str = "RS256", kid: str | None = "rsa-1", key=None,
             headers: dict[str, Any] | None = None) -> str:
        key = key or (self.rsa if alg.startswith(("RS", "PS")) else self.ec)
        head = {"kid": kid, **(headers or {})} if kid is not None else dict(headers or {})
        return jwt.encode(claims, key, algorithm=alg, headers=head)

    def sign_raw(self, header_json: str, payload_json: str, key=None) -> str:
        """Sign exactly these JSON texts (duplicate members and all) with RS256."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        message = f"{b64(header_json.encode())}.{b64(payload_json.encode())}"
        signature = (key or self.rsa).sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{message}.{b64(signature)}"

    # -- the HTTP side -------------------------------------------------------------------------
    def _documents(self, name: str) -> tuple[dict, dict | bytes]:
        discovery = {"issuer": self.url(name), "jwks_uri": self.url(name) + "/jwks"}
        if name == "liar":  # its discovery document claims to be another issuer
            discovery["issuer"] = self.url("gh")
        if name == "gh":
            keys = {"keys": [public_jwk(self.rsa, "rsa-1", "RS256"), public_jwk(self.ec, "ec-1", "ES256")]}
        elif name == "rotating":
            keys = {"keys": [public_jwk(self.rotating_key, self.rotating_kid, "RS256")]}
        elif name == "huge":
            keys = b'{"keys": [' + b",".join([json.dumps(public_jwk(self.rsa, f"k{i}", "RS256")).encode() for i in range(2000)]) + b"]}"
        elif name == "empty":
            keys = {"keys": []}
        else:
            keys = {"keys": [public_jwk(self.rsa, "rsa-1", "RS256")]}
        return discovery, keys

    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name, _, rest = self.path.lstrip("/").partition("/")
                issuer.fetches[f"{name}/{rest}"] = issuer.fetches.get(f"{name}/{rest}", 0) + 1
                if name == "slow":
                    time.sleep(6)
                if name == "sluggish":
                    time.sleep(2)
                discovery, keys = issuer._documents(name)
                if name == "redirect" and rest == "jwks":
                    self.send_response(302)
                    self.send_header("Location", issuer.other_host + "/gh/jwks")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rest == ".well-known/openid-configuration":
                    body = json.dumps(discovery).encode()
                elif rest == "jwks":
                    body = keys if isinstance(keys, bytes) else json.dumps(keys).encode()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name.startswith("trickle"):
                    self._trickle(body, head=name == "trickle-head")
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def _trickle(self, body: bytes, head: bool) -> None:
                header = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode()
                self.close_connection = True
                try:
                    if not head:
                        self.wfile.write(header)
                    for byte in (header + body if head else body):
                        time.sleep(TRICKLE)
                        self.wfile.write(bytes([byte]))
                except OSError:  # the broker gave up and closed the connection
                    pass

        return Handler
