"""``roadside agent ...`` builds the agent's commands alone: none of the hub's libraries in its process (ADR 0023)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys
sys.argv = ["roadside", *sys.argv[1:]]
from roadside.cli import main
try:
    main()
except SystemExit:
    pass
hub = ("fastapi", "sqlalchemy", "alembic", "uvicorn", "roadside.cloud")
print(json.dumps(sorted(m for m in hub if m in sys.modules)))
"""


def _hub_modules(*argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_the_agent_command_imports_nothing_of_the_hub() -> None:
    assert _hub_modules("agent", "--help") == []


def test_the_other_commands_still_see_the_whole_tree() -> None:
    pytest.importorskip("fastapi")  # the cloud extra installed here
    assert "roadside.cloud" in _hub_modules("--help")
