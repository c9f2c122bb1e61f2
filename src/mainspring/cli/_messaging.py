"""``mainspring messaging dlq``: look at, replay and purge a topic's dead letters.

The broker comes from the service settings (``messaging.url`` and ``messaging.options``) or from
``--url``. ``list`` and ``show`` read the dead-letter topic without consuming it. ``replay``
publishes the dead letters to their topic again (without the dead-letter headers, attempt count
reset) and leaves them in place, so nothing is lost if the replay fails halfway; ``purge`` empties
the dead-letter topic once you are done.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from mainspring.cli._common import ConfigDirOption, ProfileOption, SettingsOption, run_component
from mainspring.cli._config import resolve_settings_class
from mainspring.config import load_settings
from mainspring.errors import NotFoundError, ValidationError
from mainspring.messaging import Broker, Record, create_broker, dead_letter_topic
from mainspring.messaging._transport import (
    CE_ID,
    CE_TYPE,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_TYPE,
    DLQ_LAST_FAILURE,
    DLQ_REASON,
    REPLAYED_AT,
)
from mainspring.messaging.base import original_headers

__all__ = ["messaging_app"]

T = TypeVar("T")

messaging_app = typer.Typer(help="The service's message broker: dead letters.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters of a topic: list, show, replay, purge.", no_args_is_help=True)
messaging_app.add_typer(dlq_app, name="dlq")

UrlOption = Annotated[
    str | None, typer.Option("--url", help="Broker URL; overrides the settings (default: messaging.url).")
]
LimitOption = Annotated[int, typer.Option("--limit", "-n", min=1, help="Most dead letters to read.")]


def _broker(url: str | None, settings: str | None, profile: str | None, config_dir: Path | None) -> Broker:
    if url is not None:
        return create_broker(url)
    loaded = load_settings(resolve_settings_class(settings), profile=profile, config_dir=config_dir)
    return create_broker(loaded.messaging)


async def _stop_now(broker: Broker) -> None:
    await broker.stop(drain_timeout=0)


def _body(record: Record) -> Any:
    try:
        return orjson.loads(record.body)
    except orjson.JSONDecodeError:
        return {"base64": base64.b64encode(record.body).decode()}


@dlq_app.command("list")
def _list(
    topic: Annotated[str, typer.Argument(help="The topic whose dead letters to list (not the .dlq name).")],
    limit: LimitOption = 50,
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """List dead letters, oldest first: id, type, reason, error and last failure time."""
    dlq = dead_letter_topic(topic)
    records = run_component(
        _broker(url, settings, profile, config_dir),
        lambda b: b.transport.browse(dlq, limit=limit),
        stop=_stop_now,
    )
    if not records:
        typer.echo(f"no dead letters in {dlq}")
        return
    for record in records:
        h = record.headers
        error = f"{h.get(DLQ_ERROR_TYPE, '?').rsplit('.', 1)[-1]}: {h.get(DLQ_ERROR_MESSAGE, '')}"
        typer.echo(
            f"{h.get(CE_ID, '?')}  {h.get(CE_TYPE, '?')}  {h.get(DLQ_REASON, '?')}  "
            f"{h.get(DLQ_LAST_FAILURE, '?')}  {error[:120]}"
        )
    typer.echo(f"{len(records)} dead letter(s) shown from {dlq}")


@dlq_app.command("show")
def _show(
    topic: Annotated[str, typer.Argument(help="The topic (not the .dlq name).")],
    message_id: Annotated[str, typer.Argument(help="The dead letter's message id (ce_id).")],
    limit: LimitOption = 10_000,
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Print one dead letter: every header and the body (JSON, or base64 when it is not JSON)."""
    dlq = dead_letter_topic(topic)
    records = run_component(
        _broker(url, settings, profile, config_dir),
        lambda b: b.transport.browse(dlq, limit=limit),
        stop=_stop_now,
    )
    found = next((r for r in records if r.headers.get(CE_ID) == message_id), None)
    if found is None:
        raise NotFoundError(f"no dead letter {message_id!r} in {dlq} (read {len(records)})")
    shown = {"topic": dlq, "key": found.key, "headers": dict(found.headers), "body": _body(found)}
    typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())


@dlq_app.command("replay")
def _replay(
    topic: Annotated[str, typer.Argument(help="The topic to publish the dead letters to again.")],
    message_id: Annotated[
        list[str] | None, typer.Option("--id", help="Replay only these message ids (repeatable).")
    ] = None,
    limit: LimitOption = 10_000,
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Publish dead letters to their topic again, attempt count reset; they stay in the dead letters."""
    dlq = dead_letter_topic(topic)
    wanted = set(message_id or ())

    async def replay(broker: Broker) -> int:
        records = await broker.transport.browse(dlq, limit=limit)
        chosen = [r for r in records if not wanted or r.headers.get(CE_ID) in wanted]
        missing = wanted - {r.headers.get(CE_ID) for r in chosen}
        if missing:
            raise NotFoundError(f"no dead letter(s) {sorted(missing)} in {dlq}")
        replayed_at = datetime.now(UTC).isoformat()
        for record in chosen:
            headers = {**original_headers(record), REPLAYED_AT: replayed_at}
            await broker.publish_record(
                Record(topic=topic, body=record.body, headers=headers, key=record.key)
            )
        return len(chosen)

    count = run_component(_broker(url, settings, profile, config_dir), replay, stop=_stop_now)
    typer.echo(f"replayed {count} dead letter(s) to {topic}; they are still in {dlq} until you purge it")


@dlq_app.command("purge")
def _purge(
    topic: Annotated[str, typer.Argument(help="The topic whose dead letters to delete.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the dead letters are deleted for good.")
    ] = False,
    url: UrlOption = None,
    settings: SettingsOption = None,
    profile: ProfileOption = None,
    config_dir: ConfigDirOption = None,
) -> None:
    """Delete every dead letter of the topic (needs --yes)."""
    dlq = dead_letter_topic(topic)
    if not yes:
        raise ValidationError(f"purging {dlq} deletes its dead letters for good; add --yes to confirm")
    count = run_component(
        _broker(url, settings, profile, config_dir), lambda b: b.transport.purge(dlq), stop=_stop_now
    )
    typer.echo(f"purged {count} dead letter(s) from {dlq}")
