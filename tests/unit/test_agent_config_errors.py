"""A bad agent config is refused at start, with a message naming each offending field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roadside.edge.settings import load_agent_settings
from roadside.shared.errors import ConfigError

BAD = """
interval_s = 0
[[sources]]
type = "synthetic"
name = "cam0"
fps = 500
"""


def test_load_agent_settings_names_every_bad_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BAD)
    with pytest.raises(ConfigError) as caught:
        load_agent_settings(config)
    message = str(caught.value)
    assert "interval_s" in message
    assert "sources.0" in message
    assert "fps" in message
    lines = message.splitlines()
    assert any("interval_s" in line for line in lines[1:])
    assert any("sources.0" in line and "fps" in line for line in lines[1:])


def test_an_unknown_field_is_named(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("interval = 10\n")
    with pytest.raises(ConfigError, match="interval"):
        load_agent_settings(config)


@pytest.mark.timeout(60)
def test_agent_run_exits_2_naming_the_fields(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BAD)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from roadside.cli import main; main()",
            "agent",
            "run",
            "--bundle",
            str(tmp_path / "bundle.json"),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "interval_s" in result.stderr
    assert "sources.0" in result.stderr
    assert "fps" in result.stderr
    assert "Traceback" not in result.stderr
