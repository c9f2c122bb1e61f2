"""The test files shown in docs/testing.md run and pass, as users would run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mainspring.testing import ServiceURL

pytest_plugins = ["pytester"]

DOC = Path(__file__).parents[3] / "docs" / "testing.md"
BLOCK = re.compile(r"```python\n# (test_\w+\.py)\n(.*?)```", re.DOTALL)


def _doc_test_files() -> dict[str, str]:
    return dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))


def test_docs_have_a_test_file_per_fixture() -> None:
    text = "".join(_doc_test_files().values())
    fixtures = (
        "settings_factory",
        "captured_logs",
        "postgres_url",
        "mariadb_url",
        "redis_url",
        "rabbitmq_url",
    )
    for fixture in (*fixtures, "nats_url"):
        assert f"({fixture})" in text, fixture


def test_docs_test_files_pass(
    pytester: pytest.Pytester,
    postgres_url: ServiceURL,
    mariadb_url: ServiceURL,
    redis_url: ServiceURL,
    rabbitmq_url: ServiceURL,
    nats_url: ServiceURL,
) -> None:
    # The service fixtures above only make this test skip (or fail) like any other when a service is
    # down; the doc's tests get their own namespaces in the inner session.
    files = _doc_test_files()
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\naddopts = --strict-markers\n"
    )
    for name, body in files.items():
        pytester.makepyfile(**{name.removesuffix(".py"): body})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q")
    expected = sum(body.count("\ndef test_") + body.count("\nasync def test_") for body in files.values())
    assert expected >= 8
    result.assert_outcomes(passed=expected)
