"""``load_settings``: layers and their precedence, sources, profiles, env variables and error reports."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_settings import SettingsConfigDict

from mainspring.config import Settings, load_settings, load_settings_with_sources
from mainspring.errors import ConfigError, ConfigProblem


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the current directory, with an empty ``config/``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(error: pytest.ExceptionInfo[ConfigError]) -> dict[str, ConfigProblem]:
    return {p.path: p for p in error.value.problems}


class Layered(Settings):
    """One field per layer, so each layer's win is visible on its own."""

    from_base: str = "default"
    from_profile: str = "default"
    from_dotenv: str = "default"
    from_env: str = "default"
    from_overrides: str = "default"
    untouched: str = "default"


# --- defaults and precedence -------------------------------------------------------------------------


def test_without_files_or_environment_the_defaults_apply(project: Path) -> None:
    settings = load_settings(env={}, env_file=None)
    assert settings.profile == "dev"
    assert settings.service_name == "mainspring-service"
    assert settings.logging.level == "INFO"
    assert settings.cors.allow_origins == []


def test_missing_config_directory_means_no_files(project: Path) -> None:
    settings = load_settings(config_dir=project / "nowhere", env={}, env_file=None)
    assert settings.service_name == "mainspring-service"


def test_each_layer_overrides_the_ones_below(project: Path) -> None:
    names = ["from_base", "from_profile", "from_dotenv", "from_env", "from_overrides"]
    write(project / "config/base.yaml", "".join(f"{n}: base\n" for n in names))
    write(project / "config/dev.yaml", "".join(f"{n}: profile\n" for n in names[1:]))
    write(project / ".env", "".join(f"MAINSPRING_{n.upper()}=dotenv\n" for n in names[2:]))
    env = {f"MAINSPRING_{n.upper()}": "env" for n in names[3:]}

    settings, sources = load_settings_with_sources(
        Layered, env=env, overrides={"from_overrides": "overrides"}
    )

    assert (settings.from_base, settings.from_profile, settings.from_dotenv) == ("base", "profile", "dotenv")
    assert (settings.from_env, settings.from_overrides, settings.untouched) == ("env", "overrides", "default")
    assert sources["from_base"] == "config/base.yaml:1"
    assert sources["from_profile"] == "config/dev.yaml:1"
    assert sources["from_dotenv"] == ".env:1"
    assert sources["from_env"] == "env MAINSPRING_FROM_ENV"
    assert sources["from_overrides"] == "overrides"
    assert sources["untouched"] == "default"
    assert sources["profile"] == "default"


def test_nested_sections_merge_key_by_key_across_layers(project: Path) -> None:
    write(project / "config/base.yaml", "logging:\n  level: WARNING\n  format: console\n")
    write(project / "config/dev.yaml", "logging:\n  level: ERROR\n")
    settings, sources = load_settings_with_sources(env={}, env_file=None)
    assert (settings.logging.level, settings.logging.format) == ("ERROR", "console")
    assert sources["logging.level"] == "config/dev.yaml:2"
    assert sources["logging.format"] == "config/base.yaml:3"
    assert sources["logging.sink"] == "default"


def test_overrides_accept_dotted_and_nested_keys_together(project: Path) -> None:
    settings = load_settings(
        env={},
        env_file=None,
        overrides={
            "logging.level": "ERROR",
            "logging": {"format": "console"},
            "cors.allow_credentials": True,
        },
    )
    assert (settings.logging.level, settings.logging.format) == ("ERROR", "console")
    assert settings.cors.allow_credentials is True


def test_direct_construction_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSPRING_DEBUG", "true")
    assert Settings().debug is False


def test_env_none_reads_the_process_environment(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSPRING_SERVICE_NAME", "from-process")
    assert load_settings(env_file=None).service_name == "from-process"


# --- environment variables ---------------------------------------------------------------------------


def test_double_underscore_nests_into_sections(project: Path) -> None:
    settings = load_settings(env={"MAINSPRING_LOGGING__LEVEL": "debug"}, env_file=None)
    assert settings.logging.level == "DEBUG"


def test_list_and_mapping_fields_take_json(project: Path) -> None:
    env = {
        "MAINSPRING_CORS__ALLOW_ORIGINS": '["https://a.example", "https://b.example"]',
        "MAINSPRING_LOGGING__LEVELS": '{"sqlalchemy.engine": "warning"}',
    }
    settings = load_settings(env=env, env_file=None)
    assert settings.cors.allow_origins == ["https://a.example", "https://b.example"]
    assert settings.logging.levels == {"sqlalchemy.engine": "WARNING"}


def test_a_whole_section_as_json_is_refined_by_deeper_variables(project: Path) -> None:
    env = {
        "MAINSPRING_CORS": '{"allow_origins": ["https://a.example"], "allow_credentials": false}',
        "MAINSPRING_CORS__ALLOW_CREDENTIALS": "true",
    }
    settings = load_settings(env=env, env_file=None)
    assert settings.cors.allow_origins == ["https://a.example"]
    assert settings.cors.allow_credentials is True


def test_invalid_json_in_a_list_variable_names_the_variable(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"MAINSPRING_CORS__ALLOW_ORIGINS": "https://a.example"}, env_file=None)
    problem = problems_of(info)["cors.allow_origins"]
    assert problem.source == "env MAINSPRING_CORS__ALLOW_ORIGINS"
    assert "JSON" in problem.reason


def test_prefixed_variables_that_name_no_field_are_left_to_other_tools(project: Path) -> None:
    settings = load_settings(env={"MAINSPRING_REQUIRE_SERVICES": "1", "PATH": "/bin"}, env_file=None)
    assert settings.debug is False


def test_typo_below_a_known_section_is_reported_with_a_suggestion(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"MAINSPRING_LOGGING__LEVLE": "INFO"}, env_file=None)
    problem = problems_of(info)["logging.levle"]
    assert problem.source == "env MAINSPRING_LOGGING__LEVLE"
    assert "did you mean 'level'" in problem.reason


def test_malformed_variable_name_is_reported(project: Path) -> None:
    with pytest.raises(ConfigError, match="malformed variable name MAINSPRING_LOGGING____LEVEL"):
        load_settings(env={"MAINSPRING_LOGGING____LEVEL": "INFO"}, env_file=None)


# --- .env --------------------------------------------------------------------------------------------


def test_dotenv_in_the_current_directory_is_read_by_default(project: Path) -> None:
    write(project / ".env", "# a comment\nexport MAINSPRING_VERSION='1.2.3'\nUNRELATED=1\n")
    settings, sources = load_settings_with_sources(env={})
    assert settings.version == "1.2.3"
    assert sources["version"] == ".env:2"


def test_env_file_none_ignores_the_dotenv_file(project: Path) -> None:
    write(project / ".env", "MAINSPRING_VERSION=1.2.3\n")
    assert load_settings(env={}, env_file=None).version == "0.0.0"


def test_explicit_env_file_is_read_and_must_exist(project: Path) -> None:
    write(project / "deploy/prod.env", "MAINSPRING_VERSION=9\n")
    assert load_settings(env={}, env_file="deploy/prod.env").version == "9"
    with pytest.raises(ConfigError, match="cannot read the env file") as info:
        load_settings(env={}, env_file="deploy/missing.env")
    assert info.value.problems[0].source == "deploy/missing.env"


def test_unparsable_dotenv_line_is_reported_with_its_line(project: Path) -> None:
    write(project / ".env", "MAINSPRING_VERSION=1\n  this is not an assignment\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert info.value.problems[0].source == ".env:2"


# --- YAML files --------------------------------------------------------------------------------------


def test_invalid_value_in_yaml_is_reported_with_file_and_line(project: Path) -> None:
    write(project / "config/base.yaml", "service_name: orders\nlogging:\n  format: json\n  level: LOUD\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, env_file=None)
    problem = problems_of(info)["logging.level"]
    assert problem.source == "config/base.yaml:4"
    assert problem.value == "'LOUD'"
    assert "'DEBUG', 'INFO'" in problem.reason
    assert "config/base.yaml:4" in str(info.value)


def test_all_problems_from_all_layers_are_reported_together(project: Path) -> None:
    write(project / "config/base.yaml", "servce_name: orders\ndebug: maybe\n")
    write(project / "config/dev.yaml", "logging:\n  queue_size: -1\n")
    with pytest.raises(ConfigError, match=r"\(5 problems\)") as info:
        load_settings(
            env={"MAINSPRING_LOGGING__LEVEL": "LOUD"},
            env_file=None,
            overrides={"cors.allow_credentials": "sometimes"},
        )
    found = {p.path: p.source for p in info.value.problems}
    assert found == {
        "servce_name": "config/base.yaml:1",
        "debug": "config/base.yaml:2",
        "logging.queue_size": "config/dev.yaml:2",
        "logging.level": "env MAINSPRING_LOGGING__LEVEL",
        "cors.allow_credentials": "overrides",
    }
    assert "did you mean 'service_name'" in problems_of(info)["servce_name"].reason


def test_invalid_yaml_is_reported_with_file_and_line(project: Path) -> None:
    write(project / "config/base.yaml", "service_name: orders\nlogging:\n  level: [INFO\n  format: json\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_settings(env={}, env_file=None)
    assert info.value.problems[0].source == "config/base.yaml:4"


def test_top_level_that_is_not_a_mapping_is_refused(project: Path) -> None:
    write(project / "config/base.yaml", "- service_name\n- orders\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_settings(env={}, env_file=None)
    assert info.value.problems[0].source == "config/base.yaml:1"


def test_empty_yaml_file_configures_nothing(project: Path) -> None:
    write(project / "config/base.yaml", "# nothing yet\n")
    assert load_settings(env={}, env_file=None).service_name == "mainspring-service"


def test_duplicate_yaml_key_is_reported(project: Path) -> None:
    write(project / "config/base.yaml", "debug: false\nversion: '1'\ndebug: true\n")
    with pytest.raises(ConfigError, match="duplicate key") as info:
        load_settings(env={}, env_file=None)
    assert problems_of(info)["debug"].source == "config/base.yaml:3"


def test_yml_extension_is_not_silently_ignored(project: Path) -> None:
    write(project / "config/base.yml", "service_name: orders\n")
    with pytest.raises(ConfigError, match=r"rename it to base\.yaml"):
        load_settings(env={}, env_file=None)


def test_yaml_anchors_and_merge_keys_work(project: Path) -> None:
    write(
        project / "config/base.yaml",
        """
        cors:
          allow_origins: &origins ["https://a.example"]
        logging:
          <<: {level: ERROR, format: console}
          sink: stderr
          levels: {app: WARNING}
        """,
    )
    settings = load_settings(env={}, env_file=None)
    assert settings.cors.allow_origins == ["https://a.example"]
    assert (settings.logging.level, settings.logging.format, settings.logging.sink) == (
        "ERROR",
        "console",
        "stderr",
    )


def test_config_dir_that_is_a_file_is_refused(project: Path) -> None:
    write(project / "settings.yaml", "a: 1\n")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_settings(config_dir="settings.yaml", env={}, env_file=None)


def test_profile_key_inside_a_file_is_refused(project: Path) -> None:
    write(project / "config/base.yaml", "profile: prod\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, env_file=None)
    assert problems_of(info)["profile"].source == "config/base.yaml:1"


# --- ${VAR} expansion in YAML ------------------------------------------------------------------------


def test_yaml_values_expand_variables_and_defaults(project: Path) -> None:
    write(
        project / "config/base.yaml",
        "service_name: ${SERVICE}\nversion: ${VERSION:-0.1.0}\nlogging:\n  level: ${LEVEL:-warning}\n",
    )
    settings = load_settings(env={"SERVICE": "orders", "LEVEL": "error"}, env_file=None)
    assert (settings.service_name, settings.version, settings.logging.level) == ("orders", "0.1.0", "ERROR")


def test_escaped_reference_stays_literal(project: Path) -> None:
    write(project / "config/base.yaml", "service_name: cost-$${AMOUNT}\n")
    assert load_settings(env={"AMOUNT": "3"}, env_file=None).service_name == "cost-${AMOUNT}"


def test_missing_variable_is_named_with_file_and_line(project: Path) -> None:
    write(project / "config/base.yaml", "version: '1'\nservice_name: ${SERVICE_NAME}\n")
    with pytest.raises(ConfigError, match="SERVICE_NAME is not set") as info:
        load_settings(env={}, env_file=None)
    (problem,) = info.value.problems
    assert (problem.path, problem.source) == ("service_name", "config/base.yaml:2")


def test_missing_variable_in_a_required_field_is_reported_once(project: Path) -> None:
    class Needs(Settings):
        api_url: str

    write(project / "config/base.yaml", "api_url: ${API_URL}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Needs, env={}, env_file=None)
    assert [p.path for p in info.value.problems] == ["api_url"]
    assert "API_URL is not set" in info.value.problems[0].reason


def test_variables_are_not_expanded_in_numbers_or_keys(project: Path) -> None:
    write(project / "config/base.yaml", "logging:\n  levels:\n    ${NAME}: ERROR\n  queue_size: 5\n")
    settings = load_settings(env={"NAME": "x"}, env_file=None)
    assert settings.logging.levels == {"${NAME}": "ERROR"}


# --- profiles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["dev", "test", "prod"])
def test_builtin_profiles_need_no_file(project: Path, profile: str) -> None:
    overrides = {"secret_key": "k" * 16 + "Q7x!p2Lm9@z#R4tV"} if profile == "prod" else {}
    assert load_settings(profile=profile, env={}, env_file=None, overrides=overrides).profile == profile


def test_unknown_profile_lists_the_known_ones(project: Path) -> None:
    write(project / "config/staging.yaml", "debug: false\n")
    with pytest.raises(ConfigError) as info:
        load_settings(profile="qa", env={}, env_file=None)
    message = str(info.value)
    assert "unknown profile 'qa'" in message
    assert "dev, prod, staging, test" in message
    assert "\n" not in message
    assert info.value.details["known_profiles"] == ["dev", "prod", "staging", "test"]


def test_custom_profile_with_a_file_is_accepted(project: Path) -> None:
    write(project / "config/staging.yaml", "service_name: orders-staging\n")
    settings, sources = load_settings_with_sources(profile="staging", env={}, env_file=None)
    assert (settings.profile, settings.service_name) == ("staging", "orders-staging")
    assert sources["profile"] == "argument profile="


def test_profile_comes_from_the_environment_then_dotenv(project: Path) -> None:
    write(project / ".env", "MAINSPRING_PROFILE=test\n")
    settings, sources = load_settings_with_sources(env={})
    assert (settings.profile, sources["profile"]) == ("test", ".env:1")
    settings, sources = load_settings_with_sources(env={"MAINSPRING_PROFILE": "dev"})
    assert (settings.profile, sources["profile"]) == ("dev", "env MAINSPRING_PROFILE")


def test_empty_profile_variable_counts_as_unset(project: Path) -> None:
    assert load_settings(env={"MAINSPRING_PROFILE": ""}, env_file=None).profile == "dev"


def test_profile_argument_wins_over_the_environment(project: Path) -> None:
    settings = load_settings(profile="test", env={"MAINSPRING_PROFILE": "nope"}, env_file=None)
    assert settings.profile == "test"


def test_unknown_profile_from_environment_says_where_it_came_from(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'qa' \(env MAINSPRING_PROFILE\)"):
        load_settings(env={"MAINSPRING_PROFILE": "qa"}, env_file=None)


@pytest.mark.parametrize("name", ["../etc/passwd", "", "a b", "-x"])
def test_profile_names_cannot_escape_the_config_directory(project: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid profile name"):
        load_settings(profile=name, env={}, env_file=None)


# --- subclasses --------------------------------------------------------------------------------------


class PaymentsSettings(BaseModel):
    provider: str = "sandbox"
    timeout_s: float = 5.0
    retries: list[int] = []


class OrdersSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_")

    payments: PaymentsSettings = PaymentsSettings()
    api_url: str = "http://localhost:8000"


def test_subclass_uses_its_own_prefix_and_sections(project: Path) -> None:
    write(project / "config/base.yaml", "payments:\n  provider: stripe\n")
    env = {
        "ORDERS_PAYMENTS__TIMEOUT_S": "2.5",
        "ORDERS_PAYMENTS__RETRIES": "[1, 2, 4]",
        "ORDERS_LOGGING__LEVEL": "ERROR",
        "MAINSPRING_DEBUG": "true",
    }
    settings, sources = load_settings_with_sources(OrdersSettings, env=env, env_file=None)
    assert isinstance(settings, OrdersSettings)
    assert settings.payments == PaymentsSettings(provider="stripe", timeout_s=2.5, retries=[1, 2, 4])
    assert settings.logging.level == "ERROR"
    assert settings.debug is False, "the subclass reads ORDERS_*, not MAINSPRING_*"
    assert sources["payments.provider"] == "config/base.yaml:2"
    assert sources["payments.timeout_s"] == "env ORDERS_PAYMENTS__TIMEOUT_S"


def test_subclass_profile_variable_uses_its_prefix(project: Path) -> None:
    settings = load_settings(OrdersSettings, env={"ORDERS_PROFILE": "test"}, env_file=None)
    assert settings.profile == "test"


def test_missing_required_field_says_how_to_set_it(project: Path) -> None:
    class Needs(OrdersSettings):
        partner_id: str

    with pytest.raises(ConfigError) as info:
        load_settings(Needs, env={}, env_file=None)
    assert "ORDERS_PARTNER_ID" in problems_of(info)["partner_id"].reason
