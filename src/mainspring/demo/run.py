"""``run_demo(host, port)``: load the settings, build the app, seed at start-up and serve it on uvicorn."""

from __future__ import annotations

from mainspring._compat import require
from mainspring.config import load_settings
from mainspring.demo.app import DemoContext, build_app
from mainspring.demo.seed import SeedReport, seed
from mainspring.demo.settings import DemoSettings
from mainspring.logging import configure_logging

__all__ = ["banner", "run_demo"]


def banner(report: SeedReport, base_url: str) -> str:
    """Return the text printed when the demo is up: URLs, the seeded credentials and curl commands."""
    lines = [
        "",
        "mainspring orders demo",
        f"  API        {base_url}",
        f"  API docs   {base_url}/docs",
        f"  health     {base_url}/health/ready      metrics  {base_url}/metrics",
        "",
    ]
    if report.admin_password is not None:
        lines += [
            f"  admin      {report.admin_email}  password: {report.admin_password}   (shown once)",
            f"  API key    {report.api_key}   (service client 'svc-reporting', shown once)",
        ]
    else:
        lines.append(f"  admin      {report.admin_email} (already seeded; its password was printed then)")
    body = '{"email":"ada@example.com","password":"correct horse battery"}'
    lines += [
        "",
        "Try it:",
        f"  curl -s -X POST {base_url}/auth/register -H 'content-type: application/json' -d '{body}'",
        f"  TOKEN=$(curl -s -X POST {base_url}/auth/login -H 'content-type: application/json' -d '{body}' \\",
        "      | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s {base_url}/products",
        f'  curl -s -X POST {base_url}/orders -H "Authorization: Bearer $TOKEN" '
        '-H \'content-type: application/json\' -d \'{"lines":[{"product_id":1,"quantity":2}]}\'',
        f'  curl -si {base_url}/orders/1 -H "Authorization: Bearer $TOKEN"      # X-Cache: miss, then hit',
        f'  curl -s -X POST {base_url}/products -H "Authorization: Bearer $TOKEN" '
        "-H 'content-type: application/json' -d '{}'   # 403: customers cannot",
        "",
    ]
    return "\n".join(lines)


class _Seeder:
    """A component that seeds once the schema exists and prints the banner."""

    def __init__(self, context: DemoContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url

    async def start(self) -> None:
        print(banner(await seed(self.context), self.base_url), flush=True)

    async def stop(self) -> None:
        """Nothing to release."""


def run_demo(host: str = "127.0.0.1", port: int = 8000, *, profile: str | None = None) -> None:
    """Serve the demo on ``host:port`` until SIGTERM or SIGINT.

    Settings: :class:`~mainspring.demo.settings.DemoSettings` through ``load_settings`` (embedded
    defaults, ``config/``, ``.env``, ``MAINSPRING_*``). At start-up the tables are created (the
    ``schema`` component), the seed runs and the URLs, credentials and curl commands are printed.
    """
    uvicorn = require("uvicorn", extra="web", feature="mainspring demo")
    settings = load_settings(DemoSettings, profile=profile)
    configure_logging(settings)
    app = build_app(settings)
    context: DemoContext = app.state.demo
    shown_host = f"[{host}]" if ":" in host else host
    context.service.add(
        "seed", _Seeder(context, f"http://{shown_host}:{port}"), depends_on=["schema", "cache"]
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,  # mainspring.logging configured the loggers
        access_log=False,  # the app's middleware writes the access log
        timeout_graceful_shutdown=10,
    )
