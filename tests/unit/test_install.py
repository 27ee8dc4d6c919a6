"""``roadside agent install`` into a temporary root: the files, their modes, the unit's content."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadside.edge.cli import app
from roadside.edge.install import Camera, install, parse_camera, render_config, render_unit
from roadside.edge.settings import load_agent_settings
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, write_bundle
from roadside.shared.errors import ConfigError
from roadside.shared.keys import KeyPair

EXEC = Path("/opt/roadside/bin/roadside")


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    bundle = EnrollmentBundle(
        device_id="pole-17",
        site="main-st",
        broker=BrokerAddress(host="broker.city.example", port=8883),
        ca_cert_pem="-----BEGIN CERTIFICATE-----\n...\n",
        client_cert_pem="-----BEGIN CERTIFICATE-----\n...\n",
        client_key_pem="-----BEGIN PRIVATE KEY-----\n...\n",
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )
    path = tmp_path / "download" / "pole-17.json"
    write_bundle(bundle, path)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_writes_bundle_config_and_unit_with_their_modes(tmp_path: Path, bundle_file: Path) -> None:
    root = tmp_path / "root"
    result = install(bundle_file, root, [Camera("north", "rtsp://10.0.0.5/stream1")], exec_path=EXEC)

    bundle = root / "etc/roadside/bundle.json"
    config = root / "etc/roadside/agent.toml"
    unit = root / "etc/systemd/system/roadside-agent.service"
    assert result.written == [bundle, config, unit]
    assert bundle.read_bytes() == bundle_file.read_bytes()
    assert (mode(bundle), mode(config), mode(unit)) == (0o600, 0o640, 0o644)
    assert (mode(root / "etc/roadside"), mode(root / "var/lib/roadside")) == (0o750, 0o750)
    assert not list((root / "etc/roadside").glob(".*.tmp"))
    assert result.device == "pole-17 at site main-st, broker broker.city.example:8883"

    settings = load_agent_settings(config)
    assert settings.bundle == Path("/etc/roadside/bundle.json")
    assert settings.keys_path == Path("/var/lib/roadside/device_keys.json")
    assert settings.outbox.path == Path("/var/lib/roadside/outbox.db")
    assert settings.metrics_port == 9464
    assert [(s.name, getattr(s, "uri", None)) for s in settings.sources] == [
        ("north", "rtsp://10.0.0.5/stream1")
    ]

    assert "sudo systemctl daemon-reload" in result.commands
    assert "sudo systemctl enable --now roadside-agent.service" in result.commands
    assert any(
        c.startswith("sudo -u roadside /opt/roadside/bin/roadside agent doctor") for c in result.commands
    )


def test_the_unit_runs_as_roadside_restarts_always_and_is_hardened() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(render_unit(EXEC))
    service = parser["Service"]
    assert service["User"] == "roadside"
    assert service["Restart"] == "always"
    assert service["ExecStart"] == (
        "/opt/roadside/bin/roadside agent run --bundle /etc/roadside/bundle.json --config /etc/roadside/agent.toml"
    )
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/roadside"
    assert service["StateDirectory"] == "roadside"
    for hardening in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "RestrictSUIDSGID",
    ):
        assert service[hardening] == "yes", hardening
    assert service["CapabilityBoundingSet"] == ""
    # Cameras and GPUs are devices: nothing may turn on a device allow-list.
    assert not {"PrivateDevices", "DeviceAllow", "ProtectClock"} & set(service)
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_an_edited_config_is_kept_unless_forced(tmp_path: Path, bundle_file: Path) -> None:
    root = tmp_path / "root"
    install(bundle_file, root, exec_path=EXEC)
    config = root / "etc/roadside/agent.toml"
    config.write_text("heartbeat_s = 15\n")
    again = install(bundle_file, root, exec_path=EXEC)
    assert again.kept == [config]
    assert config.read_text() == "heartbeat_s = 15\n"
    install(bundle_file, root, exec_path=EXEC, force=True)
    assert "heartbeat_s = 30" in config.read_text()


def test_an_invalid_bundle_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bundle.json"
    bad.write_text('{"device_id": "x"}')
    with pytest.raises(ConfigError, match="not a valid enrollment bundle"):
        install(bad, tmp_path / "root", exec_path=EXEC)
    assert not (tmp_path / "root").exists()


def test_warnings_for_a_home_install_and_no_camera(tmp_path: Path, bundle_file: Path) -> None:
    result = install(bundle_file, tmp_path / "root", exec_path=Path("/home/pi/venv/bin/roadside"))
    text = "\n".join(result.warnings)
    assert "ProtectHome" in text
    assert "no camera configured" in text
    settings = load_agent_settings(tmp_path / "root/etc/roadside/agent.toml")
    assert settings.sources == []


def test_config_values_are_quoted_for_toml() -> None:
    text = render_config(
        [Camera("cam0", 'rtsp://u:p"w@h/s')], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert 'uri = "rtsp://u:p\\"w@h/s"' in text
    with pytest.raises(ConfigError):
        render_config([Camera("cam0", "rtsp://h/s\nbundle = 'x'")])


def test_parse_camera() -> None:
    assert parse_camera("north=rtsp://10.0.0.5/s", 0) == Camera("north", "rtsp://10.0.0.5/s")
    assert parse_camera("rtsp://u:pa=ss@10.0.0.5/s", 2) == Camera("cam2", "rtsp://u:pa=ss@10.0.0.5/s")


def test_cli_install_prints_the_next_steps(tmp_path: Path, bundle_file: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["install", "--bundle", str(bundle_file), "--root", str(tmp_path / "r"), "--camera", "rtsp://h/s"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote " in result.output
    assert "sudo systemctl enable --now roadside-agent.service" in result.output
    assert (tmp_path / "r/etc/systemd/system/roadside-agent.service").is_file()
