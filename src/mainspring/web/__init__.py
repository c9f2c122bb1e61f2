"""The web runtime: the FastAPI app factory and an outgoing HTTP client.

::

    from mainspring.web import http_client

    async with http_client(settings, base_url="http://inventory:8000") as client:
        response = await client.get("/items/42")

See ``docs/http-client.md``.
"""

from mainspring.web._app import DOCS_CSP, RequestMiddleware, create_app
from mainspring.web._http_client import (
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    HttpClientMetrics,
    ResilientTransport,
    RetryPolicy,
    http_client,
    parse_retry_after,
    propagate_context,
)

__all__ = [
    "DOCS_CSP",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HttpClientMetrics",
    "RequestMiddleware",
    "ResilientTransport",
    "RetryPolicy",
    "create_app",
    "http_client",
    "parse_retry_after",
    "propagate_context",
]
