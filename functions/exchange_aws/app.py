"""POST /exchange/aws: a pipeline's CI token in, AWS role or ECR docker credentials out."""

from oidc_broker.handlers import exchange_handler

handler = exchange_handler("aws")
