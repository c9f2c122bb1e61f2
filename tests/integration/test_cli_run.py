"""``mainspring run module:app`` serves on uvicorn and stops the service on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mainspring.cli import main

APP = """
from pathlib import Path

from mainspring.service import Service
from mainspring.web import create_app


class Marker:
    async def start(self) -> None:
        Path("started").write_text("yes")

    async def stop(self) -> None:
        Path("stopped").write_text("yes")


service = Service(name="runner")
service.add("marker", Marker())
app = create_app(service=service)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_run_serves_the_app_and_stops_the_service_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "runner_app.py").write_text(APP)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    log_file = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mainspring.cli import main; main()",
            "run",
            "runner_app:app",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["x-correlation-id"]
        assert (tmp_path / "started").read_text() == "yes"
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log_file.close()
    assert (tmp_path / "stopped").read_text() == "yes"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "module:attribute"),
        ("no_such_module_xyz:app", "cannot import module"),
        ("os:nope", "no attribute"),
    ],
)
def test_bad_targets_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", target])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
