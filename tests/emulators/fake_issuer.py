"""An OIDC issuer on loopback for the emulators' tests: discovery + JWKS, tokens signed with its key.

One module for every emulator test (not a test file others import from).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

AUDIENCE = "sts.amazonaws.com"
SUBJECT = "space:acme:account:prod"


class Issuer:
    """Serves `/.well-known/openid-configuration` and `/jwks`; `claimed_issuer` overrides what discovery names."""

    def __init__(self, key):
        self.key = key
        self.jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "RS256"}
        self.claimed_issuer: str | None = None
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.claimed_issuer or issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": [issuer.jwk]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key=None, kid="k1", **claims):
        """A token from this issuer; a claim given as None is left out."""
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 300, **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key or self.key, algorithm="RS256",
                          headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
