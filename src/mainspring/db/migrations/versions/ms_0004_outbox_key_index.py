"""Drop the outbox's unused per-key index.

Revision ID: ms_0004
Revises: ms_0003
Create Date: 2026-11-29

``ix_outbox_key`` (``key, published_at, seq``) served no query: the relay finds each key's oldest
pending row in a window of pending rows read in ``seq`` order and settles rows by primary key; the
backlog and the cleanup filter on ``published_at`` (``ix_outbox_pending``). The index only cost
time on every insert and every settled row. The downgrade creates it again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "ms_0004"
down_revision: str | Sequence[str] | None = "ms_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Drop ``ix_outbox_key``."""
    op.drop_index("ix_outbox_key", table_name="outbox")


def downgrade() -> None:
    """Create ``ix_outbox_key`` again."""
    op.create_index("ix_outbox_key", "outbox", ["key", "published_at", "seq"], unique=False)
