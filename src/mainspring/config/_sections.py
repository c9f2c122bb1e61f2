"""Settings sections shared by every service; subsystems add their own sections in their issues."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mainspring.errors import ConfigProblem

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: Keys whose values are masked in every log record (matched case-insensitively, at any depth).
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "authorization",
    "cookie",
    "set-cookie",
    "api_key",
    "apikey",
    "private_key",
    "client_secret",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LogFileSettings(_Section):
    """A log file with rotation: by size (``max_bytes``) or by time (``when``), keeping ``backups`` files."""

    path: Path
    rotation: Literal["size", "time", "none"] = "size"
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="rotate above this size")
    when: Literal["S", "M", "H", "D", "midnight", "W0", "W1", "W2", "W3", "W4", "W5", "W6"] = "midnight"
    backups: int = Field(default=7, ge=0, description="rotated files to keep (retention)")


class LoggingSettings(_Section):
    """How :func:`mainspring.logging.configure_logging` sets up logging."""

    level: LogLevel = "INFO"
    format: Literal["json", "console"] = "json"
    sink: Literal["stdout", "stderr", "file"] = "stdout"
    file: LogFileSettings | None = None
    non_blocking: bool = Field(
        default=False,
        description="render in the caller, write from a background thread; flushed on shutdown",
    )
    queue_size: int = Field(default=10_000, gt=0, description="records buffered in non-blocking mode")
    levels: dict[str, LogLevel] = Field(
        default_factory=dict, description="per-logger levels, e.g. {'sqlalchemy.engine': 'WARNING'}"
    )
    redact: bool = True
    redact_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_KEYS))
    redact_patterns: bool = Field(
        default=True, description="mask Luhn-valid card numbers and bearer tokens inside strings"
    )

    @field_validator("levels", mode="before")
    @classmethod
    def _upper_levels(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: v.upper() if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _file_sink_needs_file(self) -> Self:
        if self.sink == "file" and self.file is None:
            raise ValueError("sink 'file' needs a 'file' section; add logging.file.path")
        return self


#: Database URL schemes mainspring supports, each with the extra that installs its driver (None: built in).
#: asyncmy serves MySQL and MariaDB: the fastest maintained asyncio driver (Cython), supported by SQLAlchemy.
DATABASE_SCHEMES: dict[str, str | None] = {
    "sqlite+aiosqlite": None,
    "postgresql+asyncpg": "postgres",
    "mysql+asyncmy": "mysql",
    "mariadb+asyncmy": "mysql",
}

#: Bare schemes (no driver) accepted in database URLs, and the ``scheme+driver`` they stand for.
DATABASE_SCHEME_ALIASES: dict[str, str] = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}

_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_URL_PASSWORD = re.compile(r"(//[^:/@\s]*:)[^@/\s]*@")
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def supported_database_schemes() -> str:
    """Describe the supported database URL schemes and the extra each needs, for error messages."""
    parts = []
    for scheme, extra in DATABASE_SCHEMES.items():
        how = f"install 'mainspring[{extra}]'" if extra else "built in"
        parts.append(f"{scheme}:// ({how})")
    return ", ".join(parts)


def database_url_scheme(url: str) -> str:
    """Return the canonical ``scheme+driver`` of a database URL; ``ValueError`` naming the supported ones."""
    match = _URL_SCHEME.match(url.strip())
    if match is None:
        raise ValueError(f"a database URL starts with scheme://; use one of: {supported_database_schemes()}")
    scheme = match.group("scheme").lower()
    canonical = DATABASE_SCHEME_ALIASES.get(scheme, scheme)
    if canonical not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}; use one of: {supported_database_schemes()}"
        )
    return canonical


class DatabaseTLS(_Section):
    """TLS for PostgreSQL and MySQL/MariaDB connections (modes as in libpq's ``sslmode``).

    ``require`` encrypts without checking the server certificate; ``verify-ca`` checks it against
    ``ca_file`` (or the system CAs); ``verify-full`` also checks the host name. ``cert_file`` and
    ``key_file`` present a client certificate.
    """

    mode: Literal["disable", "require", "verify-ca", "verify-full"] = "verify-full"
    ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the server; system CAs if unset"
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")
    key_password: SecretStr | None = Field(default=None, description="password of an encrypted key_file")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate it belongs to)")
        return self


class DatabaseSettings(_Section):
    """One SQL database: URL, pool, timeouts and TLS; :meth:`mainspring.db.Database.from_settings` uses it.

    Keep the password out of ``url`` and in ``password`` (e.g. ``MAINSPRING_DATABASE__PASSWORD``), so it
    is handled as a secret everywhere; a password in the URL works too and is masked in reprs and errors.
    """

    # Validation errors must not echo the URL, which may carry a password.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    url: str = Field(
        default="sqlite+aiosqlite:///./mainspring.db",
        description="sqlite+aiosqlite:///file.db, postgresql+asyncpg://..., mysql+asyncmy://...",
    )
    password: SecretStr | None = Field(default=None, description="replaces the password in url when set")
    echo: bool = Field(default=False, description="log every SQL statement (development only)")
    pool_size: int = Field(default=5, ge=1, description="connections kept open")
    max_overflow: int = Field(default=10, ge=0, description="extra connections opened under load")
    pool_timeout: float = Field(default=10.0, gt=0, description="seconds to wait for a free connection")
    pool_recycle: float = Field(default=1800.0, gt=0, description="seconds before a connection is replaced")
    pool_pre_ping: bool = Field(default=True, description="check a connection before use; replaces dead ones")
    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to open one connection")
    statement_timeout: float | None = Field(
        default=None, gt=0, description="seconds a statement may run (PostgreSQL: all, MySQL: SELECT)"
    )
    start_timeout: float = Field(default=10.0, gt=0, description="seconds start() waits for the database")
    busy_timeout: float = Field(default=5.0, ge=0, description="SQLite: seconds to wait on a locked database")
    tls: DatabaseTLS | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        database_url_scheme(value)
        return value.strip()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL may carry a password: show it masked, as everywhere else.
        for name, value in super().__repr_args__():
            yield name, (_URL_PASSWORD.sub(r"\g<1>***@", value) if name == "url" else value)

    def production_problems(self) -> list[ConfigProblem]:
        """Return what makes this database unsafe for production: SQL echo, an in-memory SQLite."""
        problems: list[ConfigProblem] = []
        if self.echo:
            problems.append(
                ConfigProblem(
                    "echo",
                    "echo logs every SQL statement and its parameters; turn it off in production",
                    "True",
                )
            )
        scheme = database_url_scheme(self.url)
        if scheme.startswith("sqlite") and (":memory:" in self.url or self.url.rstrip("/").endswith(":")):
            problems.append(
                ConfigProblem("url", "an in-memory SQLite database loses every row on restart; use a file")
            )
        if self.tls is not None and self.tls.mode == "require":
            problems.append(
                ConfigProblem(
                    "tls.mode",
                    "'require' does not verify the server certificate; use 'verify-full' (or 'verify-ca')",
                    "'require'",
                )
            )
        return problems


def database_name_problem(name: str) -> str | None:
    """Return why ``name`` cannot name a database in ``Settings.databases``, or ``None`` if it can."""
    if name == "default":
        return "'default' is the database in the 'database' section; pick another name"
    if not _DATABASE_NAME.match(name):
        return "use letters, digits, '_' and '-' (starting with a letter or '_')"
    return None


#: Cache URL schemes, each with the extra its backend needs (None: built in). ``memory+redis`` is the
#: multi-level form (L1 in memory, L2 on Redis).
CACHE_SCHEMES: dict[str, str | None] = {
    "memory": None,
    "redis": "redis",
    "rediss": "redis",
    "memory+redis": "redis",
    "memory+rediss": "redis",
    "redis+sentinel": "redis",
    "redis+cluster": "redis",
}
_CACHE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def cache_url_scheme(url: str) -> str:
    """Return the scheme of a cache URL; ``ValueError`` naming the supported ones."""
    match = _URL_SCHEME.match(url.strip())
    scheme = match.group("scheme").lower() if match else None
    if scheme not in CACHE_SCHEMES:
        supported = ", ".join(f"{s}://" for s in CACHE_SCHEMES)
        raise ValueError(f"unsupported cache URL {url.split('?')[0]!r}; use one of: {supported}")
    return scheme


class CacheSettings(_Section):
    """The cache: backend URL, key space, ttls, codec and memory bounds; ``create_cache`` reads it.

    Every field but ``url`` and ``pickle_key`` may also be given in the URL's query string
    (``memory://?max_size=10000&policy=tinylfu``); the query wins.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    url: str = Field(default="memory://", description="memory://, redis://host:6379/0 (extra redis)")
    namespace: str = Field(default="mainspring", description="prefix of every key; one per service")
    schema_version: str = Field(default="v1", description="bump it to drop every entry of an old shape")
    default_ttl: float | None = Field(default=300.0, gt=0, description="seconds; null: no expiry")
    negative_ttl: float = Field(default=30.0, gt=0, description="seconds a cached None lives")
    stale_ttl: float = Field(
        default=0.0, ge=0, description="seconds past ttl a value may stand in (fail-safe)"
    )
    loader_timeout: float | None = Field(
        default=None, gt=0, description="seconds a get_or_set loader may run"
    )
    tag_ttl: float = Field(default=30 * 86400.0, gt=0, description="seconds a tag version lives")
    max_key_length: int = Field(default=250, ge=80, description="longer keys are shortened with sha256")
    xfetch_beta: float | None = Field(
        default=None, gt=0, description="early refresh (XFetch); 1.0 is typical"
    )
    refresh_ahead: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="refresh in the background when this fraction of the ttl is left",
    )
    codec: Literal["json", "msgpack", "pickle"] = Field(default="json", description="msgpack: extra cache")
    pickle_key: SecretStr | None = Field(
        default=None, description="HMAC key (32+ bytes) the pickle codec needs"
    )
    compression: Literal["none", "gzip", "lz4", "zstd"] = Field(
        default="none", description="lz4, zstd: extra cache"
    )
    compress_min_size: int = Field(default=1024, ge=0, description="compress payloads from this many bytes")
    max_size: int | None = Field(default=10_000, ge=1, description="memory: most entries; null: no bound")
    max_bytes: int | None = Field(
        default=None, ge=1, description="memory: most bytes (estimated); null: no bound"
    )
    policy: Literal["lru", "tinylfu"] = Field(default="tinylfu", description="memory: eviction policy")
    store: Literal["object", "bytes"] = Field(default="object", description="memory: keep objects, or encode")
    redis_timeout: float = Field(
        default=0.25, gt=0, description="redis: seconds per call (pool wait included); then a miss"
    )
    redis_connect_timeout: float = Field(default=1.0, gt=0, description="redis: seconds to connect")
    redis_max_connections: int = Field(default=50, ge=1, description="redis: pool size per process")
    redis_breaker_failures: int = Field(
        default=5, ge=1, description="redis: consecutive failures that open the circuit"
    )
    redis_breaker_cooldown: float = Field(
        default=5.0, gt=0, description="redis: seconds the circuit stays open before a probe"
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        cache_url_scheme(value)
        return value.strip()

    @field_validator("namespace", "schema_version")
    @classmethod
    def _key_part(cls, value: str) -> str:
        if not _CACHE_NAME.match(value):
            raise ValueError(
                "use letters, digits, '_', '.' and '-', starting with a letter or digit (no ':')"
            )
        return value

    @model_validator(mode="after")
    def _pickle_needs_key(self) -> Self:
        if self.codec == "pickle" and (
            self.pickle_key is None or len(self.pickle_key.get_secret_value()) < 32
        ):
            raise ValueError("codec 'pickle' needs pickle_key, a random secret of at least 32 characters")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A Redis URL may carry a password: show it masked, as everywhere else.
        for name, value in super().__repr_args__():
            yield name, (_URL_PASSWORD.sub(r"\g<1>***@", value) if name == "url" else value)

    def production_problems(self) -> list[ConfigProblem]:
        """Return what makes this cache unsafe for production: an unbounded memory cache."""
        problems: list[ConfigProblem] = []
        if (
            cache_url_scheme(self.url).startswith("memory")
            and self.max_size is None
            and self.max_bytes is None
        ):
            problems.append(
                ConfigProblem(
                    "max_size",
                    "an in-memory cache without max_size or max_bytes grows until the process runs out "
                    "of memory",
                    "None",
                )
            )
        return problems


#: Broker URL schemes and the extra each needs (``None``: nothing to install).
BROKER_SCHEMES: dict[str, str | None] = {
    "memory": None,
    "redis": "redis",
    "rediss": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
    "kafka": "kafka",
}


class MessagingSettings(_Section):
    """The message broker: URL, the CloudEvents ``source``, drain time and transport options.

    ``create_broker(settings.messaging)`` builds the broker. ``options`` go to the transport as keyword
    arguments (``claim_idle`` for Redis, ``queue_type`` for RabbitMQ, ``ack_wait`` for NATS, ...).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    url: str = Field(
        default="memory://",
        description="memory://, redis://, amqp://, nats://, kafka://host:port (extra of the same name)",
    )
    source: str = Field(default="mainspring", min_length=1, description="CloudEvents source of our messages")
    drain_timeout: float = Field(default=10.0, ge=0, description="seconds in-flight handlers get at stop")
    fetch_timeout: float = Field(default=1.0, gt=0, description="seconds a subscriber waits per fetch")
    options: dict[str, Any] = Field(default_factory=dict, description="transport keyword options")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        match = _URL_SCHEME.match(value.strip())
        scheme = match.group("scheme").lower() if match else None
        if scheme not in BROKER_SCHEMES:
            supported = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
            raise ValueError(f"unsupported broker URL {value.split('?')[0]!r}; use one of: {supported}")
        return value.strip()


#: Routes never traced by default: health probes and the Prometheus scrape.
DEFAULT_TRACING_EXCLUDED_URLS: tuple[str, ...] = ("/health/*", "/metrics")


class TracingSettings(_Section):
    """Distributed tracing (OpenTelemetry, extra ``otel``): exporter, sampling and untraced routes.

    ``init_tracing(settings)`` reads it. Off by default; with ``enabled: false`` nothing is imported and
    every tracing call is a no-op.
    """

    enabled: bool = Field(default=False, description="turn tracing on (needs the otel extra)")
    exporter: Literal["none", "console", "otlp"] = Field(
        default="none", description="where spans go: none (ids only), console (stdout), otlp (HTTP)"
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces"
    )
    otlp_timeout: float = Field(default=10.0, gt=0, description="seconds per OTLP export request")
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="share of new traces recorded; callers' decisions are kept"
    )
    excluded_urls: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TRACING_EXCLUDED_URLS),
        description="request paths never traced; a trailing /* matches the path and everything below",
    )

    @field_validator("excluded_urls")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "," in path:
                raise ValueError(f"excluded url {path!r} must be a path starting with '/' and without commas")
        return value

    @model_validator(mode="after")
    def _check_endpoint(self) -> Self:
        if self.enabled and self.exporter == "otlp" and not self.otlp_endpoint:
            raise ValueError("exporter 'otlp' needs otlp_endpoint (e.g. http://collector:4318/v1/traces)")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint {self.otlp_endpoint!r} must be an http:// or https:// URL")
        return self


class HttpClientSettings(_Section):
    """Outgoing HTTP (``mainspring.web.http_client``): timeouts, pool, retries and the per-host breaker."""

    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(default=30.0, gt=0, description="seconds to wait for each chunk of response")
    write_timeout: float = Field(default=30.0, gt=0, description="seconds to send each chunk of request")
    pool_timeout: float = Field(default=5.0, gt=0, description="seconds to wait for a free connection")
    max_connections: int = Field(default=100, ge=1, description="open connections, all hosts together")
    max_keepalive_connections: int = Field(default=20, ge=0, description="idle connections kept")
    retries: int = Field(default=2, ge=0, description="retries of an idempotent request (attempts - 1)")
    backoff_base: float = Field(default=0.1, gt=0, description="seconds; retry n waits up to base * 2**n")
    backoff_max: float = Field(default=5.0, gt=0, description="seconds; the longest backoff wait")
    retry_after_max: float = Field(
        default=30.0, ge=0, description="seconds; a longer Retry-After is not waited for, the reply returns"
    )
    breaker_enabled: bool = Field(default=True, description="one circuit breaker per host")
    breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="failure rate (5xx, connection errors) that opens a breaker"
    )
    breaker_minimum_calls: int = Field(default=10, ge=1, description="calls a breaker sees before judging")
    breaker_window_size: int = Field(default=100, ge=1, description="calls in a breaker's sliding window")
    breaker_open_duration: float = Field(default=30.0, gt=0, description="seconds open before probing")

    @model_validator(mode="after")
    def _check_breaker_window(self) -> Self:
        if self.breaker_minimum_calls > self.breaker_window_size:
            raise ValueError(
                f"breaker_minimum_calls ({self.breaker_minimum_calls}) must be <= breaker_window_size "
                f"({self.breaker_window_size})"
            )
        return self
