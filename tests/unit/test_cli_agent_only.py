"""``roadside agent ...`` builds the agent's commands alone: none of the hub's libraries in its process (ADR 0023)."""

from __future__ import annotations

import pytest

from tests.support.fresh import last_json

pytestmark = pytest.mark.timeout(60)


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
    loaded: list[str] = last_json(_SCRIPT, *argv, timeout_s=50)
    return loaded


def test_the_agent_command_imports_nothing_of_the_hub() -> None:
    assert _hub_modules("agent", "--help") == []


def test_the_other_commands_still_see_the_whole_tree() -> None:
    pytest.importorskip("fastapi")  # the cloud extra installed here
    assert "roadside.cloud" in _hub_modules("--help")
