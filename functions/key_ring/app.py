"""Custom::KeyRing: on Create and Update, registers the stack's KMS signing key in the key ring and
records the deployment's issuer URL, which `oidc-broker apply` checks a configuration against."""

import time

from aws_lambda_powertools import Logger

from oidc_broker import cfn, config, keys, runtime

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
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
            store, now = runtime.store(session), int(time.time())
            entry = keys.register(store, session.client("kms"), properties["KeyArn"], now)
            logger.info("signing key registered", extra={"kid": entry.kid, "state": entry.state})
            store.put_deployment(issuer, now)
            logger.info("deployment issuer recorded", extra={"issuer": issuer})
            data = {"Kid": entry.kid, "State": entry.state}
            physical_id = f"key-ring-{entry.kid}"
        # Delete leaves the ring alone: tokens signed with its keys must stay verifiable.
        cfn.respond(event, "SUCCESS", physical_id=physical_id, data=data)
    except Exception as e:
        logger.exception("key ring update failed")
        cfn.respond(event, "FAILED", physical_id=physical_id, reason=f"{type(e).__name__}: {e}"[:500])
