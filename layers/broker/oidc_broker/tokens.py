"""The broker's ID tokens: claims and JWS compact assembly.

Pure: given a clock value, a target, a subject and the verified caller, it builds the claims, the
header and the signing input; the signature comes from a signer port (keys.py).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .subject import Subject

if TYPE_CHECKING:  # annotations only: discovery imports this module and needs no configuration model
    from .model import Target

ALG = "RS256"
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
# KMS signs RAW messages of at most 4096 bytes.
MAX_SIGNING_INPUT = 4096


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encoded_length(value: Any) -> int:
    """Bytes `value` takes in a token's JSON (non-ASCII escaped: one character may take 12)."""
    return len(_json(value))


class TooLarge(ValueError):
    """The signing input is larger than KMS signs."""

    def __init__(self, size: int):
        super().__init__(f"token is {size} bytes before signing; KMS signs at most {MAX_SIGNING_INPUT}")
        self.size = size


@dataclass(frozen=True)
class Caller:
    """Who asked: the caller token's issuer and subject."""

    issuer: str
    subject: str


def claims(*, issuer: str, target: Target, subject: Subject, caller: Caller, now: int, jti: str | None = None,
           lifetime: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = dict(subject.claims())
    body.update(
        iss=issuer,
        sub=str(subject),
        aud=target.audience,
        iat=now,
        nbf=now,
        exp=now + (target.lifetime if lifetime is None else lifetime),
        jti=jti or str(uuid.uuid4()),
        # RFC 8693 section 4.1: the party that acted, so a relying party can log who asked.
        act={"iss": caller.issuer, "sub": caller.subject},
    )
    return body


def header(kid: str) -> dict[str, str]:
    return {"alg": ALG, "typ": "JWT", "kid": kid}


def signing_input(head: dict[str, str], body: dict[str, Any]) -> bytes:
    message = f"{b64url(_json(head))}.{b64url(_json(body))}".encode("ascii")
    if len(message) > MAX_SIGNING_INPUT:
        raise TooLarge(len(message))
    return message


def assemble(message: bytes, signature: bytes) -> str:
    return f"{message.decode('ascii')}.{b64url(signature)}"
