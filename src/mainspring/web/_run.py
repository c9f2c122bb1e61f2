"""``mainspring run module:app``: serve an ASGI app on uvicorn, with clear errors for bad targets."""

from __future__ import annotations

import importlib
import os

from mainspring._compat import require
from mainspring.errors import ConfigError

__all__ = ["serve"]


def _check_target(target: str) -> None:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"the app must be given as module:attribute (e.g. orders.main:app), got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    if not hasattr(module, attribute.split(".")[0]):
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    factory: bool = False,
    graceful_timeout: float = 30.0,
) -> None:
    """Run ``target`` (``module:attribute``) on uvicorn until SIGTERM or SIGINT."""
    uvicorn = require("uvicorn", extra="web", feature="mainspring run")
    _check_target(target)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from mainspring.logging import get_logger

        get_logger("mainspring.web").warning(
            "several workers without PROMETHEUS_MULTIPROC_DIR: /metrics shows one worker at a time",
            workers=workers,
        )
    uvicorn.run(
        target,
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        timeout_graceful_shutdown=graceful_timeout,
        log_config=None,  # mainspring.logging configures logging; uvicorn's loggers flow through it
        access_log=False,  # the app's RequestMiddleware writes the access log
    )
