"""The ``outbox`` and ``inbox`` tables (library migration ``ms_0003``; ``ms_0004`` dropped an index)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import Mapped, mapped_column

from mainspring.db._base import Base
from mainspring.db._types import UTCDateTime

__all__ = ["InboxEntry", "OutboxEntry"]

#: Longest topic and key the tables hold (the broker allows topics of up to 200 characters).
TOPIC_LENGTH = 200
KEY_LENGTH = 255
CONSUMER_LENGTH = 200
MESSAGE_ID_LENGTH = 64


class OutboxEntry(Base):
    """A message waiting in the outbox (or published and kept for the relay's ``retention``)."""

    __tablename__ = "outbox"
    # No per-key index (ms_0004 dropped one): the relay finds each key's oldest pending row in the
    # window of pending rows it reads in ``seq`` order and settles by primary key; no query looks
    # rows up by key, and the index slowed every insert and settling.
    __table_args__ = (Index("ix_outbox_pending", "published_at", "seq"),)

    #: Insertion order; the relay publishes in this order (and per key strictly in it).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH), nullable=False, unique=True)
    topic: Mapped[str] = mapped_column(String(TOPIC_LENGTH), nullable=False)
    key: Mapped[str | None] = mapped_column(String(KEY_LENGTH), nullable=True)
    headers: Mapped[dict[str, Any]] = mapped_column(
        JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
    )
    body: Mapped[bytes] = mapped_column(
        LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class InboxEntry(Base):
    """A message id a consumer has processed; the primary key makes a second processing impossible."""

    __tablename__ = "inbox"

    message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(CONSUMER_LENGTH), primary_key=True)
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
