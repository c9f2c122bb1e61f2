"""Create the transactional outbox and the idempotent inbox.

Revision ID: ms_0003
Revises: ms_0002
Create Date: 2026-11-29

``outbox`` holds messages written in the same transaction as business data until ``OutboxRelay``
publishes them; ``inbox`` records the message ids each consumer has processed. As in ms_0001 the
tables are spelled out here rather than imported from ``mainspring.events``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "ms_0003"
down_revision: str | Sequence[str] | None = "ms_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    """Create ``outbox`` (with its pending and per-key indexes) and ``inbox``."""
    op.create_table(
        "outbox",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("headers", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column(
            "body", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False
        ),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("published_at", _TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
    )
    op.create_index("ix_outbox_pending", "outbox", ["published_at", "seq"], unique=False)
    op.create_index("ix_outbox_key", "outbox", ["key", "published_at", "seq"], unique=False)
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("processed_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "consumer", name="pk_inbox"),
    )


def downgrade() -> None:
    """Drop ``inbox`` and ``outbox`` (unpublished outbox messages are lost)."""
    op.drop_table("inbox")
    op.drop_index("ix_outbox_key", table_name="outbox")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_table("outbox")
