"""The idempotent inbox: a message id recorded per consumer in the handler's own transaction."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import delete

from mainspring.db import Database
from mainspring.db._types import utcnow
from mainspring.errors import ConfigError, ConflictError, InternalError
from mainspring.events._models import CONSUMER_LENGTH, MESSAGE_ID_LENGTH, InboxEntry
from mainspring.logging import get_logger
from mainspring.messaging import Message

__all__ = ["Inbox", "idempotent"]

log = get_logger("mainspring.events")

P = ParamSpec("P")
T = TypeVar("T")


class Inbox:
    """Run a handler at most once per ``(message id, consumer)``.

    :meth:`process` opens a transaction, inserts the ``inbox`` row, then runs the handler inside the
    same transaction: the handler's own ``database.transaction()`` blocks join it (as savepoints), so
    the record and the business effect commit together. A redelivered message finds its row (the
    primary key) and is skipped; a handler that fails rolls its row back, so a retry runs it again.
    Give it to a broker as ``Broker(..., inbox=Inbox(db))`` and subscribe with ``inbox=True``.
    """

    def __init__(self, database: Database) -> None:
        """Record processed ids in ``database``'s ``inbox`` table."""
        self.database = database

    async def process(
        self, message: Message, consumer: str, handler: Callable[[], Awaitable[object]]
    ) -> bool:
        """Run ``handler`` unless ``consumer`` already processed ``message``; return whether it ran."""
        if not message.id or len(message.id) > MESSAGE_ID_LENGTH:
            raise ConfigError(
                f"inbox message ids must be 1-{MESSAGE_ID_LENGTH} characters, got {message.id!r}"
            )
        if not consumer or len(consumer) > CONSUMER_LENGTH:
            raise ConfigError(
                f"inbox consumer names must be 1-{CONSUMER_LENGTH} characters, got {consumer!r}"
            )
        if self.database.current() is not None:
            raise InternalError(
                "Inbox.process() starts its own transaction; call it outside `database.transaction()`"
            )
        recorded = False
        try:
            async with self.database.transaction() as unit:
                unit.session.add(InboxEntry(message_id=message.id, consumer=consumer, processed_at=utcnow()))
                await unit.flush()
                recorded = True
                await handler()
        except ConflictError:
            if recorded:
                raise  # the handler's own conflict, not a duplicate
            log.info("duplicate message skipped", message_id=message.id, consumer=consumer)
            return False
        return True

    async def seen(self, message_id: str, consumer: str) -> bool:
        """Return whether ``consumer`` has processed ``message_id``."""
        async with self.database.session() as session:
            return await session.get(InboxEntry, (message_id, consumer)) is not None

    async def cleanup(self, older_than: float) -> int:
        """Forget ids processed more than ``older_than`` seconds ago (keep it above any redelivery window)."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than)
        async with self.database.transaction() as unit:
            result = await unit.session.execute(delete(InboxEntry).where(InboxEntry.processed_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)


def idempotent(
    inbox: Inbox, *, consumer: str
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T | None]]]:
    """Make an async handler taking a :class:`Message` (anywhere in its arguments) run once per message id.

    A duplicate returns ``None`` without calling the handler. ``consumer`` names the effect (two
    handlers of one message use two consumer names).
    """

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | None]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
            message = next(
                (a for a in (*args, *kwargs.values()) if isinstance(a, Message)),
                None,
            )
            if message is None:
                raise ConfigError(f"@idempotent handler {fn.__qualname__} was called without a Message")
            result: list[T] = []

            async def run() -> None:
                result.append(await fn(*args, **kwargs))

            ran = await inbox.process(message, consumer, run)
            return result[0] if ran else None

        return wrapper

    return decorate
