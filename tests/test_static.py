"""The code stays ruff- and mypy-clean (strict) and keeps the parts' allowed imports
(import-linter, ``[tool.importlinter]`` in pyproject.toml): checked in the same run as the tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.timeout(600)
def test_ruff() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    command = [str(BIN / "mypy"), "roadside", "shared", "vision", "mqttlink", "edge", "cloud", "models", "sim", "bench"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


@pytest.mark.timeout(600)
def test_import_contracts() -> None:
    """A wrong import between the parts (docs/architecture.md) fails the build."""
    command = [str(BIN / "lint-imports"), "--no-cache"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


PARTS = ("roadside", "shared", "vision", "mqttlink", "edge", "cloud", "models", "sim", "bench")


def test_no_module_imports_another_modules_private_names() -> None:
    """Shared helpers are public (the sub-commands share ``cloud.cli_common``, not ``cloud.cli._fail``)."""
    found = []
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.split(".")[0] not in PARTS:
                        continue
                    found += [
                        f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__")
                    ]
    assert found == []
