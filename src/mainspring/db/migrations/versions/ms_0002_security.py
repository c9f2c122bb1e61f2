"""Create the tables of the SQL security stores.

Revision ID: ms_0002
Revises: ms_0001
Create Date: 2026-11-29

``ms_api_key``, ``ms_refresh_family``, ``ms_refresh_token``, ``ms_totp_replay`` and ``ms_recovery_code``
back ``mainspring.security``'s ``Sql*Store`` classes. As in ms_0001 the tables are spelled out here rather
than imported from the stores, so this revision keeps creating the same tables whatever the code becomes.
Times are Unix seconds (``DOUBLE``), hashes hex text.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "ms_0002"
down_revision: str | Sequence[str] | None = "ms_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the five ``ms_`` security tables and their indexes."""
    op.create_table(
        "ms_api_key",
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("last_used_at", sa.Double(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("prefix", name="pk_ms_api_key"),
    )
    op.create_index("ix_ms_api_key_owner", "ms_api_key", ["owner"], unique=False)
    op.create_table(
        "ms_refresh_family",
        sa.Column("family_id", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("family_id", name="pk_ms_refresh_family"),
    )
    op.create_index("ix_ms_refresh_family_expires_at", "ms_refresh_family", ["expires_at"], unique=False)
    op.create_table(
        "ms_refresh_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("family_expires_at", sa.Double(), nullable=True),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_ms_refresh_token"),
    )
    op.create_index("ix_ms_refresh_token_family_id", "ms_refresh_token", ["family_id"], unique=False)
    op.create_index("ix_ms_refresh_token_expires_at", "ms_refresh_token", ["expires_at"], unique=False)
    op.create_table(
        "ms_totp_replay",
        sa.Column("replay_key", sa.String(length=255), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("replay_key", name="pk_ms_totp_replay"),
    )
    op.create_index("ix_ms_totp_replay_expires_at", "ms_totp_replay", ["expires_at"], unique=False)
    op.create_table(
        "ms_recovery_code",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("code_hash", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "code_hash", name="pk_ms_recovery_code"),
    )


def downgrade() -> None:
    """Drop the security tables (every stored key, token, replay record and recovery code with them)."""
    op.drop_table("ms_recovery_code")
    op.drop_index("ix_ms_totp_replay_expires_at", table_name="ms_totp_replay")
    op.drop_table("ms_totp_replay")
    op.drop_index("ix_ms_refresh_token_expires_at", table_name="ms_refresh_token")
    op.drop_index("ix_ms_refresh_token_family_id", table_name="ms_refresh_token")
    op.drop_table("ms_refresh_token")
    op.drop_index("ix_ms_refresh_family_expires_at", table_name="ms_refresh_family")
    op.drop_table("ms_refresh_family")
    op.drop_index("ix_ms_api_key_owner", table_name="ms_api_key")
    op.drop_table("ms_api_key")
