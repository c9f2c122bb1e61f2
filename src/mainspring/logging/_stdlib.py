"""The bridge from the standard library: third-party loggers come out in our format and sink.

One handler sits on the root logger and passes each ``LogRecord`` straight to the live pipeline. No
``ProcessorFormatter``: that route builds a second record and walks the stack for every line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mainspring.logging._logger import current_state


class StdlibBridge(logging.Handler):
    """Hands stdlib records to the live mainspring pipeline (whatever configuration is installed)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Render and write ``record`` through the current pipeline."""
        current_state().pipeline.emit_record(record)

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler lock: the pipeline is thread-safe on its own."""
        if self.filter(record):
            self.emit(record)
            return True
        return False


class RootSnapshot:
    """What the root logger and the touched named loggers looked like before we changed them."""

    def __init__(self) -> None:
        root = logging.getLogger()
        self.handlers = list(root.handlers)
        self.level = root.level
        self.named_levels: dict[str, int] = {}

    def apply_levels(self, root_level: int, levels: Mapping[str, int]) -> None:
        """Set the root's level and the named loggers' levels, remembering how they were."""
        self.restore_named_levels()
        logging.getLogger().setLevel(root_level)
        for name, level in levels.items():
            logger = logging.getLogger(name)
            self.named_levels.setdefault(name, logger.level)
            logger.setLevel(level)

    def restore_named_levels(self) -> None:
        """Give the named loggers back the levels they had."""
        for name, level in self.named_levels.items():
            logging.getLogger(name).setLevel(level)
        self.named_levels.clear()

    def restore(self, bridge: logging.Handler) -> None:
        """Remove ``bridge`` and put back the root's handlers and levels."""
        root = logging.getLogger()
        root.removeHandler(bridge)
        for handler in self.handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(self.level)
        self.restore_named_levels()


def take_over_root(bridge: logging.Handler) -> None:
    """Make ``bridge`` the root logger's only handler (the others are kept in the snapshot)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler is not bridge:
            root.removeHandler(handler)
    if bridge not in root.handlers:
        root.addHandler(bridge)
