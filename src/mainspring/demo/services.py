"""The demo's business logic: accounts and tokens, the catalogue, and orders.

Routes stay thin: they authenticate, authorise and call these. Every write runs in a unit of work;
caches are invalidated by tag once the unit has committed (``on_commit``), never before.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from mainspring.cache import Cache
from mainspring.context import Principal, bind_context
from mainspring.db import Database, Repository
from mainspring.demo.models import Order, OrderLine, OrderStatus, Product, User
from mainspring.demo.schemas import (
    ApiKeyOut,
    Credentials,
    OrderConfirmed,
    OrderIn,
    OrderLineOut,
    OrderOut,
    OrderPlaced,
    ProductIn,
    ProductOut,
    TokenPair,
    UserOut,
)
from mainspring.errors import AuthenticationError, ConflictError, NotFoundError
from mainspring.events import Outbox
from mainspring.logging import get_logger
from mainspring.observability import traced
from mainspring.security import RBAC, ApiKeyService, PasswordHasher, RefreshTokenService, TokenService

__all__ = [
    "ORDERS_CONFIRMED",
    "ORDERS_PLACED",
    "PLACE_ATTEMPTS",
    "AccountService",
    "CatalogService",
    "OrderService",
    "order_out",
]

#: Topics of the demo's events.
ORDERS_PLACED = "demo.orders.placed"
ORDERS_CONFIRMED = "demo.orders.confirmed"
#: How often placing an order is tried when another writer changed a product meanwhile.
PLACE_ATTEMPTS = 4
#: Conflict codes that mean "lost a race, try again" (a versioned UPDATE that matched no row; a lock).
_RETRYABLE = frozenset({"stale_version", "transaction_conflict"})
#: Who the subscriber acts as: its changes carry this id in the audit columns and the change log.
SUBSCRIBER = Principal(id="orders-subscriber", kind="service")

log = get_logger("mainspring.demo")


def user_out(user: User) -> UserOut:
    """Return the API view of ``user``."""
    return UserOut(id=user.id, email=user.email, role=user.role)


def product_out(product: Product) -> ProductOut:
    """Return the API view of ``product``."""
    return ProductOut(
        id=product.id,
        sku=product.sku,
        name=product.name,
        price_cents=product.price_cents,
        stock=product.stock,
        reserved=product.reserved,
        version=product.version,
    )


def order_out(order: Order) -> OrderOut:
    """Return the API view of ``order`` (its lines must be loaded)."""
    return OrderOut(
        id=order.id,
        customer_id=order.customer_id,
        status=order.status,
        total_cents=order.total_cents,
        version=order.version,
        lines=[
            OrderLineOut(product_id=line.product_id, quantity=line.quantity, price_cents=line.price_cents)
            for line in order.lines
        ],
    )


def _invalidate(cache: Cache, *tags: str) -> Callable[[], Awaitable[None]]:
    async def invalidate() -> None:
        await cache.invalidate_tags(*tags)

    return invalidate


class AccountService:
    """Registration, login with argon2id, JWT access tokens and rotating refresh tokens, API keys."""

    def __init__(
        self,
        database: Database,
        *,
        hasher: PasswordHasher,
        tokens: TokenService,
        refresh: RefreshTokenService,
        api_keys: ApiKeyService,
    ) -> None:
        """Hold the collaborators; nothing runs here."""
        self.database = database
        self.hasher = hasher
        self.tokens = tokens
        self.refresh_tokens = refresh
        self.api_keys = api_keys
        self.users = Repository(database, User)
        self._decoy_hash: str | None = None

    async def register(self, credentials: Credentials, *, role: str = "customer") -> UserOut:
        """Create a user; a taken email is a ``ConflictError`` (409) from the unique constraint."""
        password_hash = await self.hasher.hash_async(credentials.password)
        user = await self.users.add(
            User(email=credentials.email.lower(), role=role, password_hash=password_hash)
        )
        log.info("user registered", user_id=user.id, role=role)
        return user_out(user)

    async def login(self, credentials: Credentials) -> TokenPair:
        """Check the password and return a token pair; any failure is the same 401."""
        found = await self.users.list(filters={"email": credentials.email.lower()}, limit=1)
        user = found[0] if found else None
        if user is None:
            # Hash anyway, so an unknown email takes as long as a wrong password.
            await self.hasher.verify_async(await self._decoy(), credentials.password)
            raise AuthenticationError("wrong email or password", code="invalid_credentials")
        if not await self.hasher.verify_async(user.password_hash, credentials.password):
            raise AuthenticationError("wrong email or password", code="invalid_credentials")
        if self.hasher.needs_rehash(user.password_hash):
            await self.users.update(user.id, password_hash=await self.hasher.hash_async(credentials.password))
        refresh = await self.refresh_tokens.issue(str(user.id))
        return self._pair(str(user.id), user.role, refresh.token)

    async def refresh(self, token: str) -> TokenPair:
        """Rotate a refresh token and return a new pair; a reused token revokes its whole family."""
        issued = await self.refresh_tokens.rotate(token)
        user = await self.users.get_or_none(int(issued.subject))
        if user is None:
            raise AuthenticationError("the account no longer exists", code="invalid_credentials")
        return self._pair(issued.subject, user.role, issued.token)

    async def issue_api_key(self, owner: str, scopes: list[str], name: str | None) -> ApiKeyOut:
        """Issue an API key for a service client; its scopes are used as RBAC roles."""
        issued = await self.api_keys.issue(owner, scopes=scopes, name=name)
        return ApiKeyOut(key=issued.key, prefix=issued.prefix, owner=owner, scopes=scopes)

    def _pair(self, subject: str, role: str, refresh_token: str) -> TokenPair:
        access = self.tokens.issue(subject, claims={"roles": [role]})
        return TokenPair(
            access_token=access, refresh_token=refresh_token, expires_in=round(self.tokens.access_ttl)
        )

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await self.hasher.hash_async("decoy password for unknown accounts")
        return self._decoy_hash


class CatalogService:
    """Products: a cached listing (tag ``products``), creation and stock changes with a version check."""

    def __init__(self, database: Database, cache: Cache, *, ttl: float) -> None:
        """Hold the collaborators; nothing runs here."""
        self.database = database
        self.cache = cache
        self.ttl = ttl
        self.products = Repository(database, Product)

    async def list(self) -> list[ProductOut]:
        """Return every product, from the cache when it holds the listing."""

        async def load() -> list[dict[str, Any]]:
            rows = await self.products.list(order_by="id")
            return [product_out(row).model_dump(mode="json") for row in rows]

        rows = await self.cache.get_or_set("products", load, ttl=self.ttl, tags=["products"])
        return [ProductOut.model_validate(row) for row in rows]

    async def create(self, product: ProductIn) -> ProductOut:
        """Add a product; a taken SKU is a 409."""
        async with self.database.transaction() as unit:
            added = await self.products.add(Product(**product.model_dump(), reserved=0))
            unit.on_commit(_invalidate(self.cache, "products"))
            return product_out(added)

    async def set_stock(self, product_id: int, stock: int, version: int) -> ProductOut:
        """Set a product's stock if it is still at ``version``; else ``ConflictError`` (``stale_version``)."""
        async with self.database.transaction() as unit:
            updated = await self.products.update(product_id, stock=stock, version=version)
            unit.on_commit(_invalidate(self.cache, "products"))
            return product_out(updated)


class OrderService:
    """Placing orders (stock taken with optimistic locking, event through the outbox), reads, confirmation."""

    def __init__(self, database: Database, cache: Cache, outbox: Outbox, rbac: RBAC, *, ttl: float) -> None:
        """Hold the collaborators; nothing runs here."""
        self.database = database
        self.cache = cache
        self.outbox = outbox
        self.rbac = rbac
        self.ttl = ttl

    @traced("demo.orders.place")
    async def place(self, customer_id: str, order: OrderIn) -> OrderOut:
        """Take the stock and write the order and its ``OrderPlaced`` message in one transaction.

        Each product row is updated with ``WHERE version = <read>``: of two orders racing for one
        product, one wins and the other is rerun (up to :data:`PLACE_ATTEMPTS` times) against the
        new stock. Not enough stock is a ``ConflictError`` (``insufficient_stock``); an unknown
        product a ``NotFoundError``.
        """
        quantities: dict[int, int] = {}
        for line in order.lines:
            quantities[line.product_id] = quantities.get(line.product_id, 0) + line.quantity
        for attempt in range(1, PLACE_ATTEMPTS + 1):
            try:
                return await self._place_once(customer_id, quantities)
            except ConflictError as exc:
                if exc.code not in _RETRYABLE or attempt == PLACE_ATTEMPTS:
                    raise
                log.info("order placement lost a race; retrying", attempt=attempt, code=exc.code)
                await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _place_once(self, customer_id: str, quantities: dict[int, int]) -> OrderOut:
        async with self.database.transaction() as unit:
            session = unit.session
            found = await session.scalars(select(Product).where(Product.id.in_(quantities)))
            products = {product.id: product for product in found}
            missing = sorted(set(quantities) - set(products))
            if missing:
                raise NotFoundError(f"no product with id {missing[0]}", details={"product_ids": missing})
            short = [
                {"product_id": pid, "requested": qty, "available": products[pid].stock}
                for pid, qty in sorted(quantities.items())
                if products[pid].stock < qty
            ]
            if short:
                raise ConflictError(
                    "not enough stock for this order; lower the quantities",
                    code="insufficient_stock",
                    details={"lines": short},
                )
            for pid, qty in quantities.items():
                products[pid].stock -= qty  # a versioned UPDATE at flush: the optimistic lock
            placed = Order(
                customer_id=customer_id,
                status=OrderStatus.PLACED,
                total_cents=sum(products[pid].price_cents * qty for pid, qty in quantities.items()),
                lines=[
                    OrderLine(product_id=pid, quantity=qty, price_cents=products[pid].price_cents)
                    for pid, qty in sorted(quantities.items())
                ],
            )
            session.add(placed)
            await unit.flush()
            result = order_out(placed)
            await self.outbox.add(
                ORDERS_PLACED,
                OrderPlaced(order_id=result.id, customer_id=customer_id, lines=result.lines),
                key=customer_id,
            )
            unit.on_commit(_invalidate(self.cache, "products"))
        log.info("order placed", order_id=result.id, total_cents=result.total_cents)
        return result

    async def get(self, order_id: int, principal: Principal) -> tuple[OrderOut, bool]:
        """Return the order and whether it came from the cache; owners and ``orders:read_any`` only."""
        loaded = False

        async def load() -> dict[str, Any] | None:
            nonlocal loaded
            loaded = True
            async with self.database.session() as session:
                row = await session.get(Order, order_id)
                return None if row is None else order_out(row).model_dump(mode="json")

        data = await self.cache.get_or_set(
            f"order:{order_id}", load, ttl=self.ttl, tags=[f"order:{order_id}"], cache_none=False
        )
        if data is None:
            raise NotFoundError(f"no order with id {order_id}", details={"order_id": order_id})
        result = OrderOut.model_validate(data)
        self.rbac.require_owner_or(principal, result.customer_id, "orders:read_any")
        return result, not loaded

    async def confirm(self, event: OrderPlaced) -> None:
        """Reserve the order's stock, mark it confirmed and emit ``OrderConfirmed``.

        Runs inside the inbox's transaction (this block is a SAVEPOINT of it), so the inbox record,
        the reservation and the outgoing message commit together or not at all.
        """
        with bind_context(principal=SUBSCRIBER):
            async with self.database.transaction() as unit:
                order = await unit.session.get(Order, event.order_id)
                if order is None:
                    raise NotFoundError(f"no order with id {event.order_id}")
                if order.status != OrderStatus.PLACED:
                    return
                ids = [line.product_id for line in order.lines]
                found = await unit.session.scalars(select(Product).where(Product.id.in_(ids)))
                products = {product.id: product for product in found}
                for line in order.lines:
                    products[line.product_id].reserved += line.quantity
                order.status = OrderStatus.CONFIRMED
                await unit.flush()
                await self.outbox.add(
                    ORDERS_CONFIRMED,
                    OrderConfirmed(order_id=order.id, customer_id=order.customer_id),
                    key=order.customer_id,
                )
                unit.on_commit(_invalidate(self.cache, f"order:{order.id}", "products"))
        log.info("order confirmed", order_id=event.order_id)
