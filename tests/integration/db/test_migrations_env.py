"""The migration environment: custom column types get their import, and env.py needs the Migrator."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from mainspring.db import Database, Migrator
from mainspring.db.migrations import MigrationError

TYPES_MODULE = textwrap.dedent(
    """\
    from sqlalchemy import Column, Integer, MetaData, String, Table
    from sqlalchemy.types import TypeDecorator

    from mainspring.db import UTCDateTime


    class Money(TypeDecorator[str]):
        impl = String(32)
        cache_ok = True


    metadata = MetaData()
    Table(
        "env_invoice",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("total", Money(), nullable=False),
        Column("issued_at", UTCDateTime(), nullable=False),
    )
    """
)


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A service directory (the current directory) holding a module with a custom column type."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env_invoice_models.py").write_text(TYPES_MODULE)
    yield tmp_path
    sys.modules.pop("env_invoice_models", None)


async def test_custom_column_types_are_written_with_their_import_and_the_revision_runs(service: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{service / 'env.db'}")
    migrator = Migrator(database, script_location="migrations", metadata="env_invoice_models:metadata")
    migrator.init()
    await migrator.upgrade()

    written = await migrator.revision("invoices", autogenerate=True)

    assert written is not None
    text = written.path.read_text()
    assert "import env_invoice_models\n" in text
    assert "env_invoice_models.Money(length=32)" in text
    # mainspring's own types are written under a module that stays importable.
    assert "import mainspring.db\n" in text
    assert "mainspring.db.UTCDateTime(timezone=True)" in text
    steps = await migrator.upgrade()
    assert [step.revision for step in steps] == [written.id]
    assert await migrator.revision("again", autogenerate=True) is None, "no difference left to write"


CUSTOM_ENV = textwrap.dedent(
    """\
    from sqlalchemy import Column, Integer, MetaData, Table

    from mainspring.db.migrations import run_migrations

    target_metadata = MetaData()
    Table("env_kept", target_metadata, Column("id", Integer, primary_key=True))
    Table("env_skipped", target_metadata, Column("id", Integer, primary_key=True))
    applied = []

    run_migrations(
        target_metadata,
        include_object=lambda obj, name, type_, reflected, compare_to: name != "env_skipped",
        on_version_apply=lambda ctx, step, heads, run_args: applied.append(step.up_revision_id),
    )
    print("applied:", applied)
    """
)


async def test_options_given_to_run_migrations_are_chained_with_mainspring_s(
    service: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migrator = Migrator(f"sqlite+aiosqlite:///{service / 'env.db'}", script_location="migrations")
    migrator.init()
    (service / "migrations" / "env.py").write_text(CUSTOM_ENV)
    await migrator.upgrade()

    written = await migrator.revision("kept only", autogenerate=True)

    assert written is not None
    text = written.path.read_text()
    assert "'env_kept'" in text
    assert "'env_skipped'" not in text
    await migrator.upgrade()
    assert f"applied: ['{written.id}']" in capsys.readouterr().out


def test_env_py_run_by_plain_alembic_says_to_use_mainspring(service: Path) -> None:
    Migrator(script_location="migrations").init()
    config = Config()
    config.set_main_option("script_location", str(service / "migrations"))

    with pytest.raises(
        MigrationError, match=r"runs under `mainspring db \.\.\.` or mainspring\.db\.Migrator"
    ):
        command.upgrade(config, "heads")


async def test_a_migrator_without_a_database_says_how_to_give_one(service: Path) -> None:
    migrator = Migrator(script_location="migrations")
    migrator.init()

    with pytest.raises(MigrationError, match=r"no database to migrate: pass --url or set database\.url"):
        await migrator.upgrade()


DOC = Path(__file__).parents[3] / "docs" / "migrations.md"


def test_python_example_in_the_docs_runs() -> None:
    # In a process of its own: the example declares a model on mainspring's Base, which would leak
    # into the metadata every other test sees.
    [example] = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
