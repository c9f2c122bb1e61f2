"""``mainspring messaging dlq``: list, show, replay and purge dead letters on the memory broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from mainspring.cli import main
from mainspring.messaging import Message, RetryPolicy, create_broker


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MAINSPRING_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def _wait(predicate: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _dead_letters(url: str, count: int) -> list[str]:
    """Publish ``count`` messages whose handler always fails; return their ids once dead-lettered."""

    async def go() -> list[str]:
        broker = create_broker(url, fetch_timeout=0.05)

        @broker.subscriber("orders", group="billing", retry=RetryPolicy(max_attempts=1))
        async def fail(message: Message) -> None:
            raise RuntimeError(f"card declined for {message.data['n']}")

        async with broker:
            sent = await broker.publish_batch("orders", [{"n": n} for n in range(count)])
            await _wait(lambda: broker.stats.dead_lettered >= count)
        return [m.id for m in sent]

    return asyncio.run(go())


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def test_list_show_replay_and_purge(capsys: pytest.CaptureFixture[str], url: str) -> None:
    ids = _dead_letters(url, 2)

    code, out, _ = run(capsys, "messaging", "dlq", "list", "orders", "--url", url)
    assert code == 0
    assert ids[0] in out
    assert ids[1] in out
    assert "exhausted" in out
    assert "RuntimeError: card declined for 0" in out

    code, out, _ = run(capsys, "messaging", "dlq", "show", "orders", ids[1], "--url", url)
    assert code == 0
    shown = orjson.loads(out)
    assert shown["body"] == {"n": 1}
    assert shown["headers"]["ms_dlq_group"] == "billing"

    code, out, _ = run(capsys, "messaging", "dlq", "replay", "orders", "--id", ids[0], "--url", url)
    assert code == 0
    assert "replayed 1 dead letter(s) to orders" in out

    code, _, err = run(capsys, "messaging", "dlq", "purge", "orders", "--url", url)
    assert code == 2
    assert "--yes" in err
    code, out, _ = run(capsys, "messaging", "dlq", "purge", "orders", "--yes", "--url", url)
    assert code == 0
    assert "purged 2 dead letter(s) from orders.dlq" in out
    code, out, _ = run(capsys, "messaging", "dlq", "list", "orders", "--url", url)
    assert "no dead letters in orders.dlq" in out


def test_replayed_message_is_clean_and_handled_again(capsys: pytest.CaptureFixture[str], url: str) -> None:
    ids = _dead_letters(url, 1)
    code, _, _ = run(capsys, "messaging", "dlq", "replay", "orders", "--url", url)
    assert code == 0

    async def consume() -> Message:
        broker = create_broker(url, fetch_timeout=0.05)
        got: list[Message] = []

        @broker.subscriber("orders", group="fixed")
        async def ok(message: Message) -> None:
            got.append(message)

        async with broker:
            await _wait(lambda: any(m.id == ids[0] for m in got))
        return next(m for m in got if m.id == ids[0] and "ms_dlq_reason" not in m.headers)

    replayed = asyncio.run(consume())
    assert replayed.attempt == 1
    assert not any(name.startswith("ms_dlq_") for name in replayed.headers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "orders", "no-such-id"], "no dead letter 'no-such-id'"),
        (["replay", "orders", "--id", "nope"], "no dead letter(s) ['nope']"),
        (["list", "bad topic"], "invalid topic"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], url: str, args: list[str], message: str
) -> None:
    code, _, err = run(capsys, "messaging", "dlq", *args, "--url", url)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_bad_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "messaging", "dlq", "list", "orders", "--url", "ftp://nope")
    assert code == 2
    assert "unsupported broker URL scheme" in err
