"""The demo's tables: users, products, orders and order lines, all audited and versioned.

They have a declarative base of their own (:class:`DemoBase`, with the library's constraint naming
convention), so importing the demo adds nothing to :data:`mainspring.db.Base`'s metadata; the change log
listeners work on every mapped model whatever its base.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mainspring.db import NAMING_CONVENTION, AuditColumns, IntPrimaryKey, Timestamps, Versioned, secret_column

__all__ = ["DemoBase", "Order", "OrderLine", "OrderStatus", "Product", "User"]


class DemoBase(DeclarativeBase):
    """Declarative base of the demo's tables, named by :data:`mainspring.db.NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OrderStatus:
    """The states of an order: placed by the API, then confirmed by the subscriber."""

    PLACED = "placed"
    CONFIRMED = "confirmed"


class User(IntPrimaryKey, Timestamps, AuditColumns, Versioned, DemoBase):
    """Someone who logs in: a ``customer`` (self-registered) or an ``admin`` (seeded)."""

    __tablename__ = "demo_users"
    __audited__ = True

    email: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="customer")
    # Never written to the change log, not even as "changed".
    password_hash: Mapped[str] = secret_column(String(200))


class Product(IntPrimaryKey, Timestamps, AuditColumns, Versioned, DemoBase):
    """Something to order.

    ``stock`` is what new orders may still take (placing an order takes from it); ``reserved`` is what
    confirmed orders hold (the subscriber adds to it when it confirms an order).
    """

    __tablename__ = "demo_products"
    __audited__ = True
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    )

    sku: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)


class Order(IntPrimaryKey, Timestamps, AuditColumns, Versioned, DemoBase):
    """A customer's order; its lines are loaded with it."""

    __tablename__ = "demo_orders"
    __audited__ = True

    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default=OrderStatus.PLACED)
    total_cents: Mapped[int] = mapped_column(Integer)
    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", lazy="selectin", cascade="all, delete-orphan", order_by="OrderLine.id"
    )


class OrderLine(IntPrimaryKey, DemoBase):
    """One product and quantity of an order, at the price it was ordered for."""

    __tablename__ = "demo_order_lines"

    order_id: Mapped[int] = mapped_column(ForeignKey("demo_orders.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("demo_products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Integer)
    order: Mapped[Order] = relationship(back_populates="lines")
