"""Frame sources by config type: the agent's own, and those registered through entry points (ADR 0010)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from roadside.edge import sources as edge_sources
from roadside.edge.settings import SyntheticSource
from roadside.edge.sources import ENTRY_POINT_GROUP, installed_source_types, open_source
from roadside.shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_synthetic_camera_comes_from_sim_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(edge_sources.SOURCE_TYPES, "synthetic", raising=False)  # as in a fresh agent
    source = open_source(SyntheticSource(width=64, height=64, realtime=False, max_frames=2))
    try:
        assert type(source).__module__ == "roadside.sim.camera"
        frames = list(source.frames())
    finally:
        source.close()
    assert [f.index for f in frames] == [0, 1]
    assert frames[0].image.shape == (64, 64, 3)
    assert {"synthetic", "video"} <= set(installed_source_types())


def test_a_type_nothing_registers_is_a_config_error_that_lists_what_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the agent's own type, whatever other sources earlier tests in this process loaded.
    monkeypatch.setattr(edge_sources, "SOURCE_TYPES", {"video": edge_sources.SOURCE_TYPES["video"]})
    monkeypatch.setattr(edge_sources, "registered_entry_points", lambda *_: [])
    with pytest.raises(ConfigError, match=r"camera cam0: no source of type 'synthetic'.*installed: video\)"):
        open_source(SyntheticSource())


def test_a_registered_module_that_cannot_be_imported_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = EntryPoint("synthetic", "roadside_no_such_module:Source", ENTRY_POINT_GROUP)
    monkeypatch.delitem(edge_sources.SOURCE_TYPES, "synthetic", raising=False)
    monkeypatch.setattr(edge_sources, "registered_entry_points", lambda *_: [broken])
    with pytest.raises(ConfigError, match="roadside_no_such_module:Source, which cannot be imported"):
        open_source(SyntheticSource())


def test_two_packages_registering_one_type_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = [EntryPoint("synthetic", f"pkg{i}:Source", ENTRY_POINT_GROUP) for i in (1, 2)]
    monkeypatch.delitem(edge_sources.SOURCE_TYPES, "synthetic", raising=False)
    monkeypatch.setattr(edge_sources, "registered_entry_points", lambda *_: twice)
    with pytest.raises(ConfigError, match="registered twice"):
        open_source(SyntheticSource())


def test_an_install_without_sim_still_opens_cameras_and_refuses_the_synthetic_one() -> None:
    # sys.modules[name] = None makes every import of sim fail, as on a box where it is not installed.
    code = (
        "import sys; sys.modules['roadside.sim'] = None\n"
        "from roadside.edge.agent import Agent\n"
        "from roadside.edge.settings import SyntheticSource, VideoSource\n"
        "from roadside.edge.sources import open_source\n"
        "from roadside.shared.errors import ConfigError\n"
        "open_source(VideoSource(uri='/nonexistent.mp4')).close()\n"
        "try:\n"
        "    open_source(SyntheticSource())\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
        "assert not [m for m in sys.modules if m.startswith(('roadside.sim.', 'roadside.models'))]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "refused: camera cam0: source type 'synthetic' is registered by roadside.sim.camera" in result.stdout
    )
