"""The demo's HTTP API: ``/auth``, ``/products``, ``/orders`` and ``/api-keys``.

Routes authenticate and authorise through :mod:`mainspring.security.fastapi` and call the services;
every error is a :class:`~mainspring.errors.MainspringError` that the app renders as problem+json.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime, and some name
# dependencies made inside build_routers.

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from mainspring.context import Principal
from mainspring.demo.app import DemoContext
from mainspring.demo.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    Credentials,
    OrderIn,
    OrderOut,
    ProductIn,
    ProductOut,
    RefreshIn,
    StockIn,
    TokenPair,
    UserOut,
)
from mainspring.security.fastapi import current_principal, rate_limit, require_permissions

__all__ = ["build_routers"]

#: ``X-Cache: hit`` when an order read was served from the cache, ``miss`` when it was loaded.
CACHE_HEADER = "X-Cache"


def build_routers(context: DemoContext) -> list[APIRouter]:
    """Return the demo's routers, bound to ``context``'s services."""
    accounts, catalog, orders = context.accounts, context.catalog, context.orders
    login_limited = rate_limit(context.limiter, context.login_limit, by="ip", scope="login")

    auth = APIRouter(prefix="/auth", tags=["auth"])

    @auth.post("/register", status_code=status.HTTP_201_CREATED)
    async def register(credentials: Credentials) -> UserOut:
        """Create a customer account (409 if the email is taken)."""
        return await accounts.register(credentials)

    @auth.post("/login", dependencies=[Depends(login_limited)])
    async def login(credentials: Credentials) -> TokenPair:
        """Trade an email and password for an access token (JWT) and a refresh token; rate-limited."""
        return await accounts.login(credentials)

    @auth.post("/refresh")
    async def refresh(body: RefreshIn) -> TokenPair:
        """Trade a refresh token for a new pair (the old one stops working)."""
        return await accounts.refresh(body.refresh_token)

    @auth.get("/me")
    async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, object]:
        """Who the credentials belong to."""
        return {
            "id": principal.id,
            "kind": principal.kind,
            "roles": sorted(principal.roles),
            "auth_method": principal.auth_method,
        }

    products = APIRouter(prefix="/products", tags=["products"])

    @products.get("")
    async def list_products() -> list[ProductOut]:
        """Every product with its stock (cached; anyone may read it)."""
        return await catalog.list()

    @products.post(
        "",
        status_code=status.HTTP_201_CREATED,
        dependencies=[Depends(require_permissions("products:write"))],
    )
    async def create_product(product: ProductIn) -> ProductOut:
        """Add a product (admin)."""
        return await catalog.create(product)

    @products.put("/{product_id}/stock", dependencies=[Depends(require_permissions("products:write"))])
    async def set_stock(product_id: int, body: StockIn) -> ProductOut:
        """Set a product's stock, if it is still at ``version`` (else 409 ``stale_version``) (admin)."""
        return await catalog.set_stock(product_id, body.stock, body.version)

    order_routes = APIRouter(prefix="/orders", tags=["orders"])

    @order_routes.post("", status_code=status.HTTP_201_CREATED)
    async def place_order(
        order: OrderIn, principal: Annotated[Principal, Depends(require_permissions("orders:create"))]
    ) -> OrderOut:
        """Place an order: stock is taken now, the subscriber confirms it shortly after."""
        return await orders.place(principal.id, order)

    @order_routes.get("/{order_id}")
    async def get_order(
        order_id: int,
        response: Response,
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> OrderOut:
        """Read an order: its owner, or anyone with ``orders:read_any`` (else 403); see ``X-Cache``."""
        found, cached = await orders.get(order_id, principal)
        response.headers[CACHE_HEADER] = "hit" if cached else "miss"
        return found

    api_keys = APIRouter(prefix="/api-keys", tags=["api keys"])

    @api_keys.post(
        "",
        status_code=status.HTTP_201_CREATED,
        dependencies=[Depends(require_permissions("api_keys:write"))],
    )
    async def issue_api_key(body: ApiKeyIn) -> ApiKeyOut:
        """Issue an API key for a service client (admin); the key is shown once."""
        return await accounts.issue_api_key(body.owner, body.scopes, body.name)

    return [auth, products, order_routes, api_keys]
