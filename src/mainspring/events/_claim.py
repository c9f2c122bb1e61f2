"""How :class:`~mainspring.events.OutboxRelay` claims and settles one batch of outbox rows.

A claim reads a window of the oldest pending rows without locking them, so it knows for every key
which pending row is the oldest (the head). It locks up to ``batch_size`` of the window's rows with
``FOR UPDATE SKIP LOCKED`` (rows another relay holds are skipped) and takes the heads it holds, each
followed by its key's next rows up to the first one it could not lock. It then settles them in the
caller's transaction: deletes them, or marks them published when the relay keeps published rows.
The caller publishes the rows afterwards and commits; a failed publish rolls the settling back.

PostgreSQL does all of it in one statement; MySQL/MariaDB and SQLite read the window, lock, and
settle in three (SQLite has no row locks: one relay there). Rows come back as ``(topic, key,
headers, body)`` in ``seq`` order, the headers as the JSON text stored (orjson decodes it faster
than the column type would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Integer, Text, bindparam, delete, select, text, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter, TextClause

from mainspring.db._types import UTCDateTime, utcnow
from mainspring.db._url import Dialect
from mainspring.events._models import OutboxEntry

__all__ = ["BatchClaim"]

_TABLE = OutboxEntry.__tablename__

# PostgreSQL: window, lock, choice and settling in one statement, so one snapshot. A row another relay
# settled after that snapshot is seen pending in ``pending`` but cannot be locked (deleted, or no
# longer matching ``published_at IS NULL``), so its key waits for the next round. A keyed row is taken
# only if every earlier row of its key in the window is ours too (``ours_so_far``). The commit does not
# wait for its WAL flush (``relaxed``, this transaction only): a crash that loses the commit only puts
# the batch back to pending, and it was published before the commit, so delivery stays at least once.
_POSTGRES_CLAIM = """
WITH pending AS MATERIALIZED (
    SELECT seq, key FROM {table} WHERE published_at IS NULL ORDER BY seq LIMIT :window
), held AS MATERIALIZED (
    SELECT seq FROM {table}
    WHERE seq >= (SELECT min(seq) FROM pending) AND seq <= (SELECT max(seq) FROM pending)
        AND published_at IS NULL
    ORDER BY seq LIMIT :batch FOR UPDATE SKIP LOCKED
), ready AS (
    SELECT seq FROM (
        SELECT p.seq, p.key, h.seq IS NOT NULL AS ours,
            bool_and(h.seq IS NOT NULL) OVER (PARTITION BY p.key ORDER BY p.seq) AS ours_so_far
        FROM pending AS p LEFT JOIN held AS h ON h.seq = p.seq
    ) AS marked
    WHERE ours AND (key IS NULL OR ours_so_far)
), settled AS (
    {settle}
    RETURNING o.seq, o.topic, o.key, o.headers::text AS headers, o.body
), relaxed AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true)
)
SELECT topic, key, headers, body FROM settled, relaxed ORDER BY seq
"""
_POSTGRES_DELETE = "DELETE FROM {table} AS o USING ready WHERE o.seq = ready.seq"
_POSTGRES_MARK = (
    "UPDATE {table} AS o SET published_at = :now, attempts = o.attempts + 1"
    " FROM ready WHERE o.seq = ready.seq"
)

# MySQL/MariaDB settle by primary key through a join. With ``seq IN (...)`` InnoDB scans the whole
# table when its statistics are stale (a table that just filled up), and a DELETE waits on every row
# another relay holds along the way: concurrent relays deadlock. JSON_TABLE (MySQL 8, MariaDB 10.6,
# the versions SKIP LOCKED needs anyway) takes the seqs as one JSON array; STRAIGHT_JOIN makes it
# drive the join.
_MYSQL_BATCH = (
    "JSON_TABLE(:seqs, '$[*]' COLUMNS (seq BIGINT PATH '$')) AS batch"
    " STRAIGHT_JOIN {table} AS o ON o.seq = batch.seq"
)
_MYSQL_DELETE = "DELETE o FROM " + _MYSQL_BATCH
_MYSQL_MARK = "UPDATE " + _MYSQL_BATCH + " SET o.published_at = :now, o.attempts = o.attempts + 1"


def _statement(sql: str, binds: list[BindParameter[Any]], *, mark: bool) -> TextClause:
    if mark:
        binds.append(bindparam("now", type_=UTCDateTime()))
    return text(sql).bindparams(*binds)


class BatchClaim:
    """Claim and settle up to ``batch_size`` pending rows of ``dialect``'s outbox in one transaction.

    ``window`` pending rows are read to find each key's head (room for other relays' claims);
    ``mark`` keeps settled rows, marked published, instead of deleting them.
    """

    __slots__ = ("_dialect", "_mark", "_mysql_settle", "_postgres", "batch_size", "window")

    def __init__(self, dialect: Dialect, *, batch_size: int, window: int, mark: bool) -> None:
        """Prepare the statements; nothing runs before :meth:`__call__`."""
        self.batch_size = batch_size
        self.window = window
        self._dialect = dialect
        self._mark = mark
        settle = (_POSTGRES_MARK if mark else _POSTGRES_DELETE).format(table=_TABLE)
        self._postgres = _statement(
            _POSTGRES_CLAIM.format(table=_TABLE, settle=settle),
            [bindparam("window", type_=Integer()), bindparam("batch", type_=Integer())],
            mark=mark,
        )
        self._mysql_settle = _statement(
            (_MYSQL_MARK if mark else _MYSQL_DELETE).format(table=_TABLE),
            [bindparam("seqs", type_=Text())],
            mark=mark,
        )

    async def __call__(self, session: AsyncSession) -> Sequence[Any]:
        """Claim and settle a batch in ``session``'s transaction; return its rows (see the module)."""
        if self._dialect == "postgresql":
            params: dict[str, Any] = {"window": self.window, "batch": self.batch_size}
            if self._mark:
                params["now"] = utcnow()
            return (await session.execute(self._postgres, params)).all()
        rows = await self._lock(session)
        if rows:
            await self._settle(session, [row[0] for row in rows])
        return [row[1:] for row in rows]

    async def _lock(self, session: AsyncSession) -> list[Any]:
        window = (
            await session.execute(
                select(OutboxEntry.seq, OutboxEntry.key)
                .where(OutboxEntry.published_at.is_(None))
                .order_by(OutboxEntry.seq)
                .limit(self.window)
            )
        ).all()
        if not window:
            return []
        heads: list[int] = []
        followers: dict[str, list[int]] = {}
        for seq, key in window:
            if key is None:
                heads.append(seq)
            elif key in followers:
                followers[key].append(seq)
            else:
                followers[key] = []
                heads.append(seq)
        claim = (
            select(
                OutboxEntry.seq,
                OutboxEntry.topic,
                OutboxEntry.key,
                type_coerce(OutboxEntry.headers, Text),
                OutboxEntry.body,
            )
            .where(
                OutboxEntry.seq >= window[0][0],
                OutboxEntry.seq <= window[-1][0],
                OutboxEntry.published_at.is_(None),
            )
            .order_by(OutboxEntry.seq)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        locked = {row[0]: row for row in (await session.execute(claim)).all()}
        rows: list[Any] = []
        for seq in heads:
            row = locked.get(seq)
            if row is None:
                continue
            rows.append(row)
            for follower in followers.get(row[2], ()) if row[2] is not None else ():
                next_row = locked.get(follower)
                if next_row is None:
                    break  # keep the key's order: nothing after a row we could not take
                rows.append(next_row)
        # In seq order, which keeps every key's rows contiguous from its head.
        rows.sort(key=lambda row: row[0])
        return rows

    async def _settle(self, session: AsyncSession, seqs: list[int]) -> None:
        now = utcnow()
        if self._dialect == "mysql":
            params: dict[str, Any] = {"seqs": orjson.dumps(seqs).decode()}
            if self._mark:
                params["now"] = now
            await session.execute(self._mysql_settle, params)
        elif self._mark:
            await session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.seq.in_(seqs))
                .values(published_at=now, attempts=OutboxEntry.attempts + 1)
            )
        else:
            await session.execute(delete(OutboxEntry).where(OutboxEntry.seq.in_(seqs)))
