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
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict() -> None:
    # roadside/ holds the parts as links to their folders, so mypy sees each module once, by its installed name.
    command = [str(BIN / "mypy"), "roadside", "bench", "fuzz", "compose/grafana/generate.py"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


@pytest.mark.timeout(600)
def test_import_contracts() -> None:
    """A wrong import between the parts (docs/architecture.md) fails the build."""
    command = [str(BIN / "lint-imports"), "--no-cache"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


FOLDERS = (
    "roadside",
    "shared",
    "vision",
    "mqttlink",
    "edge",
    "cloud",
    "models",
    "sim",
    "signalcontrol",
    "bench",
    "fuzz",
    "tests",
)
PARTS = FOLDERS[1:-3]  # installed as roadside.<part>, never importable under the bare name


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for each absolute import in ``path``: ``import a.b`` gives ``("a.b", [])``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _sources() -> list[Path]:
    """Every Python file once, by its real path (not again through the links under roadside/)."""
    return [
        path
        for folder in FOLDERS
        for path in sorted((ROOT / folder).glob("**/*.py"))
        if path.resolve() == path
    ]


def test_every_import_of_a_part_goes_through_the_roadside_namespace() -> None:
    """The wheel installs only ``roadside``: ``import edge`` works in this checkout only by accident of
    the working directory, and would load a second copy of each module beside ``roadside.edge``."""
    found = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _sources()
        for module, _ in _imports(path)
        if module.split(".")[0] in PARTS
    ]
    assert found == []


def test_the_source_tree_links_each_part_under_roadside() -> None:
    for part in PARTS:
        link = ROOT / "roadside" / part
        assert link.is_symlink(), link
        assert link.resolve() == (ROOT / part).resolve()


def test_no_module_imports_another_modules_private_names() -> None:
    """Shared helpers are public (the sub-commands share ``roadside.cloud.cli_common``, not ``roadside.cloud.cli._fail``)."""
    found = []
    for path in _sources():
        for module, names in _imports(path):
            if module.split(".")[0] not in ("roadside", "bench", "fuzz"):
                continue
            found += [
                f"{path.relative_to(ROOT)}: {module}.{name}"
                for name in names
                if name.startswith("_") and not name.startswith("__")
            ]
    assert found == []
