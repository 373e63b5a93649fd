"""Custom::KeyRing: on Create and Update, puts the stack's KMS signing key into the key ring, sealed
(and seals the entry of a ring from before the seal), stores the ring's sealed JWKS when it has no
current one (a ring from before it: the JWKS function serves the entries until then), and records
the deployment's issuer URL, which `oidc-broker apply` checks a configuration against."""

import time

from aws_lambda_powertools import Logger

from oidc_broker import cfn, config, observe, rotation, runtime

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    observe.correlate(logger, event, context)
    request_type = event.get("RequestType")
    physical_id = event.get("PhysicalResourceId") or "key-ring"
    try:
        data = {}
        if request_type in ("Create", "Update"):
            properties = event["ResourceProperties"]
            issuer = properties["IssuerUrl"]
            if why := config.url_problem(issuer, allow_loopback_http=runtime.allow_loopback_http()):
                raise ValueError(f"IssuerUrl {issuer!r}: {why}")
            session = runtime.session()  # one per container: the table's client and KMS's
            store, kms, now = runtime.store(session), session.client("kms"), int(time.time())
            entry, done = rotation.register_stack_key(store, kms, runtime.seal(kms), properties["KeyArn"], now)
            if entry is None:
                # Rotation has replaced the template's key and removed it: it is never put back.
                logger.info("signing key rotated out", extra={"outcome": done})
            else:
                logger.info("signing key registered", extra={"kid": entry.kid, "state": entry.state, "outcome": done})
                data = {"Kid": entry.kid, "State": entry.state}
                physical_id = f"key-ring-{entry.kid}"
            store.put_deployment(issuer, now)
            logger.info("deployment issuer recorded", extra={"issuer": issuer})
        # Delete leaves the ring alone: tokens signed with its keys must stay verifiable.
        cfn.respond(event, "SUCCESS", physical_id=physical_id, data=data)
    except Exception as e:
        logger.exception("key ring update failed")
        cfn.respond(event, "FAILED", physical_id=physical_id, reason=f"{type(e).__name__}: {e}"[:500])
