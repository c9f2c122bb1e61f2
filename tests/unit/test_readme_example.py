"""The example in README.md runs as written and does what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs_and_masks_the_card_number(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    # Run in an empty directory so no config/ or .env of the repository leaks in.
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    log_line, status = result.stdout.strip().splitlines()
    record = orjson.loads(log_line)
    assert record["event"] == "order looked up"
    assert record["correlation_id"] == "c-42"
    assert record["card"] != "4111 1111 1111 1111"
    assert "4111" not in log_line
    assert status == "404"
