"""The orders demo: a small, real service on every part of mainspring.

``mainspring demo`` (or ``make demo``) runs it on embedded defaults (SQLite file, memory cache, memory
broker); setting ``MAINSPRING_DATABASE__URL``, ``MAINSPRING_CACHE__URL`` and ``MAINSPRING_MESSAGING__URL``
moves it to PostgreSQL, Redis and RabbitMQ. See docs/demo.md. Needs the ``web`` extra.
"""

from __future__ import annotations

from mainspring.demo.app import DemoContext, build_app
from mainspring.demo.run import run_demo
from mainspring.demo.seed import SeedReport, seed
from mainspring.demo.settings import DemoSettings

__all__ = ["DemoContext", "DemoSettings", "SeedReport", "build_app", "run_demo", "seed"]
