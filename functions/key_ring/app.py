"""Custom::KeyRing: registers the stack's KMS signing key in the key ring on Create and Update."""

import time

from aws_lambda_powertools import Logger

from oidc_broker import cfn, keys, runtime

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    request_type = event.get("RequestType")
    physical_id = event.get("PhysicalResourceId") or "key-ring"
    try:
        data = {}
        if request_type in ("Create", "Update"):
            import boto3

            key_arn = event["ResourceProperties"]["KeyArn"]
            entry = keys.register(runtime.store(), boto3.client("kms"), key_arn, int(time.time()))
            logger.info("signing key registered", extra={"kid": entry.kid, "state": entry.state})
            data = {"Kid": entry.kid, "State": entry.state}
            physical_id = f"key-ring-{entry.kid}"
        # Delete leaves the ring alone: tokens signed with its keys must stay verifiable.
        cfn.respond(event, "SUCCESS", physical_id=physical_id, data=data)
    except Exception as e:
        logger.exception("key ring update failed")
        cfn.respond(event, "FAILED", physical_id=physical_id, reason=f"{type(e).__name__}: {e}"[:500])
