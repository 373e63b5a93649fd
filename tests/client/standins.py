"""Stand-ins for the CI services a job asks for its OIDC token, each checking the request as the real
one does and answering with a token minted by local mode's development CI issuer for the audience asked.

- GitHub Actions: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=<aud>` (the URL carries
  `?api-version=2.0`) with `Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` -> `{"value"}`.
- Azure Pipelines: `POST $SYSTEM_OIDCREQUESTURI?api-version=7.1[&serviceConnectionId=…]` with
  `Authorization: Bearer $SYSTEM_ACCESSTOKEN` -> `{"oidcToken"}`, always for `api://AzureADTokenExchange`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REQUEST_TOKEN = "request-token-of-this-job"


class TokenService:
    def __init__(self, local, claims: dict, kind: str = "github"):
        self.local, self.claims, self.kind = local, claims, kind
        self.requests: list[dict] = []  # what each request asked for
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                service._answer(self, "GET")

            def do_POST(self):
                service._answer(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_apis/oidctoken"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        handler.rfile.read(length)
        self.requests.append({"method": method, "query": query,
                              "authorization": handler.headers.get("Authorization")})
        if handler.headers.get("Authorization") != f"Bearer {REQUEST_TOKEN}":
            return self._send(handler, 401, {"message": "Bad credentials"})
        if self.kind == "github":
            if method != "GET" or query.get("api-version") != "2.0" or not query.get("audience"):
                return self._send(handler, 400, {"message": "api-version and audience are required"})
            token = self.local.ci_token(**{**self.claims, "aud": query["audience"]})
            return self._send(handler, 200, {"count": 1, "value": token})
        if method != "POST" or query.get("api-version") != "7.1":
            return self._send(handler, 400, {"message": "POST with api-version=7.1"})
        token = self.local.ci_token(**{**self.claims, "aud": "api://AzureADTokenExchange"})
        return self._send(handler, 200, {"oidcToken": token})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
