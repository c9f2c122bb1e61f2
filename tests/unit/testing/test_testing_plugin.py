"""The plugin without real services: skip or fail on unreachable services, probes, markers, helpers.

Inner sessions run in-process through pytester; "services" here are closed ports and tiny local
servers that speak (or fail to speak) each protocol's first bytes.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import structlog

from mainspring.errors import MissingDependencyError
from mainspring.testing import require_services
from mainspring.testing._isolation import (
    _Management,
    isolated_mariadb,
    isolated_nats,
    isolated_postgres,
    isolated_rabbitmq,
    isolated_redis,
    new_namespace,
    run_sync,
)
from mainspring.testing._services import SERVICES, SessionState, configured_url, probe, unreachable_reason
from mainspring.testing._url import ServiceURL

pytest_plugins = ["pytester"]

INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rs", "-q")
INNER_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
CLOSED_PORT_URL = "redis://:s3cr3t-pw@127.0.0.1:1/0"


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester with a quiet ini and no service settings leaking in from the outer environment."""
    monkeypatch.delenv("MAINSPRING_REQUIRE_SERVICES", raising=False)
    for spec in SERVICES.values():
        monkeypatch.delenv(spec.env_var, raising=False)
    pytester.makeini(INNER_INI)
    return pytester


@contextmanager
def scripted_server(read: int, reply: bytes) -> Iterator[tuple[int, list[int]]]:
    """Serve on a free local port: per connection, read ``read`` bytes, send ``reply``, close.

    Yields the port and a list that gets one entry per accepted connection.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                if stop.is_set():
                    return
                accepted.append(1)
                conn.settimeout(2)
                received = b""
                while len(received) < read:
                    chunk = conn.recv(read - len(received))
                    if not chunk:
                        break
                    received += chunk
                conn.sendall(reply)

    thread = threading.Thread(target=serve, name="scripted-server")
    thread.start()
    try:
        yield port, accepted
    finally:
        stop.set()
        # A last connection wakes the blocking accept() so the thread sees the stop flag.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        thread.join()
        listener.close()


# --- Skip or fail -------------------------------------------------------------------------------


def test_unreachable_service_skips_with_service_url_and_error(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_TEST_REDIS_URL", CLOSED_PORT_URL)
    inner.makepyfile("def test_needs_redis(redis_url):\n    raise AssertionError('must not run')\n")
    result = inner.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*redis is not reachable at redis://:***@127.0.0.1:1/0: Connection*"])
    assert "s3cr3t-pw" not in result.stdout.str()


def test_unreachable_service_fails_when_services_are_required(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_TEST_REDIS_URL", CLOSED_PORT_URL)
    monkeypatch.setenv("MAINSPRING_REQUIRE_SERVICES", "1")
    inner.makepyfile("def test_needs_redis(redis_url):\n    pass\n")
    result = inner.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*redis is not reachable at redis://:***@127.0.0.1:1/0: Connection*"])
    assert "s3cr3t-pw" not in result.stdout.str()


def test_reachability_is_checked_once_per_session(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scripted_server(read=0, reply=b"HTTP/1.1 400 Bad Request\r\n\r\n") as (port, accepted):
        monkeypatch.setenv("MAINSPRING_TEST_NATS_URL", f"nats://127.0.0.1:{port}")
        inner.makepyfile("def test_one(nats_url):\n    pass\n\ndef test_two(nats_url):\n    pass\n")
        result = inner.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*nats is not reachable*unexpected greeting*is this NATS?*"])
    assert len(accepted) == 1


def test_plugin_registers_its_markers(inner: pytest.Pytester) -> None:
    # The inner ini declares no markers, so --strict-markers only passes if the plugin registered them.
    inner.makepyfile(
        "import pytest\n\n@pytest.mark.integration\n@pytest.mark.slow\ndef test_marked():\n    pass\n"
    )
    result = inner.runpytest_inprocess(*INNER_ARGS, "--strict-markers")
    result.assert_outcomes(passed=1)


def test_service_fixture_tests_are_deselected_by_not_integration(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        "def test_with_service(nats_url):\n    pass\n\ndef test_without_service(tmp_path):\n    pass\n"
    )
    result = inner.runpytest_inprocess(*INNER_ARGS, "-m", "not integration")
    result.assert_outcomes(passed=1, deselected=1)


# --- Probes -------------------------------------------------------------------------------------

GOOD_REPLIES = {
    "postgres": (8, b"N"),
    # A handshake packet: 3-byte length, sequence 0, protocol version 10, then the server version.
    "mariadb": (0, b"\x0b\x00\x00\x00\x0a11.4.2\x00\x00\x00\x00"),
    "redis": (14, b"+PONG\r\n"),
    "rabbitmq": (8, b"\x01\x00\x00\x00\x00\x00\x10"),
    "nats": (0, b'INFO {"server_id":"x"}\r\n'),
}


@pytest.mark.parametrize("name", sorted(GOOD_REPLIES))
def test_probe_accepts_the_services_first_bytes(name: str) -> None:
    read, reply = GOOD_REPLIES[name]
    with scripted_server(read, reply) as (port, _):
        assert probe(name, f"x://127.0.0.1:{port}", timeout=2) is None


@pytest.mark.parametrize("name", sorted(GOOD_REPLIES))
def test_probe_rejects_a_server_speaking_another_protocol(name: str) -> None:
    read, _ = GOOD_REPLIES[name]
    with scripted_server(read, b"HTTP/1.1 400 Bad Request\r\n\r\n") as (port, _):
        error = probe(name, f"x://127.0.0.1:{port}", timeout=2)
    assert error is not None
    assert error.startswith("_ProbeError: unexpected")


def test_probe_reports_the_servers_refusal_message_for_mariadb() -> None:
    message = b"Host '10.0.0.9' is not allowed to connect"
    payload = b"\xff\x6a\x04" + message
    with scripted_server(0, len(payload).to_bytes(3, "little") + b"\x00" + payload) as (port, _):
        error = probe("mariadb", f"mysql://127.0.0.1:{port}", timeout=2)
    assert error == f"_ProbeError: the server refused the connection: {message.decode()}"


def test_probe_reports_a_server_that_hangs_up() -> None:
    with scripted_server(0, b"") as (port, _):
        error = probe("nats", f"nats://127.0.0.1:{port}", timeout=2)
    assert error == "_ProbeError: connection closed by the server after 0 bytes"


def test_probe_reports_a_malformed_port() -> None:
    error = probe("redis", "redis://127.0.0.1:notaport/0")
    assert error is not None
    assert error.startswith("ValueError")


def test_session_state_probes_each_url_once() -> None:
    state = SessionState()
    with scripted_server(0, b"nope") as (port, accepted):
        url = f"nats://127.0.0.1:{port}"
        first = state.check("nats", url)
        assert state.check("nats", url) == first
    assert first is not None
    assert len(accepted) == 1


# --- Configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_require_services_accepts_true_values(value: str) -> None:
    assert require_services({"MAINSPRING_REQUIRE_SERVICES": value}) is True


@pytest.mark.parametrize("value", ["", "0", "false", "no", "2"])
def test_require_services_is_off_for_anything_else(value: str) -> None:
    assert require_services({"MAINSPRING_REQUIRE_SERVICES": value}) is False
    assert require_services({}) is False


def test_configured_url_prefers_the_environment_and_ignores_an_empty_value() -> None:
    assert configured_url("nats", {"MAINSPRING_TEST_NATS_URL": "nats://n:1"}) == "nats://n:1"
    assert configured_url("nats", {"MAINSPRING_TEST_NATS_URL": ""}) == "nats://127.0.0.1:4222"
    assert configured_url("postgres", {}) == "postgresql://postgres@127.0.0.1:5432/test"
    assert configured_url("mariadb", {}) == "mysql://root@127.0.0.1:3306/test"
    assert configured_url("redis", {}) == "redis://127.0.0.1:6379/0"
    assert configured_url("rabbitmq", {}) == "amqp://guest:guest@127.0.0.1:5672/"


def test_unreachable_reason_names_the_env_var_and_hides_the_password() -> None:
    reason = unreachable_reason("rabbitmq", "amqp://guest:topsecret@h:5672/", "TimeoutError: timed out")
    assert reason.startswith("rabbitmq is not reachable at amqp://guest:***@h:5672/: TimeoutError: timed out")
    assert "MAINSPRING_TEST_RABBITMQ_URL" in reason
    assert "topsecret" not in reason


# --- Helpers --------------------------------------------------------------------------------------


def test_new_namespace_is_safe_for_queue_and_stream_names_and_unique() -> None:
    names = {new_namespace() for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.startswith("ms_t_")
        assert name.replace("_", "").isalnum()
        assert name.isascii()


async def test_run_sync_works_inside_a_running_event_loop() -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert run_sync(where).startswith("mainspring-testkit")


def test_run_sync_uses_asyncio_run_without_a_running_loop() -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert run_sync(where) == threading.current_thread().name


ISOLATORS: dict[str, tuple[str, str, Callable[[str], AbstractContextManager[ServiceURL]]]] = {
    "postgres": ("asyncpg", "postgres", isolated_postgres),
    "mariadb": ("asyncmy", "mysql", isolated_mariadb),
    "redis": ("redis", "redis", isolated_redis),
    "rabbitmq": ("aio_pika", "rabbitmq", lambda url: isolated_rabbitmq(url, SessionState())),
    "nats": ("nats", "nats", isolated_nats),
}


@pytest.mark.parametrize("name", sorted(ISOLATORS))
def test_missing_driver_raises_missing_dependency_naming_the_extra(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, extra, isolate = ISOLATORS[name]
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"mainspring\[{extra}\]"), isolate("x://127.0.0.1:1/"):
        raise AssertionError("must not get a namespace")


def test_captured_logs_collects_structured_events(captured_logs: list[dict[str, object]]) -> None:
    structlog.get_logger().info("order.created", order_id=7)
    assert any(e.get("event") == "order.created" and e.get("order_id") == 7 for e in captured_logs)


@pytest.mark.parametrize("management_url", ["http://admin:pw@mq:15672", "http://admin:pw@mq:15672/api/"])
def test_management_api_base_url_keeps_credentials_out_of_the_url(management_url: str) -> None:
    api = _Management(management_url, "amqp://guest:guest@mq:5672/")
    assert api.base == "http://mq:15672/api"


def test_management_api_takes_credentials_from_the_amqp_url_when_it_has_none() -> None:
    api = _Management("http://mq:15672", "amqp://app:s3cret@mq:5672/")
    assert api.base == "http://mq:15672/api"
    assert api.headers["Authorization"] == "Basic " + base64.b64encode(b"app:s3cret").decode()
