"""What differs per backend when an engine is built: connect arguments, TLS, per-connection set-up.

SQLite gets WAL, foreign keys and a busy timeout on every connection, and its transactions are begun by
us (``BEGIN``) rather than by the sqlite3 module, which otherwise breaks SAVEPOINTs. PostgreSQL gets the
connect timeout, TLS and ``statement_timeout`` as connect arguments. MySQL/MariaDB get the connect timeout
and TLS as connect arguments, and a statement timeout set per connection (``max_execution_time`` on MySQL,
``max_statement_time`` on MariaDB).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mainspring.config._sections import DatabaseTLS
from mainspring.db._url import Dialect
from mainspring.errors import ConfigError, ConfigProblem

__all__ = ["ConnectOptions", "connect_args", "install_connection_setup", "ssl_context"]


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """The per-connection options of one database, as configured."""

    dialect: Dialect
    connect_timeout: float
    statement_timeout: float | None
    busy_timeout: float
    tls: DatabaseTLS | None


def ssl_context(tls: DatabaseTLS) -> ssl.SSLContext | None:
    """Build the client :class:`ssl.SSLContext` for ``tls``; ``None`` when TLS is disabled.

    Raises :class:`ConfigError` when a certificate or key file cannot be loaded.
    """
    if tls.mode == "disable":
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif tls.mode == "verify-ca":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
        if tls.cert_file is not None:
            password = tls.key_password.get_secret_value() if tls.key_password else None
            context.load_cert_chain(
                str(tls.cert_file), str(tls.key_file) if tls.key_file else None, password=password
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "the database TLS files could not be loaded",
            problems=[ConfigProblem("tls", f"{type(exc).__name__}: {exc.strerror or exc}")],
        ) from exc
    return context


def connect_args(options: ConnectOptions) -> dict[str, Any]:
    """Return the driver connect arguments for ``options``."""
    if options.dialect == "sqlite":
        if options.tls is not None:
            raise ConfigError(
                "TLS settings apply to PostgreSQL and MySQL only",
                problems=[ConfigProblem("tls", "remove it for a SQLite database")],
            )
        # sqlite3's own busy handler, in seconds; the PRAGMA below sets the same for clarity.
        return {"timeout": options.busy_timeout}
    args: dict[str, Any] = {}
    context = ssl_context(options.tls) if options.tls is not None else None
    if options.dialect == "postgresql":
        args["timeout"] = options.connect_timeout
        if options.tls is not None:
            args["ssl"] = context if context is not None else False
        if options.statement_timeout is not None:
            args["server_settings"] = {"statement_timeout": str(_millis(options.statement_timeout))}
        return args
    args["connect_timeout"] = options.connect_timeout
    if context is not None:
        args["ssl"] = context
    return args


def install_connection_setup(engine: AsyncEngine, options: ConnectOptions) -> None:
    """Register the per-connection set-up of ``options.dialect`` on ``engine``."""
    sync_engine = engine.sync_engine
    if options.dialect == "sqlite":
        busy_ms = _millis(options.busy_timeout)

        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (through the "begin" hook below) decide when a transaction starts;
            # the sqlite3 module's implicit BEGIN ignores SAVEPOINT and our isolation choices.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.execute("PRAGMA synchronous=NORMAL")
            finally:
                cursor.close()

        def _sqlite_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        event.listen(sync_engine, "connect", _sqlite_connect)
        event.listen(sync_engine, "begin", _sqlite_begin)
        return
    if options.dialect == "mysql" and options.statement_timeout is not None:
        seconds = options.statement_timeout

        def _mysql_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT VERSION()")
                row = cursor.fetchone()
                if row is not None and "mariadb" in str(row[0]).lower():
                    cursor.execute(f"SET SESSION max_statement_time = {seconds:.3f}")
                else:
                    cursor.execute(f"SET SESSION max_execution_time = {_millis(seconds)}")
            finally:
                cursor.close()

        event.listen(sync_engine, "connect", _mysql_connect)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))
