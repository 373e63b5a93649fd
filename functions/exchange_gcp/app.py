"""POST /exchange/gcp: a pipeline's CI token in, a Google access token or Artifact Registry / GCR docker credentials out."""

from oidc_broker.handlers import exchange_handler

handler = exchange_handler("gcp")
