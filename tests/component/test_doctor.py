"""``roadside agent doctor`` against a real Mosquitto: a good bundle passes, bad ones say what to fix."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from roadside.cloud.broker.mosquitto import free_loopback_port
from roadside.cloud.broker.pki import CertificateAuthority
from roadside.edge.cli import app
from roadside.edge.doctor import CheckResult, Status, check_clock, render, run_checks
from roadside.edge.settings import AgentSettings, load_agent_settings
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, write_bundle
from roadside.shared.keys import KeyPair
from tests.component.conftest import BrokerHarness

pytestmark = pytest.mark.timeout(30)


def make_bundle(
    broker: BrokerHarness,
    site: str,
    *,
    port: int | None = None,
    ca_pem: bytes | None = None,
    issuer: CertificateAuthority | None = None,
) -> EnrollmentBundle:
    issued = broker.issued("dev-a", issuer)
    return EnrollmentBundle(
        device_id="dev-a",
        site=site,
        broker=BrokerAddress(host="127.0.0.1", port=port or broker.port),
        ca_cert_pem=(ca_pem or broker.broker.ca_file.read_bytes()).decode(),
        client_cert_pem=issued.cert_pem.decode(),
        client_key_pem=issued.key_pem.decode(),
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )


def settings_for(tmp_path: Path, bundle: EnrollmentBundle) -> AgentSettings:
    path = tmp_path / "bundle.json"
    write_bundle(bundle, path)
    return load_agent_settings(
        None,
        bundle=path,
        sources=[{"type": "synthetic", "name": "cam0", "width": 160, "height": 120, "fps": 20}],
        outbox={"path": str(tmp_path / "state" / "outbox.db"), "max_bytes": 8 * 1024 * 1024},
    )


def by_check(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check: r for r in results}


def printed(results: list[CheckResult]) -> tuple[bool, str]:
    out = io.StringIO()
    ok = render(results, Console(file=out, width=160, color_system=None))
    return ok, out.getvalue()


@pytest.fixture
def hub_api() -> Iterator[str]:
    """A stand-in for the hub API: any HTTP server stamps a Date header on its answers."""

    class Quiet(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_good_setup_passes(broker: BrokerHarness, site: str, tmp_path: Path, hub_api: str) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site))
    results = run_checks(settings, hub_api_url=hub_api)
    checks = by_check(results)
    ok, text = printed(results)
    assert ok, text
    for name in (
        "bundle",
        "client certificate",
        "broker TCP",
        "broker TLS + MQTT",
        "clock",
        "camera cam0",
        "disk",
    ):
        assert checks[name].status is Status.OK, (name, text)
    assert "client certificate accepted, MQTT 5 CONNACK success" in checks["broker TLS + MQTT"].detail
    assert "the hub (its API's Date header" in checks["clock"].detail
    assert checks["uplink"].status is Status.INFO  # no agent ran here: nothing to read
    assert checks["provider CPU"].status is Status.OK
    assert "the agent runs on this" in checks["provider CPU"].detail
    assert "all checks passed" in text


def test_without_a_hub_url_the_clock_is_not_measured_and_says_so(
    broker: BrokerHarness, site: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site))
    clock = by_check(run_checks(settings, providers=False))["clock"]
    assert clock.status is Status.WARN
    assert clock.detail.startswith("not measured (TLS and MQTT carry no time)")
    assert "hub_api_url" in clock.fix


def test_a_skewed_clock_fails_with_the_hub_limits(hub_api: str) -> None:
    result = check_clock(hub_api, None, now=lambda: time.time() + 300)
    assert result.status is Status.FAIL
    # The Date header is whole seconds, and the request takes some: 300 s, give or take one.
    ahead = re.match(r"([0-9.]+) s ahead of the hub", result.detail)
    assert ahead is not None, result.detail
    assert 299.0 <= float(ahead.group(1)) <= 301.5, result.detail
    assert "timedatectl set-ntp true" in result.fix


def test_a_bundle_from_another_ca_fails_tls_with_a_fix(
    broker: BrokerHarness, site: str, tmp_path: Path, foreign_ca: CertificateAuthority
) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site, ca_pem=foreign_ca.cert_pem))
    results = run_checks(settings, providers=False)
    tls = by_check(results)["broker TLS + MQTT"]
    assert tls.status is Status.FAIL
    assert "not signed by the bundle's CA" in tls.detail
    assert "re-enroll against the hub that runs this broker" in tls.fix
    ok, text = printed(results)
    assert not ok
    assert "check(s) failed: broker TLS + MQTT" in text


def test_a_client_certificate_the_broker_does_not_trust_is_reported(
    broker: BrokerHarness, site: str, tmp_path: Path, foreign_ca: CertificateAuthority
) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site, issuer=foreign_ca))
    tls = by_check(run_checks(settings, providers=False))["broker TLS + MQTT"]
    assert tls.status is Status.FAIL
    assert "refused this device's client certificate" in tls.detail or "closed the connection" in tls.detail
    assert "re-enroll" in tls.fix


def test_an_unreachable_broker_port_fails_clearly(broker: BrokerHarness, site: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site, port=free_loopback_port()))
    checks = by_check(run_checks(settings, providers=False))
    tcp = checks["broker TCP"]
    assert tcp.status is Status.FAIL
    assert "Connection refused" in tcp.detail
    assert "check the broker runs and the bundle's broker address and port" in tcp.fix
    assert "broker TLS + MQTT" not in checks  # nothing to shake hands with


def test_a_camera_that_does_not_open_and_a_disk_budget_too_big(
    broker: BrokerHarness, site: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, make_bundle(broker, site)).model_copy(
        update={
            "sources": load_agent_settings(
                None, sources=[{"type": "video", "name": "gate", "uri": str(tmp_path / "missing.mp4")}]
            ).sources,
            "outbox": load_agent_settings(
                None, outbox={"path": str(tmp_path / "outbox.db"), "max_bytes": 2**62}
            ).outbox,
        }
    )
    checks = by_check(run_checks(settings, providers=False, camera_timeout_s=10))
    assert checks["camera gate"].status is Status.FAIL
    assert "cannot open video source 'gate'" in checks["camera gate"].detail
    assert checks["disk"].status is Status.FAIL
    assert "lower outbox.max_bytes" in checks["disk"].fix


def test_the_cli_exits_non_zero_when_a_check_fails(broker: BrokerHarness, site: str, tmp_path: Path) -> None:
    bundle_path = tmp_path / "bundle.json"
    write_bundle(make_bundle(broker, site, port=free_loopback_port()), bundle_path)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'bundle = "{bundle_path}"\nsources = []\n[outbox]\npath = "{tmp_path / "outbox.db"}"\nmax_bytes = 1048576\n'
    )
    result = CliRunner().invoke(
        app, ["doctor", "--config", str(config), "--skip-providers", "--timeout", "2"]
    )
    assert result.exit_code == 1, result.output
    assert "broker TCP" in result.output
    assert "check(s) failed" in result.output
