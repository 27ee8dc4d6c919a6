"""``roadside agent install``: the systemd unit and the agent config, from an enrollment bundle.

The renderers are pure (text in, text out); :func:`install` writes their
output under a root directory (``/`` on a device, a temporary directory in
tests) with the modes a hardened service needs, and returns the commands
for the installer to run. It never runs ``systemctl`` or ``useradd`` itself:
the person at the pole sees and runs each step.

Layout::

    /etc/roadside/                   0750  root:roadside
    /etc/roadside/bundle.json        0600  roadside   the enrollment bundle (private keys)
    /etc/roadside/agent.toml         0640  root:roadside
    /etc/systemd/system/roadside-agent.service  0644
    /var/lib/roadside/               0750  roadside   outbox, rotated keys, command journal

The unit mounts the whole file system read-only for the agent
(``ProtectSystem=strict``) except ``/var/lib/roadside``, so keys made by a
``rotate_keys`` command are kept there (``keys_path``), not beside the bundle.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from roadside.shared.bundle import read_bundle
from roadside.shared.errors import ConfigError

SERVICE_USER: Final = "roadside"
UNIT_NAME: Final = "roadside-agent.service"
CONFIG_DIR: Final = Path("/etc/roadside")
STATE_DIR: Final = Path("/var/lib/roadside")
BUNDLE_PATH: Final = CONFIG_DIR / "bundle.json"
CONFIG_PATH: Final = CONFIG_DIR / "agent.toml"
UNIT_PATH: Final = Path("/etc/systemd/system") / UNIT_NAME


@dataclass(frozen=True, slots=True)
class Camera:
    name: str
    uri: str
    fps_cap: float = 10.0


def parse_camera(text: str, index: int) -> Camera:
    """``NAME=URI`` or a bare ``URI`` (named ``cam<index>``)."""
    name, sep, uri = text.partition("=")
    if not sep or "://" in name:
        name, uri = f"cam{index}", text
    if not name or not uri:
        raise ConfigError(f"camera {text!r} should be NAME=URI or a URI")
    return Camera(name.strip(), uri.strip())


def render_unit(exec_path: Path, user: str = SERVICE_USER) -> str:
    """The systemd unit: restart always, and the hardening that still lets cameras and GPUs work."""
    return f"""\
# Roadside edge agent. Written by `roadside agent install`; re-running it overwrites this file.
[Unit]
Description=Roadside edge agent
Documentation=https://github.com/roadside/roadside/blob/main/docs/install.md
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target
StartLimitIntervalSec=0

[Service]
Type=exec
User={user}
Group={user}
# Cameras (/dev/video*) and a Jetson's GPU (/dev/nvhost-*) are group video on most images.
SupplementaryGroups=video
ExecStart={exec_path} agent run --bundle {BUNDLE_PATH} --config {CONFIG_PATH}
Restart=always
RestartSec=5
# The agent closes the open interval and drains the outbox on SIGTERM.
KillSignal=SIGTERM
TimeoutStopSec=60
StateDirectory=roadside
StateDirectoryMode=0750
UMask=0077
Environment=PYTHONUNBUFFERED=1

# Hardening: read-only system, private /tmp, no privilege gain, no kernel knobs.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={STATE_DIR}
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Not set, on purpose: PrivateDevices and DeviceAllow (cameras and GPUs are devices),
# MemoryDenyWriteExecute (CUDA and TensorRT compile kernels at run time),
# ProtectClock (it implies a device allow-list too).

[Install]
WantedBy=multi-user.target
"""


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise ConfigError(f"{value!r} contains control characters")
    return f'"{escaped}"'


def render_config(
    cameras: list[Camera],
    providers: list[str] | None = None,
    metrics_port: int = 9464,
    hub_api_url: str | None = None,
) -> str:
    """The default agent config (TOML) that ``roadside agent run --config`` reads."""
    lines = [
        "# Roadside agent config. Written by `roadside agent install`; edit freely:",
        "# `roadside agent doctor` checks it, and a reload_config command applies streams,",
        "# lines and the heartbeat without a restart. Reference: docs/install.md.",
        f"bundle = {_toml_string(str(BUNDLE_PATH))}",
        f"keys_path = {_toml_string(str(STATE_DIR / 'device_keys.json'))}",
        "heartbeat_s = 30",
        "interval_s = 60",
        f"metrics_port = {metrics_port}  # Prometheus /metrics on 127.0.0.1; 0 turns it off",
    ]
    if hub_api_url:
        lines.append(f"hub_api_url = {_toml_string(hub_api_url)}  # doctor's clock check")
    if not cameras:
        lines += [
            "# No camera yet: the agent idles until the hub sends add_stream, or add one here:",
            "# [[sources]]",
            '# type = "video"',
            '# name = "cam0"',
            '# uri = "rtsp://user:password@192.0.2.10:554/stream1"',
            "sources = []",
        ]
    lines += [
        "",
        "[model]",
        "providers = [" + ", ".join(_toml_string(p) for p in providers or ["CPUExecutionProvider"]) + "]",
        "",
        "[outbox]",
        f"path = {_toml_string(str(STATE_DIR / 'outbox.db'))}",
        "max_bytes = 536870912  # 512 MiB on disk while the uplink is down; oldest health goes first",
    ]
    for camera in cameras:
        lines += [
            "",
            "[[sources]]",
            'type = "video"',
            f"name = {_toml_string(camera.name)}",
            f"uri = {_toml_string(camera.uri)}",
            f"fps_cap = {camera.fps_cap:g}",
        ]
    return "\n".join(lines) + "\n"


def default_exec_path() -> Path:
    """The ``roadside`` script of this installation."""
    beside = Path(sys.executable).parent / "roadside"
    found = shutil.which("roadside")
    return beside if beside.is_file() else Path(found) if found else beside


@dataclass
class InstallResult:
    device: str = ""
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # existing configs left as the installer edited them
    commands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def install(
    bundle_file: Path,
    root: Path = Path("/"),
    cameras: list[Camera] | None = None,
    providers: list[str] | None = None,
    metrics_port: int = 9464,
    hub_api_url: str | None = None,
    exec_path: Path | None = None,
    force: bool = False,
) -> InstallResult:
    """Write the bundle, config and unit under ``root``; the result lists what to run next."""
    bundle = read_bundle(bundle_file)  # ConfigError says what is wrong before anything is written
    exec_path = exec_path or default_exec_path()
    result = InstallResult()
    owner = _service_owner()
    config_dir, state_dir = _under(root, CONFIG_DIR), _under(root, STATE_DIR)
    _mkdir(config_dir, 0o750, None if owner is None else (0, owner[1]))
    _mkdir(state_dir, 0o750, owner)
    _write(_under(root, BUNDLE_PATH), bundle_file.read_bytes(), 0o600, owner)
    result.written.append(_under(root, BUNDLE_PATH))
    config_file = _under(root, CONFIG_PATH)
    if config_file.exists() and not force:
        result.kept.append(config_file)
    else:
        config = render_config(cameras or [], providers, metrics_port, hub_api_url)
        _write(config_file, config.encode(), 0o640, None if owner is None else (0, owner[1]))
        result.written.append(config_file)
    unit_file = _under(root, UNIT_PATH)
    _mkdir(unit_file.parent, 0o755, None)
    _write(unit_file, render_unit(exec_path).encode(), 0o644, None)
    result.written.append(unit_file)
    result.warnings += _warnings(exec_path, owner, cameras or [])
    result.commands = _next_steps(exec_path, needs_owner=owner is None)
    result.device = (
        f"{bundle.device_id} at site {bundle.site}, broker {bundle.broker.host}:{bundle.broker.port}"
    )
    return result


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _service_owner() -> tuple[int, int] | None:
    """(uid, gid) of the service user, when we are root and it exists; else files keep our owner."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return user.pw_uid, grp.getgrgid(user.pw_gid).gr_gid


def _mkdir(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Create with ``mode`` from the start (never briefly world-readable), then rename into place."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(temp, mode)
    if owner is not None:
        os.chown(temp, *owner)
    os.replace(temp, path)


def _warnings(exec_path: Path, owner: tuple[int, int] | None, cameras: list[Camera]) -> list[str]:
    warnings = []
    if exec_path.is_relative_to("/home") or exec_path.is_relative_to("/root"):
        warnings.append(
            f"{exec_path} is under a home directory, which the unit hides (ProtectHome=yes): "
            "install Roadside in /opt (e.g. python3 -m venv /opt/roadside) and re-run with --exec"
        )
    if not exec_path.is_file():
        warnings.append(f"{exec_path} does not exist: pass --exec with the path of the `roadside` command")
    if owner is None:
        warnings.append(
            f"files are owned by the user running the installer, not {SERVICE_USER!r}: "
            "run the chown commands below (or re-run the installer as root once the user exists)"
        )
    if not cameras:
        warnings.append("no camera configured: add [[sources]] to the config or send add_stream from the hub")
    return warnings


def _next_steps(exec_path: Path, needs_owner: bool) -> list[str]:
    steps = [
        f"id {SERVICE_USER} || sudo useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin "
        f"--groups video {SERVICE_USER}",
    ]
    if needs_owner:
        steps += [
            f"sudo chown -R {SERVICE_USER}:{SERVICE_USER} {STATE_DIR} {BUNDLE_PATH}",
            f"sudo chown root:{SERVICE_USER} {CONFIG_DIR} {CONFIG_PATH}",
        ]
    steps += [
        f"sudo -u {SERVICE_USER} {exec_path} agent doctor --config {CONFIG_PATH}",
        "sudo systemctl daemon-reload",
        f"sudo systemctl enable --now {UNIT_NAME}",
        f"journalctl -u {UNIT_NAME} -f",
    ]
    return steps
