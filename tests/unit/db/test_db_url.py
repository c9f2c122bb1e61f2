"""Database URLs, settings and options: checked before anything connects, secrets never shown."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.config import DatabaseSettings, DatabaseTLS, Settings
from mainspring.db import Database
from mainspring.db._backends import ConnectOptions, connect_args, ssl_context
from mainspring.db._url import BACKENDS, mask_url, parse_url
from mainspring.errors import ConfigError, MissingDependencyError


@pytest.mark.parametrize(
    ("url", "scheme", "dialect"),
    [
        ("sqlite+aiosqlite:///app.db", "sqlite+aiosqlite", "sqlite"),
        ("sqlite:///app.db", "sqlite+aiosqlite", "sqlite"),
        ("postgresql+asyncpg://u:p@db:5432/orders", "postgresql+asyncpg", "postgresql"),
        ("postgresql://u:p@db/orders", "postgresql+asyncpg", "postgresql"),
        ("postgres://u:p@db/orders", "postgresql+asyncpg", "postgresql"),
        ("mysql+asyncmy://u:p@db/orders", "mysql+asyncmy", "mysql"),
        ("mysql://u:p@db/orders", "mysql+asyncmy", "mysql"),
        ("mariadb://u:p@db/orders", "mariadb+asyncmy", "mysql"),
    ],
)
def test_supported_urls_pick_the_async_driver(url: str, scheme: str, dialect: str) -> None:
    parsed = parse_url(url)
    assert parsed.backend.scheme == scheme
    assert parsed.dialect == dialect
    assert parsed.url.drivername == scheme


@pytest.mark.parametrize(
    "url", ["oracle://u:p@db/x", "postgresql+psycopg2://u@db/x", "mysql+aiomysql://u@db/x"]
)
def test_unknown_scheme_lists_the_supported_schemes_and_extras(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Database(url)
    message = caught.value.message
    assert "unsupported database URL scheme" in message
    for scheme in BACKENDS:
        assert f"{scheme}://" in message
    assert "mainspring[postgres]" in message
    assert "mainspring[mysql]" in message
    assert caught.value.details["supported"] == sorted(BACKENDS)


def test_url_without_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no scheme"):
        parse_url("app.db")


def test_server_url_without_database_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="names no database"):
        parse_url("postgresql+asyncpg://u:p@db:5432")


def test_malformed_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url("postgresql://u:s3cret@db:notaport/x")
    assert "s3cret" not in str(caught.value)


def test_separate_password_replaces_the_one_in_the_url() -> None:
    parsed = parse_url("postgresql://u:old@db/x", password="n3w")
    assert parsed.url.password == "n3w"
    assert "n3w" not in parsed.masked


def test_in_memory_sqlite_is_recognised() -> None:
    assert parse_url("sqlite+aiosqlite:///:memory:").is_memory
    assert parse_url("sqlite+aiosqlite://").is_memory
    assert not parse_url("sqlite+aiosqlite:///app.db").is_memory


_password = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), min_size=4, max_size=30)


@given(password=_password)
def test_masked_url_never_contains_the_password(password: str) -> None:
    from urllib.parse import quote

    quoted = quote(password, safe="")
    masked_url = "postgresql+asyncpg://app:***@db.internal:5432/orders"
    url = f"postgresql+asyncpg://app:{quoted}@db.internal:5432/orders"
    assert mask_url(url) == masked_url
    database = Database(url)
    assert database.url == masked_url
    for text in (repr(database), str(database)):
        assert masked_url in text
        assert f":{quoted}@" not in text


@given(text=st.text(max_size=60))
def test_mask_url_accepts_any_text(text: str) -> None:
    assert isinstance(mask_url(text), str)


def test_database_constructor_connects_to_nothing() -> None:
    # A closed port is fine until start(): the constructor only checks the configuration.
    database = Database("postgresql+asyncpg://u@127.0.0.1:1/x")
    assert not database.started
    assert database.dialect == "postgresql"
    assert database.name == "default"


@pytest.mark.parametrize(
    "options", [{"pool_size": 0}, {"pool_timeout": -1.0}, {"start_timeout": 0.0}, {"statement_timeout": 0.0}]
)
def test_non_positive_options_are_config_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        Database("sqlite+aiosqlite:///x.db", **options)  # type: ignore[arg-type]


async def test_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # makes `import asyncpg` fail like a missing package
    database = Database("postgresql+asyncpg://u@127.0.0.1:1/x")
    with pytest.raises(MissingDependencyError) as caught:
        await database.start()
    assert "mainspring[postgres]" in caught.value.message
    assert "PostgreSQL" in caught.value.message
    assert not database.started


# --- settings ------------------------------------------------------------------------------------------


def test_settings_have_a_default_sqlite_database_and_no_named_ones() -> None:
    settings = Settings()
    assert settings.database.url.startswith("sqlite+aiosqlite:///")
    assert settings.databases == {}


def test_settings_reject_an_unknown_scheme_with_the_supported_list() -> None:
    with pytest.raises(ValueError, match=r"unsupported database URL scheme 'oracle'.*mainspring\[postgres\]"):
        DatabaseSettings(url="oracle://u:p@db/x")


def test_settings_errors_do_not_echo_a_url_with_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        DatabaseSettings(url="oracle://u:s3cret@db/x")
    assert "s3cret" not in str(caught.value)


def test_settings_repr_masks_the_url_password_and_the_password_field() -> None:
    settings = DatabaseSettings(url="postgresql://u:in-url@db/x", password="in-field")
    for text in (repr(settings), str(settings)):
        assert "in-url" not in text
        assert "in-field" not in text
    assert "u:***@db" in repr(settings)


@pytest.mark.parametrize("name", ["default", "bad name", "1st", ""])
def test_named_databases_need_a_valid_name_other_than_default(name: str) -> None:
    with pytest.raises(ValueError, match="databases"):
        Settings(databases={name: DatabaseSettings()})


def test_production_refuses_sql_echo_in_every_database() -> None:
    settings = Settings(
        database=DatabaseSettings(echo=True),
        databases={"reporting": DatabaseSettings(url="postgresql://u@db/r", echo=True)},
    )
    paths = {problem.path for problem in settings.production_problems()}
    assert {"database.echo", "databases.reporting.echo"} <= paths


def test_production_refuses_in_memory_sqlite_and_unverified_tls() -> None:
    settings = Settings(
        database=DatabaseSettings(url="sqlite+aiosqlite:///:memory:"),
        databases={"r": DatabaseSettings(url="postgresql://u@db/r", tls=DatabaseTLS(mode="require"))},
    )
    paths = {problem.path for problem in settings.production_problems()}
    assert {"database.url", "databases.r.tls.mode"} <= paths


def test_production_accepts_a_sensible_database() -> None:
    settings = Settings(database=DatabaseSettings(url="postgresql://u@db/x", tls=DatabaseTLS()))
    assert not [p for p in settings.production_problems() if p.path.startswith("database")]


def test_settings_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        DatabaseSettings(pool_size=0)
    with pytest.raises(ValueError, match="key_file needs cert_file"):
        DatabaseTLS(key_file=Path("client.key"))


# --- connect arguments and TLS -----------------------------------------------------------------------


def options(dialect: str, **kwargs: object) -> ConnectOptions:
    values: dict[str, object] = {
        "connect_timeout": 3.0,
        "statement_timeout": None,
        "busy_timeout": 5.0,
        "tls": None,
    }
    values.update(kwargs)
    return ConnectOptions(dialect, **values)  # type: ignore[arg-type]


def test_postgres_connect_args_carry_timeouts() -> None:
    args = connect_args(options("postgresql", statement_timeout=1.5))
    assert args == {"timeout": 3.0, "server_settings": {"statement_timeout": "1500"}}


def test_mysql_connect_args_carry_the_connect_timeout() -> None:
    assert connect_args(options("mysql")) == {"connect_timeout": 3.0}


def test_sqlite_with_tls_settings_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TLS settings apply to PostgreSQL and MySQL only"):
        Database("sqlite+aiosqlite:///x.db", tls=DatabaseTLS())


@pytest.mark.parametrize(
    ("mode", "verify", "hostname"),
    [
        ("require", ssl.CERT_NONE, False),
        ("verify-ca", ssl.CERT_REQUIRED, False),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_tls_modes_build_the_matching_ssl_context(mode: str, verify: ssl.VerifyMode, hostname: bool) -> None:
    context = ssl_context(DatabaseTLS(mode=mode))
    assert context is not None
    assert context.verify_mode == verify
    assert context.check_hostname is hostname
    args = connect_args(options("postgresql", tls=DatabaseTLS(mode=mode)))
    assert args["ssl"] is not None


def test_disabled_tls_turns_ssl_off_for_postgres() -> None:
    assert ssl_context(DatabaseTLS(mode="disable")) is None
    assert connect_args(options("postgresql", tls=DatabaseTLS(mode="disable")))["ssl"] is False


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS files could not be loaded"):
        ssl_context(DatabaseTLS(ca_file=tmp_path / "missing-ca.pem"))


def test_loader_reads_databases_from_the_environment_and_masks_bad_urls(tmp_path: Path) -> None:
    from mainspring.config import load_settings

    env = {
        "MAINSPRING_DATABASE__URL": "postgresql://orders@db/orders",
        "MAINSPRING_DATABASE__PASSWORD": "pw-from-env",
        "MAINSPRING_DATABASES__REPORTING__URL": "mysql://reports@replica/orders",
    }
    settings = load_settings(env=env, env_file=None, config_dir=tmp_path)
    assert settings.database.password is not None
    assert Database.from_settings(settings.database)._parsed.url.password == "pw-from-env"
    assert settings.databases["reporting"].url == "mysql://reports@replica/orders"

    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={"MAINSPRING_DATABASE__URL": "oracle://u:pw-in-url@db/x"}, env_file=None, config_dir=tmp_path
        )
    assert "database.url" in str(caught.value)
    assert "mainspring[postgres]" in str(caught.value)
    assert "pw-in-url" not in str(caught.value)
