"""HTTP overhead: a plain FastAPI route against the same route inside ``create_app`` and a naive stack.

Three servers, each uvicorn with one worker (``log_config=None``, uvicorn's own access log off) in its
own process, pinned to core 0 when ``taskset`` exists; the load comes from another process pinned to
core 1. Every server answers ``GET /items/{item_id}`` with the same small JSON body:

- **plain** — a bare FastAPI app with the route, nothing else.
- **full** — the route in ``mainspring.web.create_app`` (RequestMiddleware: context ids, metrics by route
  template, access log; SecurityHeadersMiddleware), the access log going to a file through
  ``mainspring.logging`` (``sink="file"``, ``non_blocking=True``), and the route requiring a bearer JWT
  (``WebSecurity([BearerScheme(TokenService(...))])``, HS256, ``Depends(authenticated())``); tracing off.
- **naive** — the route behind three ``BaseHTTPMiddleware`` layers (correlation id, a structlog JSON access
  log to a file, Prometheus counter and histogram labelled by the raw path) and a PyJWT HS256 ``Depends``.

Every request carries the same ``Authorization: Bearer`` header (the plain server ignores it).

Load: ``wrk`` when it is on the PATH (``apt-get install wrk`` on Debian), otherwise the in-repo generator
(``--load`` mode of this script: asyncio streams, HTTP/1.1 keep-alive, raw request bytes). Two phases:

1. saturation — a fixed number of connections, each sending its next request when the previous answer
   arrived; requests per second, p50 and p99 (at saturation latency is mostly queueing: connections/RPS),
   and the server process's CPU time per request (from ``/proc``, all its threads): on a shared machine
   other jobs move the rates a lot and the CPU per request much less;
2. fixed rate (always the in-repo generator: wrk cannot hold a rate) — requests scheduled at a
   constant rate, the same for every stack (a share of the full stack's saturation RPS); latency counted
   from the scheduled time, so a stalled server is not hidden by the generator waiting for it.

Rounds alternate the stacks (rotating their order); the table shows medians. After the rounds the
resident memory (``VmRSS``) of each server is read from ``/proc``; a ``create_app`` service warmed up with a
few thousand requests should stay under 100 MB. ``mainspring.demo`` is measured too when it exists.

``--profile`` instead times the layers in-process (a raw ASGI call loop, no server, CPU time of the
process) by adding them one by one, and prints cProfile's top functions for the full stack.

Usage: ``python benchmarks/http_bench.py [--rounds 5] [--duration 8] [--quick] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from mainspring.context import Principal
from mainspring.security.fastapi import authenticated

ISSUER = "https://auth.bench.test"
AUDIENCE = "bench"
SECRET_ENV = "MAINSPRING_BENCH_JWT_SECRET"
LOG_DIR_ENV = "MAINSPRING_BENCH_LOG_DIR"
STACKS = ("plain", "full", "naive")
PATH = "/items/42"
CONNECTIONS = 32
BODY = {"name": "widget", "price": 9.99, "tags": ["a", "b"]}


# --- the servers ------------------------------------------------------------------------------------


def _tokens() -> Any:
    from mainspring.security import JwtKey, KeyRing, TokenService

    secret = bytes.fromhex(os.environ[SECRET_ENV])
    return TokenService(KeyRing(JwtKey.hmac(secret, kid="bench")), issuer=ISSUER, audience=AUDIENCE)


def build_plain() -> Any:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, **BODY}

    return app


def build_full(
    log_dir: Path, *, access_log_sample: float = 1.0, headers: bool = True, jwt: bool = True
) -> Any:
    from mainspring.config import LogFileSettings, LoggingSettings
    from mainspring.logging import configure_logging
    from mainspring.security.fastapi import BearerScheme, WebSecurity
    from mainspring.web import create_app

    configure_logging(
        LoggingSettings(
            sink="file", file=LogFileSettings(path=log_dir / "full-access.log"), non_blocking=True
        )
    )
    router = APIRouter()
    if jwt:

        @router.get("/items/{item_id}")
        async def item(
            item_id: int, principal: Annotated[Principal, Depends(authenticated())]
        ) -> dict[str, Any]:
            return {"id": item_id, **BODY}

    else:

        @router.get("/items/{item_id}")
        async def item_open(item_id: int) -> dict[str, Any]:
            return {"id": item_id, **BODY}

    app = create_app(
        routers=[router], title="bench", access_log_sample=access_log_sample, security_headers=headers
    )
    WebSecurity([BearerScheme(_tokens())]).install(app)
    return app


def build_naive(log_dir: Path) -> Any:
    import uuid

    import jwt as pyjwt
    import structlog
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.responses import Response

    log_file = (log_dir / "naive-access.log").open("a", encoding="utf-8")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=log_file),
        cache_logger_on_first_use=True,
    )
    access = structlog.get_logger("access")
    registry = CollectorRegistry()
    requests = Counter("http_requests", "requests", ["method", "path", "status"], registry=registry)
    durations = Histogram("http_request_duration_seconds", "duration", ["method", "path"], registry=registry)
    secret = bytes.fromhex(os.environ[SECRET_ENV])

    class CorrelationId(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            correlation = request.headers.get("x-correlation-id") or uuid.uuid4().hex
            structlog.contextvars.bind_contextvars(correlation_id=correlation)
            try:
                response = await call_next(request)
            finally:
                structlog.contextvars.unbind_contextvars("correlation_id")
            response.headers["X-Correlation-ID"] = correlation
            return response

    class AccessLog(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            access.info(
                "request",
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            return response

    class Metrics(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            path = request.url.path
            requests.labels(request.method, path, str(response.status_code)).inc()
            durations.labels(request.method, path).observe(time.perf_counter() - started)
            return response

    def user(request: Request) -> dict[str, Any]:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer":
            raise HTTPException(401, "bearer token required")
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token, secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
            )
        except pyjwt.PyJWTError as exc:
            raise HTTPException(401, "invalid token") from exc
        return claims

    app = FastAPI()
    app.add_middleware(Metrics)
    app.add_middleware(AccessLog)
    app.add_middleware(CorrelationId)

    @app.get("/items/{item_id}", dependencies=[Depends(user)])
    async def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, **BODY}

    return app


def build_demo() -> Any:
    """The demo service's app, through whichever build function ``mainspring.demo`` offers."""
    demo = importlib.import_module("mainspring.demo")
    for name in ("build_app", "create_app", "create_demo_app", "make_app", "app_factory"):
        factory = getattr(demo, name, None)
        if callable(factory):
            return factory()
    app = getattr(demo, "app", None)
    if app is None:
        raise SystemExit(
            f"mainspring.demo has no build function (looked for build_app, create_app, ...): {dir(demo)}"
        )
    return app


def serve(stack: str, port: int) -> None:
    import uvicorn

    log_dir = Path(os.environ[LOG_DIR_ENV])
    builders: dict[str, Callable[[], Any]] = {
        "plain": build_plain,
        "full": lambda: build_full(log_dir),
        "naive": lambda: build_naive(log_dir),
        "demo": build_demo,
    }
    uvicorn.run(
        builders[stack](),
        host="127.0.0.1",
        port=port,
        workers=1,
        log_config=None,
        access_log=False,
        lifespan="on" if stack in ("full", "demo") else "auto",
    )


# --- the in-repo load generator ----------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    """Send one request and read its whole response; True for a 200."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        raise RuntimeError(f"response without content-length: {head[:200]!r}")
    await reader.readexactly(int(match.group(1)))
    return head[9:12] == b"200"


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


async def _saturate(
    port: int, request: bytes, connections: int, duration: float, warmup: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    total = 0
    begin = time.perf_counter()
    measure_from = begin + warmup
    deadline = measure_from + duration

    async def connection() -> None:
        nonlocal errors, total
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= deadline:
                    return
                ok = await _exchange(reader, writer, request)
                total += 1
                done = time.perf_counter()
                if sent >= measure_from and done <= deadline:
                    latencies.append(done - sent)
                    errors += not ok
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    p50, p99 = _percentiles(latencies)
    return {
        "rps": len(latencies) / duration,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
        "n": len(latencies),
        "total": total,
    }


async def _fixed_rate(
    port: int, request: bytes, connections: int, duration: float, warmup: float, rate: float
) -> dict[str, Any]:
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = 0
    begin = time.perf_counter() + 0.05
    measure_from = begin + warmup
    end = measure_from + duration
    running: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            ok = await _exchange(*conn, request)
        finally:
            pool.put_nowait(conn)
        if scheduled >= measure_from:
            latencies.append(time.perf_counter() - scheduled)
            errors += not ok

    i = 0
    while True:
        scheduled = begin + i / rate
        if scheduled >= end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        running.add(task)
        task.add_done_callback(running.discard)
        i += 1
    await asyncio.gather(*running)
    finished = time.perf_counter()
    while not pool.empty():
        pool.get_nowait()[1].close()
    p50, p99 = _percentiles(latencies)
    # The rate achieved: every scheduled request ran, but a slow server stretches the run.
    return {
        "rps": len(latencies) / max(duration, finished - measure_from),
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
        "n": len(latencies),
    }


def load(args: argparse.Namespace) -> None:
    token = os.environ["MAINSPRING_BENCH_TOKEN"]
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    if args.rate:
        result = asyncio.run(
            _fixed_rate(args.port, request, args.connections, args.duration, args.warmup, args.rate)
        )
    else:
        result = asyncio.run(_saturate(args.port, request, args.connections, args.duration, args.warmup))
    print(json.dumps(result))


# --- the orchestration -------------------------------------------------------------------------------


def _pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(port: int, token: str, path: str = PATH) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return int(sock.recv(64)[9:12])


def _start(stack: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    command = [*_pin(0), sys.executable, __file__, "--serve", stack, "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit(f"the {stack} server exited with {process.returncode}")
        with contextlib.suppress(OSError):
            status = _get(port, env["MAINSPRING_BENCH_TOKEN"], PATH if stack != "demo" else "/health/live")
            if status != 200 and stack != "demo":
                _stop(process)
                raise SystemExit(f"the {stack} server answered {status} to GET {PATH}")
            return process, port
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the {stack} server did not answer within 20 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    # taskset execs the server, so the pid is the Python process itself.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _run_python_load(
    env: dict[str, str], port: int, duration: float, warmup: float, rate: float = 0.0
) -> dict[str, Any]:
    command = [
        *_pin(1), sys.executable, __file__, "--load", "--port", str(port),
        "--duration", str(duration), "--warmup", str(warmup), "--connections", str(CONNECTIONS),
        "--rate", str(rate),
    ]  # fmt: skip
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _run_wrk(env: dict[str, str], port: int, duration: float, warmup: float) -> dict[str, Any]:
    header = f"Authorization: Bearer {env['MAINSPRING_BENCH_TOKEN']}"
    url = f"http://127.0.0.1:{port}{PATH}"
    warmed = 0
    if warmup:
        warm = f"-d{max(1, round(warmup))}s"
        warm_out = subprocess.run([*_pin(1), "wrk", "-t1", f"-c{CONNECTIONS}", warm, "-H", header, url],
                                  check=True, capture_output=True, text=True).stdout  # fmt: skip
        warmed = _wrk_count(warm_out)
    out = subprocess.run(
        [*_pin(1), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s", "--latency",
         "-H", header, url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip

    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        return float(match.group(1)) * _WRK_UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": int(bad.group(1)) if bad else 0,
        "total": warmed + _wrk_count(out),
    }


def _wrk_count(out: str) -> int:
    match = re.search(r"(\d+) requests in", out)
    return int(match.group(1)) if match else 0


def _versions() -> str:
    import fastapi
    import jwt
    import starlette
    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return (
        f"Python {platform.python_version()}, fastapi {fastapi.__version__}, "
        f"starlette {starlette.__version__}, "
        f"uvicorn {uvicorn.__version__} ({loop} + {http}), PyJWT {jwt.__version__}; {os.cpu_count()} cores"
    )


def _median_cpu(results: list[dict[str, Any]]) -> float:
    values = [r["cpu_us"] for r in results if "cpu_us" in r]
    return statistics.median(values) if values else float("nan")


def _row(name: str, results: list[dict[str, Any]], base_rps: float | None, base_cpu: float) -> str:
    rps = statistics.median(r["rps"] for r in results)
    p50 = statistics.median(r["p50_ms"] for r in results)
    p99 = statistics.median(r["p99_ms"] for r in results)
    cpu = _median_cpu(results)
    errors = sum(r["errors"] for r in results)
    ratio = f"{rps / base_rps:.2f}" if base_rps else "1.00"
    note = f" ({errors} non-200)" if errors else ""
    cpu_ratio = base_cpu / cpu
    return f"| {name}{note} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio} | {cpu:.0f} | {cpu_ratio:.2f} |"


def bench(args: argparse.Namespace) -> None:
    wrk = shutil.which("wrk") if args.generator in ("auto", "wrk") else None
    if args.generator == "wrk" and wrk is None:
        raise SystemExit(
            "wrk is not on the PATH: install it (Debian/Ubuntu: apt-get install wrk) "
            "or use --generator python"
        )
    if wrk is None:
        print("load: the in-repo generator (asyncio streams, keep-alive) in its own process; "
              "wrk not found (Debian/Ubuntu: apt-get install wrk)")  # fmt: skip
    else:
        print(f"load: {wrk}, 1 thread")
    print(_versions())
    pinned = "server on core 0, load on core 1 (taskset)" if _pin(0) else "not pinned (no taskset or 1 core)"
    print(
        f"{pinned}; {CONNECTIONS} connections; "
        f"{args.rounds} rounds x {args.duration:g} s (+{args.warmup:g} s warm-up)"
    )

    log_dir = Path(tempfile.mkdtemp(prefix="mainspring-http-bench-"))
    env = {**os.environ, SECRET_ENV: secrets.token_bytes(32).hex(), LOG_DIR_ENV: str(log_dir)}
    env["MAINSPRING_BENCH_TOKEN"] = _tokens_for(env).issue("bench-user", ttl=3600)
    stacks: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in STACKS:
            stacks[name] = _start(name, env)
        saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in STACKS}
        for round_no in range(args.rounds):
            order = STACKS[round_no % 3 :] + STACKS[: round_no % 3]
            for name in order:
                process, port = stacks[name]
                cpu = _cpu_seconds(process.pid)
                if wrk:
                    result = _run_wrk(env, port, args.duration, args.warmup)
                else:
                    result = _run_python_load(env, port, args.duration, args.warmup)
                if result.get("total"):
                    result["cpu_us"] = (_cpu_seconds(process.pid) - cpu) / result["total"] * 1e6
                saturation[name].append(result)
                print(f"  round {round_no + 1} {name}: {result['rps']:,.0f} rps, "
                      f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                      f"server CPU {result.get('cpu_us', float('nan')):.0f} us/request")  # fmt: skip
        base = statistics.median(r["rps"] for r in saturation["plain"])
        base_cpu = _median_cpu(saturation["plain"])
        print("\nSaturation (medians):\n")
        print("| stack | RPS | p50 ms | p99 ms | RPS / plain | server CPU us/request | plain CPU / this |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in STACKS:
            print(_row(name, saturation[name], None if name == "plain" else base, base_cpu))
        full = statistics.median(r["rps"] for r in saturation["full"])
        full_cpu = _median_cpu(saturation["full"])
        print(f"\nfull / plain = {full / base:.2f} by RPS, {base_cpu / full_cpu:.2f} by server CPU "
              "per request (goal >= 0.75)")  # fmt: skip

        if args.rate_share > 0:  # always the in-repo generator: wrk cannot hold a fixed rate
            rate = round(full * args.rate_share, -1)
            fixed: dict[str, list[dict[str, Any]]] = {name: [] for name in STACKS}
            for round_no in range(args.rounds):
                for name in STACKS[round_no % 3 :] + STACKS[: round_no % 3]:
                    fixed[name].append(
                        _run_python_load(env, stacks[name][1], args.duration, args.warmup, rate)
                    )
            print(f"\nFixed rate {rate:,.0f} requests/s "
                  f"({args.rate_share:.0%} of the full stack's saturation RPS), "
                  "latency from the scheduled send time (medians):\n")  # fmt: skip
            print("| stack | achieved RPS | p50 ms | p99 ms | p99 / plain p99 |")
            print("|---|---:|---:|---:|---:|")
            base_p99 = statistics.median(r["p99_ms"] for r in fixed["plain"])
            for name in STACKS:
                results = fixed[name]
                rps = statistics.median(r["rps"] for r in results)
                p50 = statistics.median(r["p50_ms"] for r in results)
                p99 = statistics.median(r["p99_ms"] for r in results)
                print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {p99 / base_p99:.1f} |")

        print("\nResident memory (VmRSS) after the rounds:\n")
        for name in STACKS:
            print(f"- {name}: {_rss_mb(stacks[name][0].pid):.1f} MB")
    finally:
        for process, _ in stacks.values():
            _stop(process)
    lines = sum(1 for _ in (log_dir / "full-access.log").open("rb"))
    print(f"- full stack access log: {lines:,} lines in {log_dir / 'full-access.log'}")
    _memory(env, "demo" if importlib.util.find_spec("mainspring.demo") else None, args.warm_requests)
    shutil.rmtree(log_dir, ignore_errors=True)


def _tokens_for(env: dict[str, str]) -> Any:
    os.environ[SECRET_ENV] = env[SECRET_ENV]
    return _tokens()


def _memory(env: dict[str, str], demo: str | None, warm_requests: int) -> None:
    """A fresh full-stack server (and the demo's, if present): RSS after a warm-up of ``warm_requests``."""
    for name in ("full", *([demo] if demo else [])):
        process, port = _start(name, env)
        try:
            before = _rss_mb(process.pid)
            path = PATH if name == "full" else "/health/live"
            asyncio.run(_warm(port, env["MAINSPRING_BENCH_TOKEN"], path, warm_requests))
            print(f"- {name}, fresh process: {before:.1f} MB at start, {_rss_mb(process.pid):.1f} MB after "
                  f"{warm_requests:,} requests (goal < 100 MB)")  # fmt: skip
        finally:
            _stop(process)
    if demo is None:
        print("- demo: mainspring.demo does not exist yet; not measured")


async def _warm(port: int, token: str, path: str, count: int) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()

    async def connection(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            await _exchange(reader, writer, request)
        writer.close()

    await asyncio.gather(*(connection(count // 8) for _ in range(8)))


# --- in-process profile ------------------------------------------------------------------------------


def _asgi_loop(app: Any, token: str, count: int) -> float:
    """CPU microseconds per request through ``app`` called as ASGI, without a server."""
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": PATH, "raw_path": PATH.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> float:
        for _ in range(200):
            await app(dict(scope_base), receive, send)
        # CPU time of the process (the log writer thread included): other jobs on the machine
        # stretch the wall clock, much less this.
        started = time.process_time()
        for _ in range(count):
            await app(dict(scope_base), receive, send)
        return (time.process_time() - started) / count * 1e6

    result = asyncio.run(run())
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return result


@contextlib.contextmanager
def _profiled() -> Iterator[cProfile.Profile]:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield profiler
    finally:
        profiler.disable()


def profile(args: argparse.Namespace) -> None:
    os.environ.setdefault(SECRET_ENV, secrets.token_bytes(32).hex())
    token = _tokens().issue("bench-user", ttl=3600)
    log_dir = Path(tempfile.mkdtemp(prefix="mainspring-http-profile-"))
    count = args.profile_requests
    layers: list[tuple[str, Callable[[], Any]]] = [
        ("plain FastAPI", build_plain),
        ("create_app: context + metrics (no access log, no headers, no JWT)",
         lambda: build_full(log_dir, access_log_sample=0.0, headers=False, jwt=False)),
        ("+ access log to a file", lambda: build_full(log_dir, headers=False, jwt=False)),
        ("+ security headers", lambda: build_full(log_dir, jwt=False)),
        ("+ JWT (bearer HS256, authenticated()) = full", lambda: build_full(log_dir)),
    ]  # fmt: skip
    apps = [(name, build()) for name, build in layers]
    samples: dict[str, list[float]] = {name: [] for name, _ in apps}
    for _ in range(args.rounds):
        for name, app in apps:
            samples[name].append(_asgi_loop(app, token, count))
    print(f"In-process, raw ASGI calls, {count:,} requests x {args.rounds} rounds (median CPU us/request):\n")
    print("| layers | us/request | added |")
    print("|---|---:|---:|")
    previous = None
    for name, values in samples.items():
        value = statistics.median(values)
        added = "" if previous is None else f"{value - previous:+.1f}"
        print(f"| {name} | {value:.1f} | {added} |")
        previous = value
    full = apps[-1][1]
    with _profiled() as profiler:
        _asgi_loop(full, token, count)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print("\ncProfile of the full stack, by own time:\n")
    print(out.getvalue())
    shutil.rmtree(log_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per stack and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 30 s")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--rate-share", type=float, default=0.5, help="fixed rate as a share of full's RPS")
    parser.add_argument("--warm-requests", type=int, default=4000)
    parser.add_argument("--profile", action="store_true", help="time the layers in-process instead")
    parser.add_argument("--profile-requests", type=int, default=5000)
    # Internal: the server and load-generator processes.
    parser.add_argument("--serve", choices=(*STACKS, "demo"), help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
    elif args.load:
        load(args)
    elif args.profile:
        profile(args)
    else:
        if args.quick:
            args.rounds, args.duration, args.warmup, args.warm_requests = 1, 3.0, 0.5, 2000
        bench(args)


if __name__ == "__main__":
    main()
