"""Request and response bodies of the demo API, and the events it publishes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

__all__ = [
    "ApiKeyIn",
    "ApiKeyOut",
    "Credentials",
    "OrderConfirmed",
    "OrderIn",
    "OrderLineIn",
    "OrderLineOut",
    "OrderOut",
    "OrderPlaced",
    "ProductIn",
    "ProductOut",
    "RefreshIn",
    "StockIn",
    "TokenPair",
    "UserOut",
]

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Credentials(BaseModel):
    """An email and a password: the body of register and login."""

    email: str = Field(pattern=EMAIL_PATTERN, max_length=200, examples=["ada@example.com"])
    password: str = Field(min_length=8, max_length=200, examples=["correct horse battery staple"])


class UserOut(BaseModel):
    """A user as the API shows it (never the password hash)."""

    id: int
    email: str
    role: str


class TokenPair(BaseModel):
    """What login and refresh return (OAuth 2 token response fields)."""

    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int


class RefreshIn(BaseModel):
    """The refresh token to trade for a new pair."""

    refresh_token: str = Field(min_length=1, max_length=200)


class ApiKeyIn(BaseModel):
    """An API key to issue for a service client."""

    owner: str = Field(min_length=1, max_length=100, examples=["svc-reporting"])
    scopes: list[str] = Field(default_factory=lambda: ["service"], examples=[["service"]])
    name: str | None = Field(default=None, max_length=100)


class ApiKeyOut(BaseModel):
    """A new API key: ``key`` is shown this once."""

    key: str
    prefix: str
    owner: str
    scopes: list[str]


class ProductIn(BaseModel):
    """A new product."""

    sku: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0)
    stock: int = Field(default=0, ge=0)


class StockIn(BaseModel):
    """A stock change; ``version`` is the product's version the change is based on (optimistic locking)."""

    stock: int = Field(ge=0)
    version: int = Field(ge=1)


class ProductOut(BaseModel):
    """A product with its stock and version."""

    id: int
    sku: str
    name: str
    price_cents: int
    stock: int
    reserved: int
    version: int


class OrderLineIn(BaseModel):
    """One product and quantity of a new order."""

    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=1000)


class OrderIn(BaseModel):
    """A new order."""

    lines: list[OrderLineIn] = Field(min_length=1, max_length=50)


class OrderLineOut(BaseModel):
    """One line of an order."""

    product_id: int
    quantity: int
    price_cents: int


class OrderOut(BaseModel):
    """An order and its lines."""

    id: int
    customer_id: str
    status: str
    total_cents: int
    version: int
    lines: list[OrderLineOut]


class OrderPlaced(BaseModel):
    """Published (through the outbox) when an order is placed."""

    event_type: ClassVar[str] = "demo.order.placed.v1"

    order_id: int
    customer_id: str
    lines: list[OrderLineOut]


class OrderConfirmed(BaseModel):
    """Published (through the outbox) when the subscriber reserved an order's stock."""

    event_type: ClassVar[str] = "demo.order.confirmed.v1"

    order_id: int
    customer_id: str
