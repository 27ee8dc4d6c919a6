"""One version for the hub and the agent: the package metadata, or the checkout's pyproject.toml."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from roadside.shared.errors import ConfigError
from roadside.shared.version import checkout_version, roadside_version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_version_is_the_metadata_one() -> None:
    assert roadside_version() == importlib.metadata.version("roadside")


def test_a_checkout_reads_its_pyproject() -> None:
    assert checkout_version(PYPROJECT) == roadside_version()


def test_a_pyproject_without_a_version_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "roadside"\n')
    with pytest.raises(ConfigError, match=r"project\.version"):
        checkout_version(tmp_path / "pyproject.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        checkout_version(tmp_path / "missing.toml")
