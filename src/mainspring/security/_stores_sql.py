"""SQL stores for API keys, refresh tokens, TOTP replay and recovery codes, on a mainspring Database.

The tables (``ms_api_key``, ``ms_refresh_family``, ``ms_refresh_token``, ``ms_totp_replay``,
``ms_recovery_code``) come from the library's migration ``ms_0002`` (``mainspring db upgrade``);
``await database.create_all(SqlApiKeyStore.metadata)`` creates them in tests and demos.

Every check-and-set is a conditional write whose row count decides, with the write first in its
transaction, so the database's row locks (SQLite: its write lock) serialise competitors: a rotation is
``UPDATE ... SET used = true WHERE used = false`` and a recovery code a ``DELETE``; exactly one of any
number of concurrent callers sees one row changed. Each call runs in ``database.run_in_transaction()``:
on its own it commits before returning (rerun if the database reports a deadlock), inside a caller's
unit of work it is a SAVEPOINT of that unit.
Times are Unix seconds in ``DOUBLE`` columns, as the records hold them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Insert,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    case,
    delete,
    false,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mainspring.errors import ConfigError, ConfigProblem, ValidationError
from mainspring.security._apikeys import ApiKeyRecord
from mainspring.security._refresh import RefreshTokenRecord, RotateOutcome
from mainspring.security._stores_base import (
    MAX_HASH_CHARS,
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_PREFIX_CHARS,
    check_api_key_record,
    check_code_hashes,
    check_number,
    check_refresh_record,
    check_sha256,
    check_text,
)

if TYPE_CHECKING:
    from mainspring.db import Database, IsolationLevel, UnitOfWork

T = TypeVar("T")

__all__ = [
    "SECURITY_METADATA",
    "SqlApiKeyStore",
    "SqlRecoveryCodeStore",
    "SqlRefreshTokenStore",
    "SqlTotpReplayStore",
]

#: The tables of the SQL security stores (what migration ``ms_0002`` creates).
SECURITY_METADATA: Final = MetaData()

_API_KEY: Final = Table(
    "ms_api_key",
    SECURITY_METADATA,
    Column("prefix", String(MAX_PREFIX_CHARS), nullable=False),
    Column("owner", String(MAX_ID_CHARS), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("scopes", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("name", String(MAX_NAME_CHARS), nullable=True),
    Column("created_at", Double(), nullable=False),
    Column("expires_at", Double(), nullable=True),
    Column("last_used_at", Double(), nullable=True),
    Column("revoked", Boolean(), nullable=False),
    PrimaryKeyConstraint("prefix", name="pk_ms_api_key"),
    Index("ix_ms_api_key_owner", "owner"),
)

_FAMILY: Final = Table(
    "ms_refresh_family",
    SECURITY_METADATA,
    Column("family_id", String(MAX_ID_CHARS), nullable=False),
    # The latest expiry of any token of the family: how long a revocation must be remembered.
    Column("expires_at", Double(), nullable=False),
    Column("revoked", Boolean(), nullable=False),
    PrimaryKeyConstraint("family_id", name="pk_ms_refresh_family"),
    Index("ix_ms_refresh_family_expires_at", "expires_at"),
)

_TOKEN: Final = Table(
    "ms_refresh_token",
    SECURITY_METADATA,
    Column("token_hash", String(64), nullable=False),
    Column("family_id", String(MAX_ID_CHARS), nullable=False),
    Column("subject", String(MAX_ID_CHARS), nullable=False),
    Column("issued_at", Double(), nullable=False),
    Column("expires_at", Double(), nullable=False),
    Column("family_expires_at", Double(), nullable=True),
    Column("used", Boolean(), nullable=False),
    PrimaryKeyConstraint("token_hash", name="pk_ms_refresh_token"),
    Index("ix_ms_refresh_token_family_id", "family_id"),
    Index("ix_ms_refresh_token_expires_at", "expires_at"),
)

_TOTP: Final = Table(
    "ms_totp_replay",
    SECURITY_METADATA,
    Column("replay_key", String(MAX_KEY_CHARS), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("expires_at", Double(), nullable=False),
    PrimaryKeyConstraint("replay_key", name="pk_ms_totp_replay"),
    Index("ix_ms_totp_replay_expires_at", "expires_at"),
)

_RECOVERY: Final = Table(
    "ms_recovery_code",
    SECURITY_METADATA,
    Column("user_id", String(MAX_ID_CHARS), nullable=False),
    Column("code_hash", String(MAX_HASH_CHARS), nullable=False),
    PrimaryKeyConstraint("user_id", "code_hash", name="pk_ms_recovery_code"),
)


Work = Callable[[AsyncConnection], Awaitable[T]]


class _SqlStore:
    """A store on one :class:`~mainspring.db.Database` (started before the first call)."""

    #: The tables of every SQL security store: ``await database.create_all(SqlApiKeyStore.metadata)``.
    metadata: ClassVar[MetaData] = SECURITY_METADATA

    def __init__(self, database: Database) -> None:
        # Late: mainspring.db pulls in Alembic, which few importers of mainspring.security need.
        from mainspring.db import Database, translate_db_error

        if not isinstance(database, Database):
            raise ConfigError(
                f"invalid {type(self).__name__} settings",
                problems=[ConfigProblem("database", "must be a mainspring.db.Database")],
            )
        self._db = database
        self._translate = translate_db_error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db!r})"

    async def _run(self, work: Work[T]) -> T:
        """Run ``work`` in a transaction of its own (a SAVEPOINT inside the caller's unit of work).

        On MySQL/MariaDB it runs at READ COMMITTED: at the default REPEATABLE READ, the gap locks of a
        ``DELETE`` or ``UPDATE`` that finds no row deadlock concurrent inserts for unrelated users, and
        every check-and-set here is a single locking statement that needs no snapshot. A deadlock or
        serialization failure that still happens rolls the whole transaction back, so it is rerun.
        """

        async def attempt(unit: UnitOfWork) -> T:
            return await work(await unit.session.connection())

        isolation: IsolationLevel | None = None
        if self._db.dialect == "mysql" and self._db.current() is None:
            isolation = "READ COMMITTED"
        return await self._db.run_in_transaction(attempt, attempts=10, isolation_level=isolation)

    async def _insert_new(self, connection: AsyncConnection, statement: Insert) -> bool:
        """Run ``statement`` in a SAVEPOINT; return False if it hit a unique constraint (the row exists).

        The SAVEPOINT is the connection's own, begun at once: on PostgreSQL a failed statement outside
        one would abort the whole transaction, the caller's included.
        """
        try:
            async with connection.begin_nested():
                await connection.execute(statement)
        except IntegrityError as exc:
            error = self._translate(exc, self._db.dialect, database=self._db.name)
            if error.code != "unique_violation":
                raise error from exc
            return False
        return True


class SqlApiKeyStore(_SqlStore):
    """An :class:`~mainspring.security.ApiKeyStore` in the ``ms_api_key`` table.

    ``update`` never clears ``revoked``: a concurrent ``verify()`` writing ``last_used_at`` cannot undo
    a ``revoke()`` that landed between its read and its write.
    """

    async def add(self, record: ApiKeyRecord) -> bool:
        """Insert a new record; return False (storing nothing) if its prefix is taken."""
        check_api_key_record(record)
        statement = insert(_API_KEY).values(
            prefix=record.prefix, revoked=record.revoked, **_key_values(record)
        )

        async def work(connection: AsyncConnection) -> bool:
            return await self._insert_new(connection, statement)

        return await self._run(work)

    async def get(self, prefix: str) -> ApiKeyRecord | None:
        """Return the record for ``prefix``, or None."""
        check_text("prefix", prefix, MAX_PREFIX_CHARS)

        async def work(connection: AsyncConnection) -> Row[Any] | None:
            return (await connection.execute(select(_API_KEY).where(_API_KEY.c.prefix == prefix))).first()

        row = await self._run(work)
        if row is None:
            return None
        return ApiKeyRecord(
            prefix=row.prefix,
            owner=row.owner,
            secret_hash=bytes.fromhex(row.secret_hash),
            scopes=tuple(row.scopes),
            name=row.name,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked=bool(row.revoked),
        )

    async def update(self, record: ApiKeyRecord) -> bool:
        """Replace the record with the same prefix (a revoked one stays revoked); False if there is none."""
        check_api_key_record(record)
        values = _key_values(record)
        if record.revoked:
            values["revoked"] = True
        statement = update(_API_KEY).where(_API_KEY.c.prefix == record.prefix).values(**values)

        async def work(connection: AsyncConnection) -> bool:
            return (await connection.execute(statement)).rowcount == 1

        return await self._run(work)


def _key_values(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "owner": record.owner,
        "secret_hash": record.secret_hash.hex(),
        "scopes": list(record.scopes),
        "name": record.name,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "last_used_at": record.last_used_at,
    }


def _refresh_record(row: Row[Any]) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=bytes.fromhex(row.token_hash),
        family_id=row.family_id,
        subject=row.subject,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        family_expires_at=row.family_expires_at,
        used=bool(row.used),
    )


def _succeed(record: RefreshTokenRecord, successor: RefreshTokenRecord) -> RefreshTokenRecord:
    expires_at = successor.expires_at
    if record.family_expires_at is not None:
        expires_at = min(expires_at, record.family_expires_at)
    return RefreshTokenRecord(
        token_hash=successor.token_hash,
        family_id=record.family_id,
        subject=record.subject,
        issued_at=successor.issued_at,
        expires_at=expires_at,
        family_expires_at=record.family_expires_at,
    )


def _token_values(record: RefreshTokenRecord) -> dict[str, Any]:
    return {
        "token_hash": record.token_hash.hex(),
        "family_id": record.family_id,
        "subject": record.subject,
        "issued_at": record.issued_at,
        "expires_at": record.expires_at,
        "family_expires_at": record.family_expires_at,
        "used": record.used,
    }


async def _extend_family(connection: AsyncConnection, family_id: str, expires_at: float) -> bool:
    """Raise the family's expiry to ``expires_at`` if it is later; return False if there is no such family."""
    later = case((_FAMILY.c.expires_at < expires_at, expires_at), else_=_FAMILY.c.expires_at)
    result = await connection.execute(
        update(_FAMILY).where(_FAMILY.c.family_id == family_id).values(expires_at=later)
    )
    return result.rowcount > 0


async def _revoke(connection: AsyncConnection, family_id: str) -> bool:
    result = await connection.execute(
        update(_FAMILY).where(_FAMILY.c.family_id == family_id).values(revoked=True)
    )
    return result.rowcount > 0


class SqlRefreshTokenStore(_SqlStore):
    """A :class:`~mainspring.security.RefreshTokenStore` in ``ms_refresh_token`` and ``ms_refresh_family``.

    :meth:`rotate` runs in one transaction: ``UPDATE ... SET used = true WHERE used = false`` claims the
    token (one winner however many race), the family row is read ``FOR UPDATE`` so a revocation cannot
    slip between the check and the successor's insert, and a loser that finds the token used revokes
    the family before it commits. Rows stay after they expire until :meth:`purge_expired` deletes them.
    """

    async def add(self, record: RefreshTokenRecord) -> None:
        """Insert a new record and create (or extend) its family."""
        check_refresh_record(record)
        new_family = insert(_FAMILY).values(
            family_id=record.family_id, expires_at=record.expires_at, revoked=False
        )

        async def work(connection: AsyncConnection) -> None:
            # A login starts a new family: insert first (an UPDATE of a missing row takes MySQL gap locks
            # that deadlock concurrent logins), extend the family only if it exists already.
            if not await self._insert_new(connection, new_family):
                await _extend_family(connection, record.family_id, record.expires_at)
            await connection.execute(insert(_TOKEN).values(**_token_values(record)))

        await self._run(work)

    async def rotate(
        self, token_hash: bytes, successor: RefreshTokenRecord, now: float
    ) -> tuple[RotateOutcome, RefreshTokenRecord | None]:
        """Retire ``token_hash`` and store ``successor`` in one transaction; see the protocol."""
        check_sha256("token_hash", token_hash)
        check_sha256("successor.token_hash", successor.token_hash)
        check_number("successor.issued_at", successor.issued_at)
        check_number("successor.expires_at", successor.expires_at)
        check_number("now", now)
        key = token_hash.hex()

        async def work(connection: AsyncConnection) -> tuple[RotateOutcome, RefreshTokenRecord | None]:
            # The write comes first: it takes the row lock (SQLite: the database write lock) that
            # orders concurrent rotations, and only one of them finds the token unused.
            claim = await connection.execute(
                update(_TOKEN)
                .where(_TOKEN.c.token_hash == key, _TOKEN.c.used == false(), _TOKEN.c.expires_at > now)
                .values(used=True)
            )
            claimed = claim.rowcount == 1
            row = (
                await connection.execute(select(_TOKEN).where(_TOKEN.c.token_hash == key).with_for_update())
            ).first()
            if row is None:
                return RotateOutcome.UNKNOWN, None
            record = _refresh_record(row)
            family = select(_FAMILY.c.revoked).where(_FAMILY.c.family_id == record.family_id)
            if (await connection.execute(family.with_for_update())).scalar():
                return RotateOutcome.REVOKED, record
            if claimed:
                stored = _succeed(record, successor)
                if not await _extend_family(connection, stored.family_id, stored.expires_at):
                    await connection.execute(
                        insert(_FAMILY).values(
                            family_id=stored.family_id, expires_at=stored.expires_at, revoked=False
                        )
                    )
                await connection.execute(insert(_TOKEN).values(**_token_values(stored)))
                return RotateOutcome.ROTATED, stored
            if record.used:
                if not await _revoke(connection, record.family_id):
                    await connection.execute(
                        insert(_FAMILY).values(
                            family_id=record.family_id, expires_at=record.expires_at, revoked=True
                        )
                    )
                return RotateOutcome.REUSED, record
            return RotateOutcome.EXPIRED, record

        return await self._run(work)

    async def revoke_family(self, family_id: str) -> None:
        """Revoke every token of ``family_id``, present and future (an unknown family has none)."""
        check_text("family_id", family_id, MAX_ID_CHARS)

        async def work(connection: AsyncConnection) -> bool:
            return await _revoke(connection, family_id)

        await self._run(work)

    async def is_family_revoked(self, family_id: str) -> bool:
        """Return True if ``family_id`` was revoked (for tests and admin tools)."""
        check_text("family_id", family_id, MAX_ID_CHARS)

        async def work(connection: AsyncConnection) -> bool:
            found = await connection.execute(
                select(_FAMILY.c.revoked).where(_FAMILY.c.family_id == family_id)
            )
            return bool(found.scalar())

        return await self._run(work)

    async def purge_expired(self, *, now: float | None = None) -> int:
        """Delete tokens and families past their expiry (default: now); return how many tokens went.

        Run it from a periodic job. A retired token deleted this way is "unknown" if presented again,
        which is refused all the same.
        """
        cutoff = time.time() if now is None else check_number("now", now)

        async def work(connection: AsyncConnection) -> int:
            tokens = await connection.execute(delete(_TOKEN).where(_TOKEN.c.expires_at <= cutoff))
            await connection.execute(delete(_FAMILY).where(_FAMILY.c.expires_at <= cutoff))
            return tokens.rowcount

        return await self._run(work)


class SqlTotpReplayStore(_SqlStore):
    """A :class:`~mainspring.security.TotpReplayStore` in the ``ms_totp_replay`` table.

    :meth:`claim` is a conditional ``UPDATE`` (a later step, or an expired record) and, for a key seen
    for the first time, an ``INSERT`` whose unique violation sends it back to the ``UPDATE``; only a
    write that moved the step forward returns True. ``clock`` returns Unix seconds; every process must
    share it, so the default is the wall clock. Rows stay after they expire until :meth:`purge_expired`
    deletes them.
    """

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``database``, which must be started before the first call."""
        super().__init__(database)
        self._clock = clock

    async def claim(self, key: str, step: int, *, ttl: float) -> bool:
        """Record ``step`` for ``key`` if it is later than the stored step; return whether it was."""
        check_text("key", key, MAX_KEY_CHARS)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValidationError(f"TOTP step must be a non-negative int, got {step!r}")
        if check_number("ttl", ttl) is None or ttl <= 0:
            raise ValidationError(f"TOTP replay ttl must be positive seconds, got {ttl!r}")
        now = self._clock()
        claim = (
            update(_TOTP)
            .where(_TOTP.c.replay_key == key, (_TOTP.c.step < step) | (_TOTP.c.expires_at <= now))
            .values(step=step, expires_at=now + ttl)
        )
        first = insert(_TOTP).values(replay_key=key, step=step, expires_at=now + ttl)

        async def update_step(connection: AsyncConnection) -> bool:
            return (await connection.execute(claim)).rowcount == 1

        async def insert_key(connection: AsyncConnection) -> bool:
            return await self._insert_new(connection, first)

        # Each step is its own transaction: on MySQL a duplicate-key error leaves a shared lock behind
        # until the transaction ends, and two losers that then both want to UPDATE the row would
        # deadlock on each other's shared locks. Someone who inserted the key meanwhile may hold an
        # earlier step than ours, hence the second UPDATE.
        return await self._run(update_step) or await self._run(insert_key) or await self._run(update_step)

    async def purge_expired(self, *, now: float | None = None) -> int:
        """Delete replay records past their expiry; return how many went."""
        cutoff = self._clock() if now is None else check_number("now", now)

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(delete(_TOTP).where(_TOTP.c.expires_at <= cutoff))).rowcount

        return await self._run(work)


class SqlRecoveryCodeStore(_SqlStore):
    """A :class:`~mainspring.security.RecoveryCodeStore` in the ``ms_recovery_code`` table.

    ``consume`` is one ``DELETE``: of concurrent uses of one code exactly one sees a row deleted.
    ``replace`` deletes and inserts in one transaction.
    """

    async def replace(self, user_id: str, hashes: Sequence[str]) -> None:
        """Replace every stored hash of ``user_id`` with ``hashes``."""
        check_text("user_id", user_id, MAX_ID_CHARS)
        rows = [{"user_id": user_id, "code_hash": h} for h in check_code_hashes(hashes)]

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(delete(_RECOVERY).where(_RECOVERY.c.user_id == user_id))
            if rows:
                await connection.execute(insert(_RECOVERY), rows)

        await self._run(work)

    async def hashes(self, user_id: str) -> list[str]:
        """Return the stored hashes of ``user_id`` (empty when none), in no particular order."""
        check_text("user_id", user_id, MAX_ID_CHARS)

        async def work(connection: AsyncConnection) -> list[str]:
            found = await connection.execute(
                select(_RECOVERY.c.code_hash).where(_RECOVERY.c.user_id == user_id)
            )
            return list(found.scalars())

        return await self._run(work)

    async def consume(self, user_id: str, hashed: str) -> bool:
        """Delete ``hashed`` from ``user_id``'s hashes; return whether it was there."""
        check_text("user_id", user_id, MAX_ID_CHARS)
        if not isinstance(hashed, str):
            raise ValidationError(f"recovery code hash must be a str, got {type(hashed).__name__}")
        statement = delete(_RECOVERY).where(_RECOVERY.c.user_id == user_id, _RECOVERY.c.code_hash == hashed)

        async def work(connection: AsyncConnection) -> bool:
            return (await connection.execute(statement)).rowcount == 1

        return await self._run(work)
