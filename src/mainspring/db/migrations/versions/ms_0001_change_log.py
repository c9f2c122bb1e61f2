"""Create the change_log table.

Revision ID: ms_0001
Revises:
Create Date: 2025-01-01

The column types are spelled out as the DDL they produce on each backend, rather than imported from the
model, so this revision keeps creating the same table whatever the model becomes later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "ms_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("mainspring",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``change_log`` and its lookup index (entity, entity_id, at)."""
    op.create_table(
        "change_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("changes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column(
            "at",
            # What mainspring.db.UTCDateTime uses: timestamptz, and microseconds on MySQL/MariaDB.
            sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_change_log"),
    )
    op.create_index("ix_change_log_entity", "change_log", ["entity", "entity_id", "at"], unique=False)


def downgrade() -> None:
    """Drop ``change_log`` (and with it the recorded history)."""
    op.drop_index("ix_change_log_entity", table_name="change_log")
    op.drop_table("change_log")
