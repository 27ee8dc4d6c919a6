"""Mosquitto, the reference broker: its ACL file, its config, and a process wrapper.

Devices and hubs authenticate with client certificates; Mosquitto takes the
certificate's common name as the username (``use_identity_as_username``)
and the ACL file written by ``render_acl`` confines each name. Devices have
no rule of their own: ``pattern`` lines on the certificate name (``%u``) give
every name the CA issued its own device topics, so enrolling a device changes
no file and needs no reload (ADR 0022: a reload makes Mosquitto 2.0 drop the
offline persistent sessions of certificate-named clients, the hub's among
them, with what it queued for them). Hubs, controllers and revoked devices
are named, each with a ``deny`` that takes the patterns' rights away:

==========  =====================================  =============================================
who         may publish                            may receive
==========  =====================================  =============================================
device      ``roadside/v1/<site>/<device>/#``      ``roadside/v1/cmd/<device>``
hub         ``roadside/v1/cmd/#``,                 ``roadside/v1/#``, also via ``$share/<group>/``
            ``roadside/signals/v1/#``
controller  nothing                                ``roadside/signals/v1/<its signals>/calls``
revoked     nothing                                nothing
==========  =====================================  =============================================

A device may publish under another site than its own (the pattern cannot know
its site): the hub refuses such a message (``topic_mismatch``), as it refuses a
name the registry does not know (``unknown_key``). The CA issues certificates
only to enrolled devices, hubs and controllers.

How Mosquitto 2.0 applies it (checked against 2.0.11): each PUBLISH is
checked (MQTT 5 gets PUBACK 135 "not authorized"; the message is dropped),
and each delivery is checked against the receiver's read rules on the
message's own topic, shared subscriptions included. A SUBSCRIBE is never
checked: every filter is granted and simply delivers nothing unreadable.
So any client may join a shared-subscription group, and a message the group
hands to a member that may not read it is lost for the whole group: keep
the hub's group name to the hubs.

Client ids are bound to identities: every config sets
``use_username_as_clientid``, so Mosquitto replaces the client id a client
sends with its certificate CN. No one can connect under another's client id
and take over its session; two processes that share one certificate keep
disconnecting each other, so each hub process has a certificate of its own
(``hub`` or ``hub-<name>``, listed in ``<broker dir>/hub-identities``).
Names starting with ``hub`` are reserved: no device can be enrolled as one.

``render_acl`` and ``render_config`` are pure; ``MosquittoBroker`` writes
their output into a working directory and runs ``mosquitto -c`` on a
loopback port, for the demo and the tests.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from roadside.cloud.broker.limits import raise_open_files
from roadside.cloud.broker.pki import CertificateAuthority, IssuedCert, write_private, write_public
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.topics import ROOT, SIGNALS_ROOT, check_name, signal_calls

log = logging.getLogger(__name__)

TlsVersion = Literal["tlsv1.2", "tlsv1.3"]

_FALLBACK_EXECUTABLE: Final = "/usr/sbin/mosquitto"
# Mosquitto prints this (log_type information) when it handles SIGHUP; the
# reload itself completes in the same pass of its single-threaded loop.
_RELOAD_MARK: Final = re.compile(r"^\S+ Reloading config\.$", re.MULTILINE)
# ...and this once every listener is set up. It opens the port before it
# loads the certificate and key, so an open port alone does not mean it will stay.
_RUNNING_MARK: Final = re.compile(r"^\S+ mosquitto version \S+ running$", re.MULTILINE)
_PORT_TAKEN_MARK: Final = re.compile(r"Address already in use")
_RESEND_AFTER_S: Final = 0.5

HUB_IDENTITY: Final = "hub"
# Files in a broker's directory that others read: who the hubs are, and which
# process runs the broker (so enrollment and revocation can make it reload).
HUB_IDENTITIES_FILE: Final = "hub-identities"
SIGNAL_CONTROLLERS_FILE: Final = "signal-controllers"  # who may read which signals' calls (docs/signals.md)
STATE_FILE: Final = "broker.json"
ACL_FILE: Final = "mosquitto.acl"
CRL_FILE: Final = "ca.crl.pem"
LOG_FILE: Final = "mosquitto.log"
_LOCK_FILE: Final = ".acl.lock"
# The persistence settings every broker config uses (render_config and compose).
AUTOSAVE_INTERVAL_S: Final = 10


@dataclass(frozen=True, slots=True)
class AclDevice:
    """A device allowed on the broker: its id (certificate CN) and its site."""

    device_id: str
    site: str


def is_reserved_name(name: str) -> bool:
    """Whether ``name`` belongs to the hubs' namespace (``hub``, ``hub-*``, ``hub_*``, any case)."""
    lowered = name.lower()
    return lowered == HUB_IDENTITY or lowered.startswith((f"{HUB_IDENTITY}-", f"{HUB_IDENTITY}_"))


def check_device_name(device_id: str) -> str:
    """``device_id`` if a device may hold it: the safe charset, and not a hub's name."""
    check_name(device_id, "device id")
    if is_reserved_name(device_id):
        raise ConfigError(
            f"device id {device_id!r} is reserved for hub processes (hub, hub-*, hub_*); pick another id"
        )
    return device_id


def check_hub_identity(name: str) -> str:
    """``name`` if a hub process may connect under it: ``hub`` or ``hub-<name>``."""
    check_name(name, "hub identity")
    if name != HUB_IDENTITY and not name.startswith(f"{HUB_IDENTITY}-"):
        raise ConfigError(
            f"hub client id {name!r} must be {HUB_IDENTITY!r} or start with '{HUB_IDENTITY}-' "
            "(the broker takes the client id from the certificate, and only hubs hold those names)"
        )
    return name


# -- pure renderers -----------------------------------------------------------


def render_acl(
    devices: Iterable[AclDevice],
    hub_users: Iterable[str] = (HUB_IDENTITY,),
    controllers: Mapping[str, Iterable[str]] | None = None,
    revoked: Iterable[str] = (),
) -> str:
    """The Mosquitto ``acl_file`` text confining each device and each hub process to their topics.

    Devices get no rule each: three ``pattern`` lines on the certificate name (``%u``)
    confine every name to ``roadside/v1/<any site>/<name>/<kind>`` and its own command topic, so
    the file does not change when a device is enrolled. ``devices`` (the enrolled ones) are
    only checked: no hub, controller or revoked name may be one of them. Each of ``revoked``
    gets ``deny #``, which Mosquitto checks before any pattern.

    Hubs also write the signal-call topics (``roadside/signals/v1/<signal>/calls``, outside the
    device tree); each of ``controllers`` (a signal controller's certificate name → the signals
    it runs) may only read its own signals' calls, and nothing of the device tree.

    Every name is checked against the safe charset first, because a ``#``,
    ``+``, ``/`` or newline in a name would widen a rule or add one.
    """
    hubs = sorted({check_name(user, "hub user") for user in hub_users})
    by_id = _checked_devices(devices, hubs)
    gone = sorted({check_name(name, "revoked device id") for name in revoked})
    for name in gone:
        if name in by_id or name in hubs or is_reserved_name(name):
            raise ConfigError(f"revoked device {name!r} is also an enrolled device or a hub")
    lines = [
        "# Roadside broker ACL, written by roadside.cloud.broker.mosquitto.render_acl; edits are overwritten.",
        "# Every rule needs a username (%u, or a 'user' line), so anonymous clients get nothing.",
        "",
        "# Every device, by its certificate name: no rule per device, so enrolling one needs no reload.",
        f"pattern deny {ROOT}/cmd/%u/+/#",
        f"pattern write {ROOT}/+/%u/+/#",  # a kind below the name: never the bare command topic
        f"pattern read {ROOT}/cmd/%u",
    ]
    for hub_user in hubs:
        lines += ["", f"user {hub_user}", f"topic deny {ROOT}/+/{hub_user}/#"]  # no device rights
        lines += [f"topic read {ROOT}/#", f"topic write {ROOT}/cmd/#", f"topic write {SIGNALS_ROOT}/#"]
    for name in gone:
        lines += ["", f"user {name}", "topic deny #"]
    for user, signals in sorted((controllers or {}).items()):
        check_name(user, "controller user")
        if user in by_id or user in hubs or user in gone or is_reserved_name(user):
            raise ConfigError(f"controller {user!r} may not share a name with a device or a hub")
        lines += ["", f"user {user}", f"topic deny {ROOT}/#"]
        lines += [f"topic read {signal_calls(s)}" for s in sorted(set(signals))]
    return "\n".join(lines) + "\n"


def _checked_devices(devices: Iterable[AclDevice], hubs: list[str]) -> dict[str, AclDevice]:
    by_id: dict[str, AclDevice] = {}
    for device in devices:
        check_name(device.device_id, "device id")
        check_name(device.site, "site")
        if device.device_id in hubs or is_reserved_name(device.device_id):
            raise ConfigError(f"device id {device.device_id!r} is reserved for the hub")
        seen = by_id.setdefault(device.device_id, device)
        if seen.site != device.site:
            raise ConfigError(
                f"device {device.device_id!r} is listed at two sites ({seen.site!r}, {device.site!r})"
            )
    return by_id


def render_config(
    *,
    port: int,
    host: str = "127.0.0.1",
    cafile: Path | str,
    certfile: Path | str,
    keyfile: Path | str,
    acl_file: Path | str,
    persistence_dir: Path | str,
    log_file: Path | str | None = None,
    crlfile: Path | str | None = None,
    max_packet_size: int = 262144,
    max_queued_messages: int = 1_000_000,
    autosave_interval_s: int = AUTOSAVE_INTERVAL_S,
    persistent_client_expiration: str = "14d",
    tls_version: TlsVersion = "tlsv1.2",
    run_as_user: str | None = None,
) -> str:
    """The ``mosquitto.conf`` text for one mutual-TLS listener with the ACL file.

    ``tls_version`` is the minimum; modern peers negotiate TLS 1.3 anyway.
    ``max_queued_messages`` is per client: it bounds what the broker holds for
    an offline hub session, and messages past it are dropped by the broker, so
    it is sized for half an hour of a 10,000-device city's traffic (560 messages
    a second), not minutes: at 100,000 a city-sized run lost acknowledged
    messages while its hub was 3 minutes behind (docs/reliability.md).

    The client id is always replaced with the certificate CN
    (``use_username_as_clientid``): without it a device could connect under
    the hub's or another device's client id, disconnect it and take over its
    session. ``crlfile`` (the CA's revocation list) makes the TLS handshake
    refuse revoked certificates; Mosquitto re-reads it on SIGHUP.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"port must be 1-65535, got {port}")
    for name, value in {
        "max_packet_size": max_packet_size,
        "max_queued_messages": max_queued_messages,
        "autosave_interval_s": autosave_interval_s,
    }.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if tls_version not in ("tlsv1.2", "tlsv1.3"):
        raise ConfigError(f"tls_version must be tlsv1.2 or tlsv1.3, got {tls_version!r}")
    persistence = _conf_value(persistence_dir, "persistence_dir")
    lines = [
        "# Roadside broker config, written by roadside.cloud.broker.mosquitto.render_config; edits are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {_conf_value(acl_file, 'acl_file')}",
        "persistence true",
        # Mosquitto joins location and file name by plain concatenation.
        f"persistence_location {persistence.rstrip('/')}/",
        "persistence_file mosquitto.db",
        # Persistence is a periodic snapshot: a crash (not a stop) loses what
        # arrived since the last save, so save often.
        f"autosave_interval {autosave_interval_s}",
        f"persistent_client_expiration {_conf_value(persistent_client_expiration, 'expiration')}",
        f"max_queued_messages {max_queued_messages}",
        f"max_packet_size {max_packet_size}",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        *(
            ["log_dest stderr"]
            if log_file is None
            else [f"log_dest file {_conf_value(log_file, 'log_file')}"]
        ),
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if run_as_user is not None:
        lines.append(f"user {_conf_value(run_as_user, 'run_as_user')}")
    lines += [
        "",
        f"listener {port} {_conf_value(host, 'host')}",
        "protocol mqtt",
        f"cafile {_conf_value(cafile, 'cafile')}",
        f"certfile {_conf_value(certfile, 'certfile')}",
        f"keyfile {_conf_value(keyfile, 'keyfile')}",
        f"tls_version {tls_version}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]
    if crlfile is not None:
        lines.append(f"crlfile {_conf_value(crlfile, 'crlfile')}")
    return "\n".join(lines) + "\n"


COMPOSE_BROKER_DIR: Final = "/mosquitto/roadside"


def render_compose_config() -> str:
    """``compose/mosquitto/mosquitto.conf``: ``render_config`` with the container's paths.

    The CA's key stays out of the container: it gets the CA certificate, the
    broker's own certificate and key, and the hub's broker directory (ACL and
    CRL, rewritten by the hub and reloaded by the container's watcher).
    """
    return render_config(
        port=8883,
        host="0.0.0.0",  # noqa: S104 - the broker is the one service devices reach from outside
        cafile="/mosquitto/pki/ca.cert.pem",
        certfile="/mosquitto/pki/broker.cert.pem",
        keyfile="/mosquitto/pki/broker.key.pem",
        acl_file=f"{COMPOSE_BROKER_DIR}/{ACL_FILE}",
        crlfile=f"{COMPOSE_BROKER_DIR}/{CRL_FILE}",
        persistence_dir="/mosquitto/data",
    )


def _conf_value(value: Path | str, what: str) -> str:
    text = str(value)
    # One setting per line: a line break would let a value smuggle in a second setting.
    if not text or text != text.strip() or any(c in text for c in "\r\n\0"):
        raise ConfigError(f"{what} {text!r} is empty or has surrounding blanks or line breaks")
    return text


# -- the broker directory: ACL, hub identities, the running process --------------


@contextlib.contextmanager
def acl_lock(directory: Path) -> Iterator[None]:
    """Hold the broker directory's lock: ACL writers (hub processes, the CLI) take turns.

    Without it two processes adding hub identities or devices at once could each
    write an ACL that lacks the other's change.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_hub_identities(directory: Path) -> list[str]:
    """The hub processes' identities (certificate CNs) the ACL grants hub rights: ``hub`` and those added."""
    path = directory / HUB_IDENTITIES_FILE
    names = path.read_text().split() if path.is_file() else []
    return sorted({HUB_IDENTITY, *(check_hub_identity(name) for name in names)})


def add_hub_identity(directory: Path, name: str) -> bool:
    """Record ``name`` as a hub identity (hold ``acl_lock``); False if it was there already."""
    check_hub_identity(name)
    known = read_hub_identities(directory)
    if name in known:
        return False
    write_public(directory / HUB_IDENTITIES_FILE, "".join(f"{n}\n" for n in sorted({*known, name})).encode())
    return True


def read_signal_controllers(directory: Path) -> dict[str, list[str]]:
    """Signal controllers' identities and the signals whose calls each may read (``<user> <signal>...`` lines)."""
    path = directory / SIGNAL_CONTROLLERS_FILE
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            user, *signals = line.split()
            found[check_name(user, "controller user")] = sorted({check_name(x, "signal id") for x in signals})
    return found


def set_signal_controller(directory: Path, user: str, signals: Iterable[str]) -> None:
    """Let ``user`` (a controller's certificate name) read these signals' calls; none: remove it (hold ``acl_lock``)."""
    known = read_signal_controllers(directory)
    wanted = sorted({check_name(x, "signal id") for x in signals})
    if wanted:
        known[check_name(user, "controller user")] = wanted
    else:
        known.pop(user, None)
    text = "".join(f"{name} {' '.join(known[name])}\n" for name in sorted(known))
    write_public(directory / SIGNAL_CONTROLLERS_FILE, text.encode())


def write_acl_file(
    directory: Path,
    devices: Iterable[AclDevice],
    extra_hubs: Iterable[str] = (),
    revoked: Iterable[str] = (),
) -> Path:
    """Render the ACL (``render_acl``) with the directory's hub identities into ``directory`` (hold ``acl_lock``).

    World-readable, so that a broker running as another user (a container) can read it;
    atomic, because the broker may re-read it at any moment.
    """
    hubs = [*read_hub_identities(directory), *extra_hubs]
    text = render_acl(devices, hubs, read_signal_controllers(directory), revoked)
    path = directory / ACL_FILE
    write_public(path, text.encode())
    return path


@dataclass(frozen=True, slots=True)
class RunningBroker:
    """A Mosquitto that ``MosquittoBroker`` started in a directory, as its state file tells."""

    pid: int
    host: str
    port: int
    config_file: Path


def running_broker(directory: Path) -> RunningBroker | None:
    """The broker ``MosquittoBroker`` runs from ``directory``, or None (none, or it has exited).

    The process must still be the ``mosquitto -c <that config>`` it started, so that a
    stale state file never leads to signalling a process that reused the pid.
    """
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        found = RunningBroker(
            int(state["pid"]), str(state["host"]), int(state["port"]), Path(state["config"])
        )
        command = Path(f"/proc/{found.pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if str(found.config_file).encode() in command else None


def reload_running(directory: Path, timeout_s: float = 5.0) -> bool:
    """SIGHUP the broker running from ``directory`` and wait until it has reloaded.

    Mosquitto then re-reads its ACL file and its CRL. False when no broker runs
    from there; TransportError when it does not confirm the reload in time.
    """
    broker = running_broker(directory)
    if broker is None:
        return False
    _signal_reload(broker.pid, directory / LOG_FILE, timeout_s)
    log.info("mosquitto pid %d reloaded its ACL and CRL", broker.pid)
    return True


def _signal_reload(pid: int, log_file: Path, timeout_s: float) -> None:
    # Mosquitto logs the mark and then re-reads its files, so once the mark is in the
    # log, any packet it reads afterwards meets the files as they were when we signalled.
    # It clears its reload flag only after the reload: a SIGHUP that lands during one is
    # lost (seen with 2.0.11, two reloads in a row). So signal again until a mark comes.
    deadline = time.monotonic() + timeout_s
    while True:
        offset = _file_size(log_file)
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise TransportError(f"could not signal mosquitto pid {pid} to reload: {exc}") from exc
        resend_at = min(deadline, time.monotonic() + _RESEND_AFTER_S)
        while time.monotonic() < resend_at:
            if _logged_since(log_file, offset, _RELOAD_MARK):
                return
            time.sleep(0.01)
        if time.monotonic() >= deadline:
            raise TransportError(f"mosquitto pid {pid} did not reload within {timeout_s} s; see {log_file}")


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _logged_since(log_file: Path, offset: int, mark: re.Pattern[str]) -> bool:
    """Whether Mosquitto logged ``mark`` after byte ``offset`` of ``log_file``."""
    if not log_file.is_file():
        return False
    with log_file.open("rb") as log_handle:
        # A log rotated under us is shorter than the offset: read it all.
        log_handle.seek(offset if offset <= _file_size(log_file) else 0)
        return mark.search(log_handle.read().decode(errors="replace")) is not None


# -- ending a session -------------------------------------------------------------


def connect_packet(client_id: str, keepalive_s: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials (the certificate is the credential)."""
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive_s.to_bytes(2, "big") + len(ident).to_bytes(2, "big") + ident
    return b"\x10" + _remaining_length(len(body)) + body


def _remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


_CONNACK_ACCEPTED: Final = b"\x20\x02\x00\x00"
_DISCONNECT: Final = b"\xe0\x00"


def take_over_session(
    host: str, port: int, *, ca_file: Path, cert_file: Path, key_file: Path, timeout_s: float = 5.0
) -> None:
    """Connect with a certificate and disconnect at once, ending the session of its CN.

    The broker binds client ids to the CN, so this connection takes the client id of
    whoever holds that CN and Mosquitto closes their connection. The hub does this
    with a throw-away certificate for a revoked device, whose reconnection the
    reloaded CRL then refuses at TLS. TransportError if the broker does not accept it.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(connect_packet("roadside-revocation"))
            answer = _read_exactly(tls, len(_CONNACK_ACCEPTED))
            if answer != _CONNACK_ACCEPTED:
                raise TransportError(f"broker {host}:{port} refused the session takeover: {answer.hex()}")
            tls.sendall(_DISCONNECT)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"could not reach broker {host}:{port} to end a session: {exc}") from exc


def _read_exactly(stream: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- process wrapper ----------------------------------------------------------


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` executable; ConfigError saying how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_FALLBACK_EXECUTABLE, os.X_OK):
        return _FALLBACK_EXECUTABLE
    raise ConfigError("mosquitto not found on PATH or in /usr/sbin: apt-get install mosquitto")


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel just handed out on ``host``; free unless someone races us."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class MosquittoBroker:
    """A Mosquitto process with mutual TLS and Roadside ACLs, in its own directory.

    Use as a context manager: the process is stopped on exit, and on any
    failure while starting, so no broker outlives its owner. ``stop()`` then
    ``start()`` restarts it on the same port with the same persistent state,
    which is how tests take the broker down and bring it back.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ca_cert_pem: bytes,
        server: IssuedCert,
        devices: Iterable[AclDevice] = (),
        revoked: Iterable[str] = (),
        hub_user: str = "hub",
        host: str = "127.0.0.1",
        port: int | None = None,
        crl_pem: bytes | None = None,
        executable: str | None = None,
        start_timeout_s: float = 10.0,
        max_packet_size: int = 262144,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self._port = port
        self._ca_cert_pem = ca_cert_pem
        self._server = server
        self._devices = list(devices)
        self._revoked = list(revoked)
        self._hub_user = hub_user
        self._crl_pem = crl_pem
        self._executable = executable
        self._start_timeout_s = start_timeout_s
        self._max_packet_size = max_packet_size
        self._process: subprocess.Popen[bytes] | None = None
        render_acl(self._devices, [hub_user], revoked=self._revoked)  # fail now, not in the broker

    @classmethod
    def for_ca(
        cls,
        workdir: Path,
        ca: CertificateAuthority,
        devices: Iterable[AclDevice] = (),
        *,
        hub_user: str = "hub",
        use_crl: bool = True,
    ) -> MosquittoBroker:
        """A broker with a fresh server certificate from ``ca`` for localhost and 127.0.0.1, and its CRL."""
        server = ca.issue_server("roadside-broker", hostnames=["localhost"], ips=["127.0.0.1"])
        return cls(
            workdir,
            ca_cert_pem=ca.cert_pem,
            server=server,
            devices=devices,
            hub_user=hub_user,
            crl_pem=ca.crl_pem() if use_crl else None,
        )

    # -- paths and state --

    @property
    def port(self) -> int:
        if self._port is None:
            raise ConfigError("the broker has no port until it is started")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients should trust to verify this broker."""
        return self.workdir / "ca.cert.pem"

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def acl_file(self) -> Path:
        return self.workdir / ACL_FILE

    @property
    def crl_file(self) -> Path:
        return self.workdir / CRL_FILE

    @property
    def log_file(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def state_file(self) -> Path:
        """Where the running process is recorded, for ``running_broker`` and ``reload_running``."""
        return self.workdir / STATE_FILE

    @property
    def _stderr_file(self) -> Path:
        return self.workdir / "mosquitto.stderr"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines Mosquitto logged (its log file, then its stderr)."""
        chunks = []
        for path in (self.log_file, self._stderr_file):
            if path.is_file():
                chunks += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(chunks)

    # -- lifecycle --

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the files and start Mosquitto; return once its TLS port accepts connections."""
        if self.running:
            return
        executable = self._executable or find_mosquitto()
        self._write_files()
        # A port picked here can be taken by someone else before Mosquitto binds
        # it; only a port we picked ourselves is worth picking again.
        attempts = 3 if self._port is None else 1
        for attempt in range(1, attempts + 1):
            if self._port is None or attempt > 1:
                self._port = free_loopback_port(self.host)
            self._write_config()
            log_offset = self._log_size()
            try:
                self._launch(executable)
                return
            except ConfigError:
                if attempt == attempts or not self._logged_since(log_offset, _PORT_TAKEN_MARK):
                    raise
                log.warning("port %d was taken before mosquitto bound it; picking another", self.port)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM Mosquitto (it saves its state) and wait; SIGKILL if it does not exit."""
        process, self._process = self._process, None
        _LIVE.discard(self)
        self.state_file.unlink(missing_ok=True)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto pid %d ignored SIGTERM for %.0f s; killing it", process.pid, timeout_s)
                process.kill()
                process.wait()
        log.info("mosquitto pid %d stopped (exit %s)", process.pid, process.returncode)

    def kill(self) -> None:
        """SIGKILL Mosquitto, as a crash would: state since the last autosave is lost."""
        process, self._process = self._process, None
        _LIVE.discard(self)
        self.state_file.unlink(missing_ok=True)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def reload_acl(
        self, devices: Iterable[AclDevice], timeout_s: float = 5.0, *, revoked: Iterable[str] = ()
    ) -> None:
        """Replace the device and revoked lists, rewrite the ACL file and make Mosquitto reload it.

        Returns once Mosquitto has reloaded. Connected clients keep their
        connection, but each later publish and delivery is checked against
        the new rules (Mosquitto checks ACLs per message, not per session).
        A newly enrolled device needs none of this (the ACL's patterns cover
        it); a revoked one does, and the reload costs every offline
        certificate-named session what the broker queued for it.
        """
        self._devices = list(devices)
        self._revoked = list(revoked)
        self._write_acl()
        self._reload(timeout_s)
        log.info("mosquitto reloaded its ACL: %d devices", len(self._devices))

    def reload_crl(self, crl_pem: bytes, timeout_s: float = 5.0) -> None:
        """Install a new CRL and make Mosquitto reload it; later handshakes check it.

        The broker must have been made with a CRL (``crl_pem`` or ``use_crl``):
        adding the ``crlfile`` setting needs a restart. A client already
        connected with a revoked certificate stays connected and may still
        publish (checked with Mosquitto 2.0.11): also deny the device in the
        ACL (``reload_acl(revoked=...)``) to cut it off at once.
        """
        if self._crl_pem is None:
            raise ConfigError("this broker was started without a CRL; create it with crl_pem=...")
        self._crl_pem = crl_pem
        write_public(self.crl_file, crl_pem)
        self._reload(timeout_s)
        log.info("mosquitto reloaded its CRL")

    def _reload(self, timeout_s: float) -> None:
        # SIGHUP makes Mosquitto re-read its config, ACL file, TLS files and CRL.
        if not self.running or self._process is None:
            return
        try:
            _signal_reload(self._process.pid, self.log_file, timeout_s)
        except TransportError as exc:
            raise TransportError(f"{exc}:\n{self.log_tail()}") from exc

    # -- internals --

    def _write_files(self) -> None:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(mode=0o700, exist_ok=True)
        write_public(self.ca_file, self._ca_cert_pem)
        write_public(self.workdir / "server.cert.pem", self._server.cert_pem)
        write_private(self.workdir / "server.key.pem", self._server.key_pem)
        self._write_acl()
        if self._crl_pem is not None:
            write_public(self.crl_file, self._crl_pem)

    def _write_acl(self) -> None:
        # Hub identities others added to this directory (a hub process with its own
        # certificate) stay in the ACL whatever device list this broker was given.
        with acl_lock(self.workdir):
            write_acl_file(self.workdir, self._devices, [self._hub_user], self._revoked)

    def _write_config(self) -> None:
        text = render_config(
            port=self.port,
            host=self.host,
            cafile=self.ca_file,
            certfile=self.workdir / "server.cert.pem",
            keyfile=self.workdir / "server.key.pem",
            acl_file=self.acl_file,
            persistence_dir=self.workdir / "data",
            log_file=self.log_file,
            crlfile=self.crl_file if self._crl_pem is not None else None,
            max_packet_size=self._max_packet_size,
            # Started as root, Mosquitto would switch to user "mosquitto", which
            # cannot read our 0600 key or write our directory; keep our own identity.
            run_as_user=pwd.getpwuid(os.geteuid()).pw_name,
        )
        write_public(self.config_file, text.encode())

    def _launch(self, executable: str) -> None:
        log_offset = self._log_size()
        with self._stderr_file.open("wb") as stderr:
            self._process = subprocess.Popen(
                [executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.workdir,
                # Its own session: a Ctrl-C in the terminal reaches only us, and the
                # owner stops the broker last, after the clients that use it.
                start_new_session=True,
            )
        raise_open_files(self._process.pid)  # a file per connected device (cloud.broker.limits)
        try:
            self._wait_ready(log_offset)
        except BaseException:
            self.stop()
            raise
        _LIVE.add(self)
        state = {
            "pid": self._process.pid,
            "host": self.host,
            "port": self.port,
            "config": str(self.config_file),
        }
        write_public(self.state_file, json.dumps(state).encode())
        log.info("mosquitto pid %d listening on %s:%d", self._process.pid, self.host, self.port)

    def _wait_ready(self, log_offset: int) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                raise ConfigError(f"mosquitto exited during start (code {code}):\n{self.log_tail()}")
            if self._logged_since(log_offset, _RUNNING_MARK) and self._accepts_connections():
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} "
                    f"within {self._start_timeout_s} s:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_size(self) -> int:
        return _file_size(self.log_file)

    def _logged_since(self, offset: int, mark: re.Pattern[str]) -> bool:
        return _logged_since(self.log_file, offset, mark)


# Brokers started and not yet stopped. Owners stop theirs (context manager);
# this is the safety net for an interpreter that exits without doing so.
# A process killed outright (SIGKILL, os._exit) still leaves its broker behind.
_LIVE: weakref.WeakSet[MosquittoBroker] = weakref.WeakSet()


@atexit.register
def _stop_live_brokers() -> None:
    for broker in list(_LIVE):
        broker.stop()
