"""The mainspring pytest plugin: settings, log capture and isolated real-service fixtures.

Loaded automatically through the ``pytest11`` entry point once mainspring is installed. Each service
fixture (``postgres_url``, ``mariadb_url``, ``redis_url``, ``rabbitmq_url``, ``nats_url``) checks that
its service answers (once per session), hands the test an isolated namespace as a
:class:`~mainspring.testing.ServiceURL`, and cleans up afterwards. An unreachable service skips the
test, or fails it when ``MAINSPRING_REQUIRE_SERVICES=1``. ``kafka_url`` needs no server: it points
into an in-process librdkafka mock cluster (``kafka_cluster``, one per session).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import pytest

from mainspring.errors import MainspringError
from mainspring.testing._isolation import (
    isolated_mariadb,
    isolated_nats,
    isolated_postgres,
    isolated_rabbitmq,
    isolated_redis,
    new_namespace,
)
from mainspring.testing._kafka import MockKafkaCluster, mock_kafka_cluster
from mainspring.testing._logs import capture_logs
from mainspring.testing._services import (
    SessionState,
    configured_url,
    require_services,
    unreachable_reason,
)
from mainspring.testing._settings import SettingsFactory
from mainspring.testing._url import ServiceURL, mask_password

__all__ = [
    "captured_logs",
    "kafka_cluster",
    "kafka_url",
    "mariadb_url",
    "nats_url",
    "postgres_url",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_terminal_summary",
    "rabbitmq_url",
    "redis_url",
    "settings_factory",
]

#: Fixtures that talk to a real service; tests using one get the ``integration`` marker.
SERVICE_FIXTURES = frozenset(
    {"postgres_url", "mariadb_url", "redis_url", "rabbitmq_url", "nats_url", "kafka_url"}
)

_STATE = pytest.StashKey[SessionState]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (so ``--strict-markers`` accepts them) and the per-session service state."""
    config.addinivalue_line(
        "markers", "integration: talks to a real service (PostgreSQL, MariaDB, Redis, RabbitMQ, NATS)"
    )
    config.addinivalue_line("markers", "slow: takes more than a second")
    config.stash[_STATE] = SessionState()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use a service fixture as ``integration``, so ``-m "not integration"`` skips them."""
    # tryfirst: the marks must be in place before pytest deselects by ``-m``.
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say when RabbitMQ isolation fell back to name prefixes, which a passing run would not show."""
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    for url, error in state.management_down.items():
        terminalreporter.write_line(
            f"mainspring: the RabbitMQ management API at {url} was unreachable ({error}); "
            "rabbitmq_url fell back to name prefixes on the default vhost, without cleanup"
        )


def _state(config: pytest.Config) -> SessionState:
    state = config.stash.get(_STATE, None)
    if state is None:  # pytest_configure of this plugin did not run (plugin registered late)
        state = config.stash[_STATE] = SessionState()
    return state


def _reachable_url(config: pytest.Config, name: str) -> str:
    url = configured_url(name)
    error = _state(config).check(name, url)
    if error is not None:
        reason = unreachable_reason(name, url, error)
        if require_services():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return url


def _provide(
    config: pytest.Config, name: str, isolate: Callable[[str], AbstractContextManager[ServiceURL]]
) -> Iterator[ServiceURL]:
    url = _reachable_url(config, name)
    with ExitStack() as stack:
        try:
            service_url = stack.enter_context(isolate(url))
        except MainspringError:
            raise
        except Exception as exc:
            # The service answered but refused the setup (privileges, say): say so in one line rather
            # than with a driver traceback through the event loop.
            raise pytest.fail.Exception(
                f"{name}: could not set up an isolated namespace at {mask_password(url)}: "
                f"{type(exc).__name__}: {exc}",
                pytrace=False,
            ) from exc
        yield service_url


@pytest.fixture
def postgres_url(pytestconfig: pytest.Config) -> Iterator[ServiceURL]:
    """A PostgreSQL URL (``postgresql://``) to a database created for this test and dropped after it.

    Use ``postgres_url.sqlalchemy_url`` for the ``postgresql+asyncpg://`` form.
    """
    yield from _provide(pytestconfig, "postgres", isolated_postgres)


@pytest.fixture
def mariadb_url(pytestconfig: pytest.Config) -> Iterator[ServiceURL]:
    """A MariaDB/MySQL URL (``mysql://``) to a database created for this test and dropped after it.

    Use ``mariadb_url.sqlalchemy_url`` for the ``mysql+asyncmy://`` form.
    """
    yield from _provide(pytestconfig, "mariadb", isolated_mariadb)


@pytest.fixture
def redis_url(pytestconfig: pytest.Config) -> Iterator[ServiceURL]:
    """A Redis URL to a database number claimed for this test, flushed before and after it."""
    yield from _provide(pytestconfig, "redis", isolated_redis)


@pytest.fixture
def rabbitmq_url(pytestconfig: pytest.Config) -> Iterator[ServiceURL]:
    """An AMQP URL to a vhost created for this test and deleted after it.

    Without the management API the URL keeps its vhost and ``namespace`` is a unique name prefix.
    """
    state = _state(pytestconfig)
    yield from _provide(pytestconfig, "rabbitmq", lambda url: isolated_rabbitmq(url, state))


@pytest.fixture
def nats_url(pytestconfig: pytest.Config) -> Iterator[ServiceURL]:
    """A NATS URL and a unique ``namespace`` prefix; streams and KV buckets using it are deleted after."""
    yield from _provide(pytestconfig, "nats", isolated_nats)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[MockKafkaCluster]:
    """A librdkafka mock Kafka cluster (3 brokers, in process) shared by the session's tests."""
    with mock_kafka_cluster() as cluster:
        yield cluster


@pytest.fixture
def kafka_url(kafka_cluster: MockKafkaCluster) -> ServiceURL:
    """A ``kafka://`` URL to the session's mock cluster and a unique topic/group prefix for this test."""
    return ServiceURL(
        f"kafka://{kafka_cluster.bootstrap_servers}",
        service="kafka",
        namespace=new_namespace(),
        isolation="prefix",
    )


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The structured log events emitted during the test, as a list of dicts (see ``capture_logs()``)."""
    with capture_logs() as events:
        yield events


@pytest.fixture
def settings_factory(tmp_path_factory: pytest.TempPathFactory) -> SettingsFactory:
    """A :class:`~mainspring.testing.SettingsFactory`: ``settings_factory(**overrides)`` -> settings."""
    return SettingsFactory(lambda: tmp_path_factory.mktemp("mainspring-config"))
