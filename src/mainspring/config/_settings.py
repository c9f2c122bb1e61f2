"""The :class:`Settings` base class every service subclasses, and the sections it carries."""

from __future__ import annotations

from typing import Annotated, ClassVar, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mainspring.config._safety import DEV_SECRET_KEY, debug_level_problems, secret_key_problems
from mainspring.config._sections import (
    CacheSettings,
    DatabaseSettings,
    HttpClientSettings,
    LoggingSettings,
    MessagingSettings,
    TracingSettings,
    _Section,
    database_name_problem,
)
from mainspring.errors import ConfigProblem

#: Profiles that exist without a file; any other profile needs ``config/<profile>.yaml``.
BUILTIN_PROFILES: tuple[str, ...] = ("dev", "test", "prod")


def _database_name(name: str) -> str:
    problem = database_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


#: A key of ``Settings.databases``; validated alone so an error shows the name, never the URL.
DatabaseName = Annotated[str, AfterValidator(_database_name)]


@runtime_checkable
class SupportsProductionCheck(Protocol):
    """A settings section that knows its own production rules.

    :meth:`Settings.production_problems` finds every section (at any depth) that has this method and
    prefixes the paths of the problems it returns with the section's own path.
    """

    def production_problems(self) -> list[ConfigProblem]:
        """Return what makes this section unsafe for production; paths are relative to the section."""
        ...


class CorsSettings(_Section):
    """Cross-origin resource sharing for the web runtime."""

    allow_origins: list[str] = Field(
        default_factory=list, description="origins allowed to call the API; '*' allows any"
    )
    allow_credentials: bool = Field(default=False, description="allow cookies and Authorization headers")


class Settings(BaseSettings):
    """Base class of a service's settings; subclass it and add your own fields and sections.

    Build instances with :func:`mainspring.config.load_settings`, which layers defaults, YAML files,
    ``.env``, environment variables and overrides. Constructing the class directly gives the defaults
    plus whatever you pass: it never reads the environment (only the loader does).
    """

    model_config = SettingsConfigDict(
        env_prefix="MAINSPRING_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    #: Profiles whose settings must pass :meth:`production_problems`; a subclass may add e.g. "staging".
    production_profiles: ClassVar[frozenset[str]] = frozenset({"prod"})

    service_name: str = Field(default="mainspring-service", min_length=1)
    version: str = "0.0.0"
    profile: str = Field(default="dev", description="the active profile; set by the loader")
    debug: bool = False
    secret_key: SecretStr = Field(
        default=SecretStr(DEV_SECRET_KEY), description="signs tokens and cookies; at least 32 characters"
    )
    cors: CorsSettings = Field(default_factory=CorsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings, description="the default SQL database (named 'default')"
    )
    databases: dict[DatabaseName, DatabaseSettings] = Field(
        default_factory=dict, description="more named SQL databases, e.g. {'reporting': {...}}"
    )
    cache: CacheSettings = Field(default_factory=CacheSettings, description="the cache (mainspring.cache)")
    messaging: MessagingSettings = Field(
        default_factory=MessagingSettings, description="the message broker (mainspring.messaging)"
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings, description="OpenTelemetry tracing (mainspring.observability)"
    )
    http_client: HttpClientSettings = Field(
        default_factory=HttpClientSettings, description="outgoing HTTP (mainspring.web.http_client)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Use only the values passed in: the loader owns the environment, files and precedence."""
        return (init_settings,)

    @property
    def is_production(self) -> bool:
        """Say whether the active profile is one of :attr:`production_profiles`."""
        return self.profile in self.production_profiles

    def production_problems(self) -> list[ConfigProblem]:
        """Return every setting that is unsafe in production; the loader refuses to start if any.

        Override it to add your own rules, and keep the built-in ones::

            def production_problems(self) -> list[ConfigProblem]:
                problems = super().production_problems()
                if self.payments.sandbox:
                    problems.append(ConfigProblem("payments.sandbox", "must be off in production"))
                return problems

        Sections that implement :class:`SupportsProductionCheck` are asked too.
        """
        problems: list[ConfigProblem] = []
        if self.debug:
            problems.append(ConfigProblem("debug", "debug mode is not allowed in production", "True"))
        problems.extend(secret_key_problems(self.secret_key.get_secret_value()))
        if "*" in self.cors.allow_origins and self.cors.allow_credentials:
            problems.append(
                ConfigProblem(
                    "cors.allow_origins",
                    "'*' together with allow_credentials lets any site act as the user; list the origins",
                    "['*']",
                )
            )
        problems.extend(debug_level_problems(self.logging.level, sorted(self.logging.levels.items())))
        problems.extend(_section_problems(self, ""))
        for name, database in self.databases.items():
            # Sections inside a mapping are not walked by _section_problems.
            for problem in database.production_problems():
                path = f"databases.{name}.{problem.path}"
                problems.append(ConfigProblem(path, problem.reason, problem.value, problem.source))
        return problems


def _section_problems(model: BaseModel, prefix: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if not isinstance(value, BaseModel):
            continue
        path = f"{prefix}{name}"
        if isinstance(value, SupportsProductionCheck):
            for problem in value.production_problems():
                inner = f"{path}.{problem.path}" if problem.path else path
                problems.append(ConfigProblem(inner, problem.reason, problem.value, problem.source))
        problems.extend(_section_problems(value, f"{path}."))
    return problems
