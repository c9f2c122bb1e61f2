"""The web runtime: an outgoing HTTP client today (the FastAPI app factory joins it later).

::

    from mainspring.web import http_client

    async with http_client(settings, base_url="http://inventory:8000") as client:
        response = await client.get("/items/42")

See ``docs/http-client.md``.
"""

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
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HttpClientMetrics",
    "ResilientTransport",
    "RetryPolicy",
    "http_client",
    "parse_retry_after",
    "propagate_context",
]
