"""``build_app(settings)``: the demo's components wired into a :class:`~mainspring.service.Service` and
served by :func:`mainspring.web.create_app`.

Components, in start order: the database, the schema (``create_all`` of the demo's and the library's
tables), the cache, the rate limiter, the broker (its subscribers use the database) and the outbox
relay. They stop in reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import MetaData, Table

from mainspring._compat import require
from mainspring.cache import Cache, create_cache
from mainspring.config import CacheSettings
from mainspring.context import Principal
from mainspring.db import NAMING_CONVENTION, ChangeLog, Database
from mainspring.demo.models import DemoBase
from mainspring.demo.schemas import OrderConfirmed, OrderPlaced
from mainspring.demo.services import (
    ORDERS_CONFIRMED,
    ORDERS_PLACED,
    AccountService,
    CatalogService,
    OrderService,
)
from mainspring.demo.settings import DemoSettings
from mainspring.events import Inbox, InboxEntry, Outbox, OutboxEntry, OutboxRelay
from mainspring.logging import get_logger
from mainspring.messaging import Broker, RetryPolicy, create_broker
from mainspring.observability import (
    HealthChecker,
    MetricsRegistry,
    broker_check,
    cache_check,
    database_check,
    outbox_check,
)
from mainspring.security import (
    RBAC,
    ApiKeyRecord,
    ApiKeyService,
    JwtKey,
    KeyRing,
    Limit,
    PasswordHasher,
    RateLimiter,
    RefreshTokenService,
    RoleSpec,
    SqlApiKeyStore,
    SqlRefreshTokenStore,
    TokenService,
)
from mainspring.service import Service
from mainspring.web._app import DOCS_CSP  # the CSP create_app gives /docs; re-exported for the docs

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "DOCS_CSP",
    "ROLES",
    "DemoContext",
    "DemoSchema",
    "build_app",
    "build_context",
    "cache_settings",
    "instrumented_libraries",
    "rate_limit_url",
]

log = get_logger("mainspring.demo")

#: Customers order and read their own orders; service clients (API keys) read every order; admins do all.
ROLES: dict[str, RoleSpec] = {
    "customer": RoleSpec(permissions={"products:read", "orders:create"}),
    "service": RoleSpec(permissions={"products:read", "orders:read_any"}),
    "admin": RoleSpec(permissions={"*"}),
}


@dataclass(slots=True)
class DemoContext:
    """Everything the routes and the seed need, built once per app (``app.state.demo``)."""

    settings: DemoSettings
    service: Service
    database: Database
    cache: Cache
    broker: Broker
    relay: OutboxRelay
    limiter: RateLimiter
    login_limit: Limit
    rbac: RBAC
    accounts: AccountService
    catalog: CatalogService
    orders: OrderService


class DemoSchema:
    """A component that creates the demo's and the library's tables at start (the demo's migration).

    ``create_all`` only creates what is missing, so it is safe on every start. The tables: the demo
    models (:class:`~mainspring.demo.models.DemoBase`), ``change_log``, ``outbox`` and ``inbox``
    (the library's models), and the SQL security stores (API keys, refresh tokens). A real
    service runs ``mainspring db upgrade`` instead (see docs/migrations.md).
    """

    def __init__(self, database: Database) -> None:
        """Remember the database; nothing runs here."""
        self.database = database

    async def start(self) -> None:
        """Create the missing tables."""
        # Only the library's own tables: other models may share mainspring.db.Base in this process.
        library = MetaData(naming_convention=NAMING_CONVENTION)
        for model in (ChangeLog, OutboxEntry, InboxEntry):
            table = model.__table__
            assert isinstance(table, Table)
            table.to_metadata(library)
        for metadata in (library, SqlApiKeyStore.metadata, DemoBase.metadata):
            await self.database.create_all(metadata)

    async def stop(self) -> None:
        """Nothing to release."""


def cache_settings(settings: CacheSettings) -> CacheSettings:
    """Return the cache section to build: a plain ``redis://`` URL becomes multi-level (memory + Redis)."""
    scheme = urlsplit(settings.url).scheme
    if scheme in {"redis", "rediss"}:
        return settings.model_copy(update={"url": f"memory+{settings.url}"})
    return settings


def rate_limit_url(settings: DemoSettings) -> str:
    """Return the rate limiter's store: ``demo.rate_limit_url``, else the cache's Redis, else memory."""
    if settings.demo.rate_limit_url:
        return settings.demo.rate_limit_url
    parts = urlsplit(settings.cache.url)
    scheme = parts.scheme.removeprefix("memory+")
    if scheme in {"redis", "rediss"}:
        return urlunsplit((scheme, parts.netloc, parts.path, "", ""))
    return "memory://"


def _api_key_principal(record: ApiKeyRecord) -> Principal:
    # An API key's scopes are its roles, so RBAC decides for service clients too.
    scopes = frozenset(record.scopes)
    return Principal(record.owner, kind="service", roles=scopes, scopes=scopes, auth_method="api_key")


def _token_key(settings: DemoSettings) -> JwtKey:
    # HS256 wants 32 bytes of key; derive them from the secret key, for access tokens only.
    secret = settings.secret_key.get_secret_value().encode()
    return JwtKey.hmac(
        hmac.new(secret, b"mainspring-demo access tokens", hashlib.sha256).digest(), kid="demo-1"
    )


def _init_tracing(settings: DemoSettings) -> bool:
    if not settings.tracing.enabled:
        return False
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        log.warning("tracing is on but the otel extra is missing; install 'mainspring[otel]' to trace")
        return False
    from mainspring.observability import init_tracing

    init_tracing(settings)
    return True


def build_context(settings: DemoSettings) -> DemoContext:
    """Build (not start) every component and service of the demo."""
    service = Service(settings)
    database = service.add("database", Database.from_settings(settings.database))
    service.add("schema", DemoSchema(database), depends_on=["database"])
    cache = service.add("cache", create_cache(cache_settings(settings.cache)))
    limiter = service.add(
        "rate-limiter", RateLimiter(rate_limit_url(settings), prefix=f"{settings.cache.namespace}:rl")
    )
    broker = service.add(
        "broker", create_broker(settings.messaging, inbox=Inbox(database)), depends_on=["schema", "cache"]
    )
    relay = service.add(
        "outbox-relay",
        OutboxRelay(database, broker, poll_interval=0.5),
        depends_on=["schema", "broker"],
        stop_timeout=15,
    )
    rbac = RBAC(ROLES)
    tokens = TokenService(
        KeyRing(_token_key(settings)),
        issuer=settings.service_name,
        audience=settings.service_name,
        access_ttl=settings.demo.access_ttl,
    )
    accounts = AccountService(
        database,
        hasher=PasswordHasher(),
        tokens=tokens,
        refresh=RefreshTokenService(SqlRefreshTokenStore(database), ttl=settings.demo.refresh_ttl),
        api_keys=ApiKeyService(SqlApiKeyStore(database)),
    )
    ttl = settings.demo.order_cache_ttl
    orders = OrderService(database, cache, Outbox(database), rbac, ttl=ttl)
    context = DemoContext(
        settings=settings,
        service=service,
        database=database,
        cache=cache,
        broker=broker,
        relay=relay,
        limiter=limiter,
        login_limit=Limit.parse(settings.demo.login_rate),
        rbac=rbac,
        accounts=accounts,
        catalog=CatalogService(database, cache, ttl=ttl),
        orders=orders,
    )

    @broker.subscriber(
        ORDERS_PLACED, group="demo-stock", inbox=True, retry=RetryPolicy(max_attempts=5, backoff=0.2)
    )
    async def reserve_stock(event: OrderPlaced) -> None:
        await orders.confirm(event)

    @broker.subscriber(ORDERS_CONFIRMED, group="demo-notifier")
    async def notify_customer(event: OrderConfirmed) -> None:
        log.info("customer notified: order confirmed", order_id=event.order_id, customer=event.customer_id)

    return context


def build_app(settings: DemoSettings | None = None, *, metrics: MetricsRegistry | None = None) -> FastAPI:
    """Return the demo's FastAPI app; its lifespan starts and stops the components.

    ``settings`` defaults to ``load_settings(DemoSettings)`` (embedded defaults, ``config/``, ``.env``,
    ``MAINSPRING_*``). ``metrics`` defaults to the process-wide registry, which takes one app's
    components: pass a ``MetricsRegistry()`` of its own to each further app in one process (tests).
    ``app.state.demo`` holds the :class:`DemoContext`.
    """
    require("fastapi", extra="web", feature="the orders demo")
    from mainspring.config import load_settings
    from mainspring.demo.routes import build_routers
    from mainspring.security.fastapi import ApiKeyScheme, BearerScheme, WebSecurity
    from mainspring.web import create_app

    settings = settings if settings is not None else load_settings(DemoSettings)
    tracing = _init_tracing(settings)
    context = build_context(settings)
    health = HealthChecker()
    health.add(database_check(context.database))
    health.add(cache_check(context.cache))
    health.add(broker_check(context.broker))
    health.add(outbox_check(context.relay))
    app = create_app(
        settings,
        service=context.service,
        routers=build_routers(context),
        health=health,
        metrics=metrics,
        title="mainspring orders demo",
        version=settings.version,
    )
    WebSecurity(
        [
            BearerScheme(context.accounts.tokens),
            ApiKeyScheme(context.accounts.api_keys, to_principal=_api_key_principal),
        ],
        rbac=context.rbac,
    ).install(app)
    app.state.demo = context
    if tracing:
        from mainspring.observability import auto_instrument

        auto_instrument(app, libraries=instrumented_libraries(settings))
    return app


def instrumented_libraries(settings: DemoSettings) -> list[str]:
    """The client libraries the demo talks through with these settings (and so traces).

    Only those: instrumenting a library imports it, and an unused redis or aio-pika would only cost
    memory.
    """
    libraries = ["sqlalchemy"]
    urls = (settings.cache.url, rate_limit_url(settings), settings.messaging.url)
    if any(urlsplit(url).scheme.removeprefix("memory+") in {"redis", "rediss"} for url in urls):
        libraries.append("redis")
    if urlsplit(settings.messaging.url).scheme.lower() in {"amqp", "amqps"}:
        libraries.append("aio-pika")
    return libraries
