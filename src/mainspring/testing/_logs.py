"""``capture_logs``: assert on log records as dicts, from mainspring, structlog and stdlib loggers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mainspring.logging._capture import capturing


@contextmanager
def capture_logs(level: int | str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Collect log records as event dicts for the duration of a ``with`` block.

    Yields a list that receives one dict per record, from :func:`mainspring.logging.get_logger`
    loggers, structlog loggers and standard-library loggers alike. Each dict is what would have been
    rendered: ``timestamp``, ``level``, ``logger``, ``event``, the context ids, the fields, with
    redaction applied and exceptions as structured dicts. Nothing is written to the sink meanwhile, and
    the previous configuration comes back on exit. Works with or without ``configure_logging``.

    ``level`` sets the root level for the block (``"DEBUG"`` to see everything); per-logger levels from
    the configuration still apply. By default the levels in force are kept.

    >>> from mainspring.logging import get_logger
    >>> with capture_logs() as logs:
    ...     get_logger("shop").info("order placed", order_id=1, password="hunter2")
    >>> logs[0]["event"], logs[0]["order_id"], logs[0]["password"]
    ('order placed', 1, '**********')
    """
    with capturing(level) as captured:
        yield captured
