"""``mainspring db``: the command flow on SQLite, and bad input as one line with exit status 2."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainspring.cli import main

MODELS = textwrap.dedent(
    """\
    from sqlalchemy import Column, Integer, MetaData, String, Table

    metadata = MetaData()
    Table("cli_widget", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A service directory as the current directory, its database a SQLite file set in the environment."""
    for name in list(os.environ):
        if name.upper().startswith("MAINSPRING_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAINSPRING_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'service.db'}")
    (tmp_path / "cli_models.py").write_text(MODELS)
    yield tmp_path
    sys.modules.pop("cli_models", None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_init_upgrade_autogenerate_current_history_downgrade(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "db", "init", "--metadata", "cli_models:metadata")[0] == 0
    assert "from cli_models import metadata" in (project / "migrations" / "env.py").read_text()

    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0
    assert "applied  ms_0001" in out

    code, out, err = run(capsys, "db", "revision", "-m", "create widgets", "--autogenerate")
    assert (code, err) == (0, "")
    assert "created revision" in out
    assert "(app, head)" in out
    [revision_file] = (project / "migrations" / "versions").glob("*_create_widgets.py")
    assert "op.create_table('cli_widget'" in revision_file.read_text()

    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0
    assert "create widgets" in out

    code, out, _ = run(capsys, "db", "current")
    assert code == 0
    assert "(app, head)  create widgets" in out
    assert "(mainspring, head)" in out
    assert out.rstrip().endswith("up to date")

    code, out, _ = run(capsys, "db", "history")
    assert code == 0
    assert "<base> -> ms_0001 (mainspring)" in out
    assert "ms_0003 -> ms_0004 (mainspring, head)" in out
    assert "(app, head)  create widgets" in out

    code, out, _ = run(capsys, "db", "downgrade", "base")
    assert code == 0
    assert out.count("reverted") == 5  # the app's revision and the library's four
    assert "at: base" in out

    code, out, _ = run(capsys, "db", "current")
    assert "pending: 5 revision(s)" in out


def test_revision_without_autogenerate_needs_no_database_and_follows_the_last_one(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINSPRING_DATABASE__URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    run(capsys, "db", "init")

    first = run(capsys, "db", "revision", "-m", "one", "--rev-id", "aaa1")
    second = run(capsys, "db", "revision", "-m", "two", "--rev-id", "bbb2")

    assert first[:2] == (
        0,
        f"created revision aaa1 (app, head): {next(project.glob('migrations/versions/*one.py'))}\n",
    )
    assert second[0] == 0
    _code, out, _ = run(capsys, "db", "history")
    lines = out.splitlines()
    assert set(lines) == {
        "aaa1 -> bbb2 (app, head)  two",
        "<base> -> aaa1 (app)  one",
        "<base> -> ms_0001 (mainspring)  Create the change_log table.",
        "ms_0001 -> ms_0002 (mainspring)  Create the tables of the SQL security stores.",
        "ms_0002 -> ms_0003 (mainspring)  Create the transactional outbox and the idempotent inbox.",
        "ms_0003 -> ms_0004 (mainspring, head)  Drop the outbox's unused per-key index.",
    }
    assert lines.index("aaa1 -> bbb2 (app, head)  two") < lines.index("<base> -> aaa1 (app)  one")


def test_missing_migrations_folder_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "db", "upgrade", "--dir", "nowhere")

    assert code == 2
    assert out == ""
    assert err == (
        "error: no migrations folder at nowhere (no env.py there): run `mainspring db init` first, "
        "or point --dir at the folder\n"
    )


def test_unknown_revision_is_one_line_exit_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "db", "init")

    code, _, err = run(capsys, "db", "downgrade", "deadbeef")

    assert code == 2
    assert err.startswith("error: unknown revision 'deadbeef': `mainspring db history` lists the revisions")
    assert err.count("\n") == 1


def test_unreachable_database_is_one_line_exit_2_without_the_password(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "db", "init")
    url = f"postgresql+asyncpg://svc:hunter2secret@127.0.0.1:{closed_port()}/orders"

    code, out, err = run(capsys, "db", "upgrade", "--url", url, "--timeout", "0.3")

    assert code == 2
    assert out == ""
    assert err.startswith("error: database 'default' at postgresql+asyncpg://svc:***@127.0.0.1:")
    assert "is not available" in err
    assert "hunter2secret" not in err
    assert err.count("\n") == 1


def test_init_refuses_a_folder_that_is_not_empty(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "migrations").mkdir()
    (project / "migrations" / "notes.txt").write_text("mine")

    code, _, err = run(capsys, "db", "init")

    assert code == 2
    assert err == (
        "error: migrations already exists and is not empty: the migrations are set up there "
        "already (choose another folder with --dir)\n"
    )
    assert (project / "migrations" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "metadata 'no_colon' should look like 'package.module:Base.metadata'"),
        ("cli_models:missing", "module 'cli_models' has no attribute 'missing'"),
        ("cli_models_absent:metadata", "cannot import metadata module 'cli_models_absent'"),
        ("cli_models:Table", "metadata 'cli_models:Table' is a type, not a MetaData"),
    ],
)
def test_bad_metadata_option_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    run(capsys, "db", "init")
    run(capsys, "db", "upgrade")

    code, _, err = run(capsys, "db", "revision", "-m", "x", "--autogenerate", "--metadata", spec)

    assert code == 2
    assert err.startswith(f"error: {message}")
    assert not list((project / "migrations" / "versions").glob("*.py"))


def test_autogenerate_without_metadata_says_where_to_set_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "db", "init")
    run(capsys, "db", "upgrade")

    code, _, err = run(capsys, "db", "revision", "-m", "x", "--autogenerate")

    assert code == 2
    assert err == (
        "error: autogenerate needs your models' metadata: pass --metadata "
        "package.module:Base.metadata, or set target_metadata in migrations/env.py\n"
    )


def test_unknown_database_name_lists_the_known_ones(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "db", "init")

    code, _, err = run(capsys, "db", "current", "--database", "reports")

    assert code == 2
    assert err == "error: no database named 'reports' in the settings; known: default\n"


def test_named_database_from_settings_is_migrated(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = project / "reports.db"
    monkeypatch.setenv("MAINSPRING_DATABASES__REPORTS__URL", f"sqlite+aiosqlite:///{reports}")
    run(capsys, "db", "init")

    code, out, _ = run(capsys, "db", "upgrade", "--database", "reports")

    assert code == 0
    assert "applied  ms_0001" in out
    assert reports.exists()
    assert not (project / "service.db").exists()
