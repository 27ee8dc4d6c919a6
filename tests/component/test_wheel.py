"""The wheel installs one package, ``roadside``, and works from a fresh virtualenv (issue 10, ADR 0012).

The fresh virtualenv gets its third-party dependencies from this checkout's
``.venv`` through a folder of links (no network), but not this checkout's own
``roadside``: what runs is only what the wheel installed. An unrelated package
called ``models`` (and one called ``shared``) sits beside it, as on a box that
runs someone else's Python too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_SITE = Path(sysconfig.get_paths()["purelib"])
PARTS = ("shared", "vision", "mqttlink", "edge", "cloud", "models", "sim")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and *.egg-info into its source)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "tests"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    out = work / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", source, "-w", out],
        work,
    )
    (built,) = out.glob("roadside-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel, its dependencies by link, and foreign ``models`` and ``shared``."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], work)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    deps = work / "deps"
    deps.mkdir()
    for entry in DEV_SITE.iterdir():
        # Everything but this checkout's own (editable) install of roadside.
        if entry.name.startswith(("roadside", "__editable__", "_roadside")):
            continue
        (deps / entry.name).symlink_to(entry)
    (site / "dependencies.pth").write_text(f"{deps}\n")
    for name in ("models", "shared"):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f'OWNER = "someone else\'s {name}"\n')
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "-q",
            "--no-deps",
            wheel,
        ],
        work,
    )
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def test_the_wheel_holds_one_top_level_package_and_no_benchmarks_or_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"roadside"}
    for part in PARTS:
        assert f"roadside/{part}/__init__.py" in names or f"roadside/{part}/py.typed" in names, part
    assert "roadside/models/detector.onnx" in names  # the shipped detector travels with the agent
    assert "roadside/models/detector_sumo.onnx" in names  # and the one released for SUMO's cameras
    assert "roadside/models/detector_sumo_junction.onnx" in names  # and SUMO's junction camera's
    assert "roadside/cloud/migrations/versions/0001_initial.py" in names
    assert not [n for n in names if n.startswith(("roadside/bench", "bench/", "tests/", "roadside/tests"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "roadside = roadside.cli:main" in text
    assert "synthetic = roadside.sim.camera:SyntheticFrameSource" in text


def test_roadside_help_runs_from_the_wheel_beside_a_foreign_models_package(
    fresh_venv: Path, tmp_path: Path
) -> None:
    out = _run([fresh_venv / "bin" / "roadside", "--help"], tmp_path, _clean_env())
    for command in ("agent", "hub", "device", "rollout"):
        assert command in out
    code = (
        "import models, shared, roadside.edge.agent, roadside.cloud.hub, roadside.sim.camera\n"
        "import roadside.edge.agent as agent\n"
        'assert models.OWNER == "someone else\'s models", models.__file__\n'
        'assert shared.OWNER == "someone else\'s shared", shared.__file__\n'
        "print(agent.__file__)\n"
    )
    where = _run([fresh_venv / "bin" / "python", "-c", code], tmp_path, _clean_env())
    assert str(fresh_venv) in where
    assert str(ROOT) not in where


def test_the_agent_self_test_passes_from_the_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    out = _run(
        [fresh_venv / "bin" / "roadside", "agent", "selftest", "--frames", "2"], tmp_path, _clean_env()
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] is True, report
    assert [check["name"] for check in report["checks"]] == ["model", "outbox", "envelope"]
    assert "CPUExecutionProvider" in report["checks"][0]["detail"]
