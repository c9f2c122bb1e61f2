"""The ``prod`` profile refuses unsafe settings, all at once, and services can add their own rules."""

from __future__ import annotations

import secrets
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from mainspring.config import Settings, SupportsProductionCheck, load_settings
from mainspring.errors import ConfigError, ConfigProblem

GOOD_KEY = secrets.token_urlsafe(48)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return tmp_path


def load_prod(cls: type[Settings] = Settings, **overrides: Any) -> Settings:
    overrides.setdefault("secret_key", GOOD_KEY)
    return load_settings(cls, profile="prod", env={}, env_file=None, overrides=overrides)


def refusals(cls: type[Settings] = Settings, **overrides: Any) -> dict[str, ConfigProblem]:
    with pytest.raises(ConfigError, match="profile 'prod' refuses") as info:
        load_prod(cls, **overrides)
    return {p.path: p for p in info.value.problems}


def test_a_safe_production_configuration_loads(project: Path) -> None:
    settings = load_prod(cors={"allow_origins": ["https://shop.example"], "allow_credentials": True})
    assert settings.is_production


def test_debug_mode_is_refused(project: Path) -> None:
    assert "debug" in refusals(debug=True)


def test_default_placeholder_secret_key_is_refused_and_masked(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_prod(secret_key="dev-insecure-change-me")
    reasons = [p.reason for p in info.value.problems if p.path == "secret_key"]
    assert len(reasons) == 2
    assert "placeholder" in reasons[0]
    assert "at least 32" in reasons[1]
    assert {p.value for p in info.value.problems} == {"**********"}
    assert "dev-insecure-change-me" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("dev-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6", "development value"),
        ("please-changeme-" + "a1B2c3D4e5F6g7H8i9J0", "placeholder"),
        ("tooShort-1", "at least 32"),
        ("ab" * 20, "distinct characters"),
    ],
)
def test_weak_secret_keys_are_refused(project: Path, key: str, reason: str) -> None:
    problem = refusals(secret_key=key)["secret_key"]
    assert reason in problem.reason
    assert key not in str(problem)


def test_wildcard_origin_with_credentials_is_refused(project: Path) -> None:
    problems = refusals(cors={"allow_origins": ["*"], "allow_credentials": True})
    assert "cors.allow_origins" in problems


def test_wildcard_origin_without_credentials_is_allowed(project: Path) -> None:
    assert load_prod(cors={"allow_origins": ["*"]}).cors.allow_origins == ["*"]


def test_debug_log_level_is_refused_for_root_and_each_logger(project: Path) -> None:
    problems = refusals(logging={"level": "debug", "levels": {"sqlalchemy.engine": "DEBUG", "app": "INFO"}})
    assert set(problems) == {"logging.level", "logging.levels.sqlalchemy.engine"}


def test_every_unsafe_setting_is_reported_together_with_its_source(project: Path) -> None:
    (project / "config/prod.yaml").write_text(
        textwrap.dedent(
            """\
            debug: true
            cors:
              allow_origins: ["*"]
              allow_credentials: true
            logging:
              level: DEBUG
            """
        )
    )
    with pytest.raises(ConfigError, match="refuses 5 unsafe settings") as info:
        load_settings(profile="prod", env={}, env_file=None)
    sources = {p.path: p.source for p in info.value.problems}
    assert sources == {
        "debug": "config/prod.yaml:1",
        "secret_key": "default",
        "cors.allow_origins": "config/prod.yaml:3",
        "logging.level": "config/prod.yaml:6",
    }
    assert len(info.value.problems) == 5  # the default key is both a placeholder and too short


@pytest.mark.parametrize("profile", ["dev", "test"])
def test_other_profiles_allow_development_settings(project: Path, profile: str) -> None:
    settings = load_settings(profile=profile, env={}, env_file=None, overrides={"debug": True})
    assert settings.debug is True


def test_subclass_adds_its_own_rule_and_keeps_the_built_in_ones(project: Path) -> None:
    class Shop(Settings):
        payments_sandbox: bool = True

        def production_problems(self) -> list[ConfigProblem]:
            problems = super().production_problems()
            if self.payments_sandbox:
                problems.append(ConfigProblem("payments_sandbox", "must be off in production", "True"))
            return problems

    (project / "config/prod.yaml").write_text("payments_sandbox: true\n")
    problems = refusals(Shop, debug=True)
    assert set(problems) == {"debug", "payments_sandbox"}
    assert problems["payments_sandbox"].source == "config/prod.yaml:1"


def test_sections_with_their_own_rules_are_asked_and_prefixed(project: Path) -> None:
    class Broker(BaseModel):
        url: str = "memory://"

        def production_problems(self) -> list[ConfigProblem]:
            if self.url.startswith("memory://"):
                return [
                    ConfigProblem("url", "the in-memory broker loses messages on restart", repr(self.url))
                ]
            return []

    class WithBroker(Settings):
        broker: Broker = Broker()

    assert isinstance(Broker(), SupportsProductionCheck)
    problem = refusals(WithBroker)["broker.url"]
    assert problem.source == "default"
    assert load_prod(WithBroker, broker={"url": "amqp://mq"}).broker.url == "amqp://mq"


def test_subclass_can_make_another_profile_a_production_one(project: Path) -> None:
    class Strict(Settings):
        production_profiles: ClassVar[frozenset[str]] = frozenset({"prod", "staging"})

    (project / "config/staging.yaml").write_text("debug: true\n")
    with pytest.raises(ConfigError, match="profile 'staging' refuses"):
        load_settings(Strict, profile="staging", env={}, env_file=None)


def test_secret_value_in_a_custom_rule_is_masked(project: Path) -> None:
    class Leaky(Settings):
        api_token: str = "abc"

        def production_problems(self) -> list[ConfigProblem]:
            return [ConfigProblem("api_token", "is the sample token", repr(self.api_token))]

    problem = refusals(Leaky)["api_token"]
    assert problem.value == "**********"
