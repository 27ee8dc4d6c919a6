"""The fuzz targets' short form (issue 14): every target on its seeds, its committed
regression inputs and a few hundred cheap mutants, in process; one target through
atheris itself, to show the harness runs. ``python -m fuzz all --runs N`` is the long form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.__main__ import REGRESSIONS
from fuzz.targets import TARGETS, mutations
from roadside.cloud.dataset.formats import parse_coco, parse_yolo
from roadside.edge.ota.policy import OtaRefusal, parse_target
from roadside.shared.bundle import read_bundle
from roadside.shared.config import read_config_file
from roadside.shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_takes_its_seeds_regressions_and_mutants_without_crashing(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    kept = [p.read_bytes() for p in sorted((REGRESSIONS / name).glob("*"))]
    for data in [*seeds, *kept, *mutations(seeds + kept, 300, seed=14)]:
        target.run(data)


def test_every_target_has_seeds() -> None:
    assert all(t.seeds() for t in TARGETS.values())


@pytest.mark.timeout(120)
def test_atheris_runs_a_target_and_reports_its_executions(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, "-m", "fuzz", "schemas", "--runs", "300", "--artifacts", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, summary
    assert summary["executions"] == 300
    assert summary["crashes"] == []


# The crashes the fuzz targets found (each input is in fuzz/regressions/TARGET/non-utf8):
# a file that is not UTF-8 escaped as UnicodeDecodeError instead of a ConfigError.


def regression(name: str) -> bytes:
    return (REGRESSIONS / name / "non-utf8").read_bytes()


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(regression("config")[1:])
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(path, "agent config")


def test_a_bundle_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(regression("bundle"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_bundle(path)


def test_a_coco_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_bytes(regression("dataset-coco"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_coco(path, {}, tmp_path)


def test_a_yolo_classes_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    classes, _, labels = regression("dataset-yolo").partition(b"\n")
    (tmp_path / "classes.txt").write_bytes(classes.replace(b"|", b"\n"))
    (tmp_path / "img0.txt").write_bytes(labels)
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_yolo(tmp_path, {}, tmp_path)


def test_a_tuf_target_whose_sha256_is_not_a_string_is_refused() -> None:
    """fuzz/regressions/tuf-target/sha256-not-a-string: ``_SHA256_RE.fullmatch(17)`` raised TypeError."""
    entry = json.loads((REGRESSIONS / "tuf-target" / "sha256-not-a-string").read_bytes())
    result = parse_target(entry["path"], entry["length"], entry["hashes"], entry.get("custom"))
    assert isinstance(result, OtaRefusal)
    assert "no sha256 hash" in result.detail
