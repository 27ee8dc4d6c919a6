"""``roadside agent doctor``: check everything the agent needs, and say what to fix.

Each check returns a :class:`CheckResult` with a verdict, what was seen,
and, when it is not a pass, the fix in the installer's terms. The checks
really connect: a TCP connect and a TLS handshake with the bundle's client
certificate and an MQTT CONNECT to the broker, a frame from each camera, a
session of the model on each execution provider.

Clock skew: TLS 1.3 and MQTT carry no clock, and the TLS 1.2 hello's time
field is random in current OpenSSL, so the broker cannot be asked the time.
With ``hub_api_url`` (or ``--hub-url``) the skew is measured against the
hub API's HTTP ``Date`` header (±1 s); without it the doctor can only check
that the local clock falls inside the broker certificate's validity, and
says so.
"""

from __future__ import annotations

import enum
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from cryptography import x509
from rich.console import Console
from rich.table import Table

from roadside.edge.control.redaction import redact
from roadside.edge.settings import AgentSettings, OutboxConfig, SourceConfig
from roadside.edge.transport.delivery import LinkState, read_status, uplink_status_path
from roadside.shared.bundle import EnrollmentBundle, read_bundle
from roadside.shared.errors import ConfigError, RoadsideError

KNOWN_PROVIDERS: Final = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# The hub refuses uplink stamped more than 120 s ahead of it and commands older than 900 s.
SKEW_WARN_S: Final = 5.0
SKEW_FAIL_S: Final = 60.0
CERT_WARN_DAYS: Final = 30


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    status: Status
    detail: str
    fix: str = ""


# The bundle -----------------------------------------------------------------------------


def check_bundle(
    path: Path, now: datetime | None = None
) -> tuple[list[CheckResult], EnrollmentBundle | None]:
    """The bundle parses, its keys load, and its client certificate is valid now."""
    try:
        bundle = read_bundle(path)
    except ConfigError as exc:
        fix = (
            "run the doctor as the service user (sudo -u roadside ...), or fix the file's owner"
            if "Permission denied" in str(exc)
            else "copy the bundle from `roadside device enroll` again and re-run `roadside agent install`"
        )
        return [CheckResult("bundle", Status.FAIL, str(exc), fix)], None
    results = [CheckResult("bundle", Status.OK, f"{path}: device {bundle.device_id} at site {bundle.site}")]
    results.append(_client_cert(bundle, now or datetime.now(UTC)))
    return results, bundle


def _client_cert(bundle: EnrollmentBundle, now: datetime) -> CheckResult:
    try:
        cert = x509.load_pem_x509_certificate(bundle.client_cert_pem.encode())
    except ValueError as exc:
        return CheckResult("client certificate", Status.FAIL, f"unreadable: {exc}", "re-enroll the device")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return CheckResult(
            "client certificate",
            Status.FAIL,
            f"not valid until {start:%Y-%m-%d %H:%M} UTC, and this clock says {now:%Y-%m-%d %H:%M} UTC",
            "the clock is behind: enable NTP (timedatectl set-ntp true) or set the time",
        )
    if now > end:
        return CheckResult(
            "client certificate",
            Status.FAIL,
            f"expired on {end:%Y-%m-%d}",
            "re-enroll the device (roadside device enroll) for a new bundle",
        )
    days = (end - now).days
    status = Status.WARN if days < CERT_WARN_DAYS else Status.OK
    fix = "re-enroll the device before it expires" if status is Status.WARN else ""
    return CheckResult("client certificate", status, f"valid until {end:%Y-%m-%d} ({days} days)", fix)


# The broker ----------------------------------------------------------------------------


def check_broker_tcp(host: str, port: int, timeout_s: float = 5.0) -> CheckResult:
    name = "broker TCP"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot resolve {host}: {exc.strerror}",
            "check DNS on this box (resolvectl status)",
        )
    except TimeoutError:
        return CheckResult(
            name,
            Status.FAIL,
            f"no answer from {host}:{port} within {timeout_s:g} s",
            "a firewall drops the traffic, or the address is wrong: allow outbound TCP to this port",
        )
    except OSError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot connect to {host}:{port}: {exc.strerror or exc}",
            "nothing listens there: check the broker runs and the bundle's broker address and port",
        )
    return CheckResult(name, Status.OK, f"{host}:{port} accepts connections")


@dataclass(frozen=True, slots=True)
class BrokerSession:
    """What a successful handshake showed."""

    tls_version: str
    not_before: datetime
    not_after: datetime


_CONNACK_REASONS: Final = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
}


def mqtt_connect_packet(client_id: str, keepalive_s: int = 10) -> bytes:
    """An MQTT 5 CONNECT with a clean start and no will, user name or properties."""
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x05\x02" + struct.pack(">H", keepalive_s) + b"\x00"
    payload = struct.pack(">H", len(ident)) + ident
    return b"\x10" + _varint(len(variable) + len(payload)) + variable + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_connack(data: bytes) -> int:
    """The CONNACK's reason code; ``ValueError`` if ``data`` is not a CONNACK."""
    if len(data) < 4 or data[0] != 0x20:
        raise ValueError("not a CONNACK")
    i = 1
    while data[i] & 0x80:
        i += 1
    return data[i + 2]


def check_broker_tls(
    bundle: EnrollmentBundle, timeout_s: float = 5.0
) -> tuple[CheckResult, BrokerSession | None]:
    """TLS with the bundle's CA and client certificate, then an MQTT CONNECT, as the agent does."""
    name = "broker TLS + MQTT"
    host, port = bundle.broker.host, bundle.broker.port
    session: BrokerSession | None = None
    with tempfile.TemporaryDirectory(prefix="roadside-doctor-") as private:
        try:
            context = _client_context(bundle, Path(private))  # the key's copy is gone once loaded
        except (ssl.SSLError, ValueError) as exc:
            return CheckResult(
                name, Status.FAIL, f"the bundle's certificates do not load: {exc}", "re-enroll"
            ), None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            session = _session_of(tls)
            tls.sendall(mqtt_connect_packet(f"{bundle.device_id}-doctor"))
            reply = tls.recv(64)
            if reply:
                tls.sendall(b"\xe0\x00")  # DISCONNECT, normal: no will
    except ssl.SSLCertVerificationError as exc:
        return _verification_failure(name, host, exc), None
    except (ssl.SSLError, ConnectionResetError) as exc:
        # With TLS 1.3 the broker checks our certificate after the handshake
        # completed on our side: a refusal arrives as an alert or a bare close.
        return _refused_by_broker(name, exc, after_handshake=session is not None), None
    except OSError as exc:
        return CheckResult(
            name, Status.FAIL, f"connection to {host}:{port} failed: {exc}", "see broker TCP above"
        ), None
    return _connack_verdict(name, reply, session), session


def _client_context(bundle: EnrollmentBundle, private: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=bundle.ca_cert_pem)
    cert, key = private / "client.crt", private / "client.key"
    cert.write_text(bundle.client_cert_pem)
    key.touch(mode=0o600)
    key.write_text(bundle.client_key_pem)
    try:
        context.load_cert_chain(cert, key)
    finally:
        key.unlink()
    return context


def _session_of(tls: ssl.SSLSocket) -> BrokerSession:
    peer: dict[str, Any] = tls.getpeercert() or {}

    def when(field: str) -> datetime:
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(peer[field]), UTC)

    return BrokerSession(tls.version() or "?", when("notBefore"), when("notAfter"))


def _verification_failure(name: str, host: str, exc: ssl.SSLCertVerificationError) -> CheckResult:
    message = exc.verify_message or str(exc)
    code = exc.verify_code
    if code in (9, 10):  # not yet valid, expired: usually this box's clock
        return CheckResult(
            name,
            Status.FAIL,
            f"the broker's certificate is {message}",
            "check this box's clock (timedatectl; enable NTP); if the clock is right, renew the broker's certificate",
        )
    if code == 62 or "mismatch" in message.lower():
        return CheckResult(
            name,
            Status.FAIL,
            f"the broker's certificate does not name {host!r}: {message}",
            "use the broker address its certificate was issued for (re-enroll with that address), "
            "or re-issue the broker certificate with this name",
        )
    return CheckResult(
        name,
        Status.FAIL,
        f"the broker's certificate is not signed by the bundle's CA: {message}",
        "this address is not this fleet's broker, or the bundle is from another hub: "
        "check the broker address, or re-enroll against the hub that runs this broker",
    )


def _refused_by_broker(name: str, exc: OSError, after_handshake: bool) -> CheckResult:
    reason = str(getattr(exc, "reason", None) or exc)
    if after_handshake or "alert" in reason.lower():
        return CheckResult(
            name,
            Status.FAIL,
            f"the broker refused this device's client certificate ({reason})",
            "the device was revoked or the bundle is from another CA: re-enroll the device on the hub",
        )
    return CheckResult(
        name, Status.FAIL, f"TLS failed: {reason}", "check the broker's TLS listener and versions"
    )


def _connack_verdict(name: str, reply: bytes, session: BrokerSession) -> CheckResult:
    if not reply:
        return CheckResult(
            name,
            Status.FAIL,
            "the broker closed the connection after the TLS handshake (client certificate refused?)",
            "the device may be revoked: check the hub (roadside device list) and re-enroll",
        )
    try:
        code = parse_connack(reply)
    except (ValueError, IndexError):
        return CheckResult(name, Status.FAIL, "the port does not speak MQTT", "check the broker port")
    if code != 0:
        text = _CONNACK_REASONS.get(code, f"reason {code:#x}")
        return CheckResult(
            name,
            Status.FAIL,
            f"the broker refused the MQTT connection: {text}",
            "the device is not in the broker's ACL: on the hub, check the device is enrolled and active",
        )
    return CheckResult(
        name, Status.OK, f"{session.tls_version}, client certificate accepted, MQTT 5 CONNACK success"
    )


# The clock ---------------------------------------------------------------------------------


def check_clock(
    hub_api_url: str | None,
    session: BrokerSession | None,
    bundle: EnrollmentBundle | None = None,
    timeout_s: float = 5.0,
    now: Callable[[], float] = time.time,
) -> CheckResult:
    """Skew against the hub API's ``Date`` header; else only the broker certificate's bounds."""
    name = "clock"
    if hub_api_url:
        try:
            skew = measure_skew(hub_api_url, bundle, timeout_s, now)
        except RoadsideError as exc:
            return CheckResult(
                name, Status.FAIL, str(exc), "check hub_api_url and that the hub API is reachable"
            )
        return _skew_verdict(skew)
    if session is None:
        return CheckResult(
            name, Status.WARN, "not measured: no hub_api_url and no broker handshake", "set hub_api_url"
        )
    local = datetime.fromtimestamp(now(), UTC)
    if local < session.not_before:
        return CheckResult(
            name,
            Status.FAIL,
            f"this clock ({local:%Y-%m-%d %H:%M} UTC) is before the broker certificate was issued",
            "the clock is behind: enable NTP (timedatectl set-ntp true)",
        )
    return CheckResult(
        name,
        Status.WARN,
        "not measured (TLS and MQTT carry no time); only bounded by the broker certificate: "
        f"issued {session.not_before:%Y-%m-%d}, this clock says {local:%Y-%m-%d %H:%M} UTC",
        "set hub_api_url in the config (or --hub-url) to measure against the hub API's Date header",
    )


def measure_skew(
    url: str, bundle: EnrollmentBundle | None, timeout_s: float, now: Callable[[], float] = time.time
) -> float:
    """Seconds this clock is ahead of the hub (negative: behind), from the ``Date`` of ``<url>/healthz``."""
    target = url.rstrip("/") + "/healthz"
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"hub_api_url {url!r} must start with http:// or https://")
    context = ssl.create_default_context()
    if bundle is not None:
        context.load_verify_locations(cadata=bundle.ca_cert_pem)  # a hub behind the fleet's own CA
    sent = now()
    try:
        with urllib.request.urlopen(target, timeout=timeout_s, context=context) as response:  # noqa: S310 - scheme checked above
            date = response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        date = exc.headers.get("Date")  # any status carries the server's time
    except (urllib.error.URLError, OSError) as exc:
        raise RoadsideError(f"cannot reach the hub API at {target}: {exc}") from exc
    received = now()
    if date is None:
        raise RoadsideError(f"{target} sent no Date header")
    hub = parsedate_to_datetime(date).timestamp()
    return (sent + received) / 2 - hub


def _skew_verdict(skew: float) -> CheckResult:
    where = f"{abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the hub (its API's Date header, ±1 s)"
    if abs(skew) > SKEW_FAIL_S:
        return CheckResult(
            "clock",
            Status.FAIL,
            where,
            "the hub refuses messages stamped over 120 s ahead and commands over 900 s old: "
            "enable NTP (timedatectl set-ntp true) and check the hub's clock",
        )
    if abs(skew) > SKEW_WARN_S:
        return CheckResult("clock", Status.WARN, where, "enable NTP (timedatectl set-ntp true)")
    return CheckResult("clock", Status.OK, where)


# The running agent's uplink -----------------------------------------------------------------


def check_uplink(status_file: Path, now: datetime | None = None) -> CheckResult:
    """What the running agent last wrote about its link: publishing, refused, or not connected."""
    name = "uplink"
    status = read_status(status_file)
    if status is None:
        return CheckResult(name, Status.INFO, f"no agent has written {status_file} yet: not checked")
    since = f"since {status.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    ago = ((now or datetime.now(UTC)) - status.since).total_seconds()
    if status.state is LinkState.REFUSED:
        return CheckResult(
            name,
            Status.FAIL,
            f"the broker refuses this device's messages {since} ({ago:.0f} s, {status.refusals} refusals: "
            f"{status.reason or 'no reason given'}); they wait in the outbox",
            "the broker's ACL does not let this device publish: on the hub, check the device is enrolled "
            "and active (roadside device list), and that the broker reloaded its ACL since the enrollment",
        )
    if status.state is LinkState.CONNECTING:
        return CheckResult(
            name,
            Status.WARN,
            f"the agent is not connected to the broker {since} ({ago:.0f} s)",
            "see the broker checks above; if they pass, the agent may not be running",
        )
    refused = f"; {status.refused_total} messages refused since it started" if status.refused_total else ""
    return CheckResult(name, Status.OK, f"the agent publishes {since}{refused}")


# Cameras ----------------------------------------------------------------------------------


def check_source(config: SourceConfig, timeout_s: float = 10.0) -> CheckResult:
    """Open the source and wait for one frame."""
    from roadside.edge.sources import open_source  # OpenCV is imported only when a video source is checked

    name = f"camera {config.name}"
    got: list[str] = []
    errors: list[str] = []
    try:
        source = open_source(config)
    except ConfigError as exc:  # a source type this install lacks, e.g. synthetic without sim (ADR 0010)
        return CheckResult(
            name, Status.FAIL, str(exc), "install the package that provides it, or remove the camera"
        )

    def first_frame() -> None:
        try:
            for frame in source.frames():
                h, w = frame.image.shape[:2]
                got.append(f"{w}x{h}")
                return
            errors.append("the source ended without a frame")
        except RoadsideError as exc:
            errors.append(str(exc))

    reader = threading.Thread(target=first_frame, name=f"doctor-{config.name}", daemon=True)
    started = time.monotonic()
    reader.start()
    reader.join(timeout_s)
    source.close()
    where = redact(getattr(config, "uri", "synthetic scene"))
    if got:
        return CheckResult(
            name, Status.OK, f"{where}: first frame {got[0]} in {time.monotonic() - started:.1f} s"
        )
    fix = (
        "check the URI and credentials, that the camera answers on this network (ping it), "
        "and that its RTSP port (554) is not blocked"
    )
    if errors:
        return CheckResult(name, Status.FAIL, f"{where}: {redact(errors[0])}", fix)
    return CheckResult(name, Status.FAIL, f"{where}: no frame within {timeout_s:g} s", fix)


# Disk -------------------------------------------------------------------------------------


def check_disk(outbox: OutboxConfig) -> CheckResult:
    """The outbox's disk budget must fit in what is free where it lives."""
    name = "disk"
    directory = outbox.path.parent
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    usage = shutil.disk_usage(existing)
    held = sum(p.stat().st_size for p in directory.glob(f"{outbox.path.name}*") if p.is_file())
    room_needed = max(0, outbox.max_bytes - held)
    detail = (
        f"{_size(usage.free)} free on the disk of {existing}; the outbox holds {_size(held)} "
        f"and may grow to {_size(outbox.max_bytes)}"
    )
    if directory.exists() and not _writable(directory):
        return CheckResult(
            name, Status.FAIL, f"{directory} is not writable by this user", "chown it to the service user"
        )
    if usage.free < room_needed:
        return CheckResult(
            name,
            Status.FAIL,
            detail,
            f"lower outbox.max_bytes to at most {_size(int(usage.free * 0.8))}, or free space on this disk",
        )
    if usage.free < room_needed * 1.2:
        return CheckResult(name, Status.WARN, detail, "little margin left: lower outbox.max_bytes")
    return CheckResult(name, Status.OK, detail)


def _writable(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# Execution providers --------------------------------------------------------------------


def check_providers(settings: AgentSettings) -> list[CheckResult]:
    """Try the model on each provider: configured ones first, then the others onnxruntime knows."""
    from roadside.edge.inference.engine import OnnxDetector  # onnxruntime is loaded only for this check

    configured = list(dict.fromkeys(settings.model.providers))
    tried: dict[str, tuple[bool, str]] = {}
    for provider in dict.fromkeys([*configured, *KNOWN_PROVIDERS]):
        try:
            # The agent's own model settings (TensorRT engine cache included), one provider at a time.
            detector = OnnxDetector.from_config(settings.model.model_copy(update={"providers": [provider]}))
            started = time.perf_counter()
            h, w = detector.info.input_size
            detector.detect([np.zeros((h, w, 3), dtype=np.uint8)])
            ms = (time.perf_counter() - started) * 1000
        except ConfigError as exc:
            tried[provider] = (
                False,
                "not available in this onnxruntime build" if "available" in str(exc) else str(exc),
            )
            continue
        active = detector.info.active_provider
        if active != provider:
            tried[provider] = (False, f"asked for it, the session runs on {active} (silent fallback)")
        else:
            tried[provider] = (True, f"loads model {detector.info.version}, one frame in {ms:.0f} ms")
    return _provider_verdicts(configured, tried)


def _provider_verdicts(configured: list[str], tried: dict[str, tuple[bool, str]]) -> list[CheckResult]:
    working = [p for p in configured if tried.get(p, (False, ""))[0]]
    results = []
    for provider, (ok, detail) in tried.items():
        name = f"provider {provider.removesuffix('ExecutionProvider')}"
        if provider not in configured:
            hint = "works: add it to model.providers to use it" if ok else ""
            results.append(CheckResult(name, Status.INFO, f"not configured; {detail}", hint))
        elif ok:
            first = provider == working[0]
            status = Status.OK if first and provider == configured[0] else Status.INFO
            results.append(CheckResult(name, status, detail + (" — the agent runs on this" if first else "")))
        else:
            status = Status.WARN if working else Status.FAIL
            fix = (
                "install onnxruntime-gpu matching this CUDA/TensorRT, or drop it from model.providers"
                if "not available" in detail or "fallback" in detail
                else "check the model file (model.path) and the provider's libraries"
            )
            if working:
                fix += f"; until then the agent runs on {working[0]}"
            results.append(CheckResult(name, status, detail, fix))
    return results


# Running it all --------------------------------------------------------------------------


def run_checks(
    settings: AgentSettings,
    hub_api_url: str | None = None,
    timeout_s: float = 5.0,
    camera_timeout_s: float = 10.0,
    providers: bool = True,
) -> list[CheckResult]:
    """Every check, in the order an installer would fix them."""
    results, bundle = check_bundle(settings.bundle)
    session: BrokerSession | None = None
    if bundle is not None:
        tcp = check_broker_tcp(bundle.broker.host, bundle.broker.port, timeout_s)
        results.append(tcp)
        if tcp.status is Status.OK:
            tls, session = check_broker_tls(bundle, timeout_s)
            results.append(tls)
    results.append(check_uplink(uplink_status_path(settings.outbox.path)))
    results.append(check_clock(hub_api_url or settings.hub_api_url, session, bundle, timeout_s))
    if not settings.sources:
        results.append(
            CheckResult("cameras", Status.WARN, "no streams configured", "add [[sources]] or send add_stream")
        )
    results += [check_source(source, camera_timeout_s) for source in settings.sources]
    results.append(check_disk(settings.outbox))
    if providers:
        results += check_providers(settings)
    return results


_STYLE: Final = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.INFO: "cyan"}


def render(results: Iterable[CheckResult], console: Console) -> bool:
    """Print the table and a verdict line; True when nothing failed."""
    results = list(results)
    table = Table(title="roadside agent doctor", show_lines=False)
    for column in ("check", "result", "detail", "what to fix"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.check, f"[{_STYLE[r.status]}]{r.status.value}[/]", r.detail, r.fix)
    console.print(table)
    failed = [r.check for r in results if r.status is Status.FAIL]
    warned = [r.check for r in results if r.status is Status.WARN]
    if failed:
        console.print(f"[bold red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
    else:
        suffix = f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""
        console.print(f"[green]all checks passed[/]{suffix}")
    return not failed
