"""Run a script in a fresh interpreter (nothing imported yet) and read the JSON it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def last_json(script: str, *argv: str, timeout_s: float = 100) -> Any:
    """``python -c script argv...`` from the repository root; its last stdout line, parsed."""
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
