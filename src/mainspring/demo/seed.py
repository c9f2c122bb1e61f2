"""Seed data: an admin, a few products and an API key for a service client, made once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mainspring.context import Principal, bind_context
from mainspring.demo.app import DemoContext
from mainspring.demo.schemas import Credentials, ProductIn

__all__ = ["PRODUCTS", "SeedReport", "seed"]

#: The products a fresh demo database gets.
PRODUCTS: tuple[ProductIn, ...] = (
    ProductIn(sku="KB-01", name="Mechanical keyboard", price_cents=8900, stock=25),
    ProductIn(sku="MS-01", name="Wireless mouse", price_cents=2900, stock=50),
    ProductIn(sku="MN-27", name="27-inch monitor", price_cents=24900, stock=5),
)


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What :func:`seed` made; ``admin_password`` and ``api_key`` only when it made them (shown once)."""

    admin_email: str
    admin_password: str | None
    api_key: str | None
    products_added: int


async def seed(context: DemoContext) -> SeedReport:
    """Add the admin (``demo.admin_email``), :data:`PRODUCTS` and an API key, unless they exist.

    The admin's password is ``demo.admin_password`` or, when unset, a random one returned here.
    Runs as the principal ``seed``, so the audit columns and the change log say who made the rows.
    """
    settings = context.settings.demo
    with bind_context(principal=Principal(id="seed", kind="service")):
        admin_password: str | None = None
        api_key: str | None = None
        users = context.accounts.users
        if not await users.exists(filters={"email": settings.admin_email.lower()}):
            admin_password = (
                settings.admin_password.get_secret_value()
                if settings.admin_password is not None
                else secrets.token_urlsafe(12)
            )
            await context.accounts.register(
                Credentials(email=settings.admin_email, password=admin_password), role="admin"
            )
            issued = await context.accounts.issue_api_key("svc-reporting", ["service"], "seeded demo key")
            api_key = issued.key
        added = 0
        for product in PRODUCTS:
            if not await context.catalog.products.exists(filters={"sku": product.sku}):
                await context.catalog.create(product)
                added += 1
    return SeedReport(
        admin_email=settings.admin_email,
        admin_password=admin_password,
        api_key=api_key,
        products_added=added,
    )
