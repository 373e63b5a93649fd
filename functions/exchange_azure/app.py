"""POST /exchange/azure: a pipeline's CI token in, an Entra ID access token or ACR docker credentials out."""

from oidc_broker.handlers import exchange_handler

handler = exchange_handler("azure")
