"""A stand-in for the key rotation function: answers the events `oidc-broker keys` sends with
reports shaped as the function's contract says (status, rotate, revoke, refusals).

One module (not a test file others import from)."""

from __future__ import annotations

from typing import Any

NOW = 1_800_000_000
LIFECYCLE = {"period": 90 * 86400, "jwks_max_age": 300, "ring_ttl": 60, "publication_delay": 365, "retention": 3965}
ACTIVE_KID = "A" * 43
PENDING_KID = "P" * 43
RETIRED_KID = "R" * 43


def key(kid: str, state: str, created_at: int, **times: Any) -> dict[str, Any]:
    return {"kid": kid, "state": state, "created_at": created_at, "published_at": created_at,
            "activated_at": times.get("activated_at"), "retired_at": times.get("retired_at"),
            "next": times.get("next")}


class FakeRotation:
    """Keys in three states; `rotate` is effective after the publication delay unless `ready`."""

    def __init__(self, ready: bool = False):
        self.events: list[dict[str, Any]] = []
        self.ready = ready
        self.keys = [
            key(ACTIVE_KID, "active", NOW - 10 * 86400, activated_at=NOW - 10 * 86400,
                next={"step": "retire", "at": NOW + 80 * 86400}),
            key(PENDING_KID, "pending", NOW - 100, next={"step": "activate", "at": NOW + 80 * 86400}),
            key(RETIRED_KID, "retired", NOW - 100 * 86400, activated_at=NOW - 99 * 86400,
                retired_at=NOW - 10 * 86400, next=None),
        ]
        self.rotate_requested_at: int | None = None
        self.effective_at: int | None = None

    def report(self, steps: list[dict[str, Any]] | None = None, notices: list[str] | None = None) -> dict[str, Any]:
        return {"keys": [dict(k) for k in self.keys], "steps": steps or [],
                "rotate_requested_at": self.rotate_requested_at, "effective_at": self.effective_at,
                "lifecycle": dict(LIFECYCLE), "notices": notices or []}

    def __call__(self, event: Any) -> Any:
        self.events.append(event)
        action = event.get("action") if isinstance(event, dict) else None
        if action == "status":
            return self.report()
        if action == "rotate":
            if not self.ready:
                self.rotate_requested_at, self.effective_at = NOW, NOW + 265
                return self.report()
            old, new = self.keys[0], self.keys[1]
            old.update(state="retired", retired_at=NOW, next={"step": "remove", "at": NOW + LIFECYCLE["retention"]})
            new.update(state="active", activated_at=NOW, next={"step": "retire", "at": NOW + LIFECYCLE["period"]})
            return self.report([{"step": "activate", "kid": new["kid"], "at": NOW},
                                {"step": "retire", "kid": old["kid"], "at": NOW}])
        if action == "revoke":
            kid = event.get("kid")
            if kid not in [k["kid"] for k in self.keys]:
                return {"error": "invalid_request", "error_description": f"no key {kid} in the key ring"}
            self.keys = [k for k in self.keys if k["kid"] != kid]
            if kid == ACTIVE_KID:
                self.keys[0].update(state="active", activated_at=NOW)
            return self.report([{"step": "revoke", "kid": kid, "at": NOW}],
                               [f"verifiers may keep the revoked key {kid} cached for up to 360s",
                                "the next key signs now, at once (emergency)"])
        return {"error": "invalid_request", "error_description": "unknown action"}


class FakeDeployment:
    """A Deployment whose rotation function is `function`."""

    name = "stack broker"
    issuer = "https://id.example.com"

    def __init__(self, function: Any):
        self.function = function
        self.invoked: list[tuple[str, dict[str, Any]]] = []

    def invoke(self, function, event):
        self.invoked.append((function.logical_id, event))
        return self.function(event)
