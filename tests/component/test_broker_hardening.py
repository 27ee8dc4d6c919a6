"""Issue 9, items 3, 4, 5, 12: session takeover, revocation at TLS, reserved names,
enrollment while the broker runs, against a real Mosquitto started from each
config the project ships: the one ``roadside broker run`` writes
(``MosquittoBroker`` in the hub's broker directory) and compose's
``compose/mosquitto/mosquitto.conf`` with its container paths mapped to a
temporary directory.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import typer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from typer.testing import CliRunner

from roadside.cloud.broker.mosquitto import (
    STATE_FILE,
    MosquittoBroker,
    find_mosquitto,
    free_loopback_port,
    running_broker,
)
from roadside.cloud.home import (
    HubHome,
    acl_devices,
    hub_identity,
    init_home,
    issue_enrollment,
    publish_crl,
    reload_broker,
    revoke_device,
    write_acl,
)
from roadside.cloud.registry import Registry
from roadside.shared import topics
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, read_bundle
from roadside.shared.errors import ConfigError

from .conftest import MqttTestClient

pytestmark = pytest.mark.timeout(30)

SITE = "main-st"
SUCCESS = 0
COMPOSE_CONF = Path(__file__).resolve().parents[2] / "compose" / "mosquitto" / "mosquitto.conf"


@dataclass
class Setup:
    home: HubHome
    registry: Registry
    host: str
    port: int
    reload: object  # a callable: make this broker re-read its ACL and CRL

    def enroll(self, device_id: str) -> EnrollmentBundle:
        """Enroll as the CLI and the API do: no broker reload (the ACL's patterns let it in)."""
        address = BrokerAddress(host="127.0.0.1", port=self.port)
        return issue_enrollment(self.home, self.registry, device_id, SITE, address)

    def client(
        self, cert: Path, key: Path, client_id: str, *, clean_start: bool = True, expiry_s: int = 0
    ) -> MqttTestClient:
        paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        paho.tls_set(ca_certs=str(self.home.ca_file), certfile=str(cert), keyfile=str(key))
        wrapped = MqttTestClient(paho, client_id)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = expiry_s
        try:
            paho.connect(self.host, self.port, keepalive=30, clean_start=clean_start, properties=properties)
        except OSError as exc:  # ssl.SSLError included: TLS 1.2 refusals surface here
            wrapped._fail(f"TLS: {exc}")
            return wrapped
        paho.loop_start()
        return wrapped

    def device(self, bundle: EnrollmentBundle, tmp: Path, client_id: str | None = None) -> MqttTestClient:
        directory = tmp / f"dev-{bundle.device_id}"
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_text(bundle.client_cert_pem)
        key.write_text(bundle.client_key_pem)
        return self.client(cert, key, client_id or bundle.device_id)


def _user_line() -> str:
    # Started as root, Mosquitto would switch to user "mosquitto", which cannot read our keys.
    return f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


@pytest.fixture(params=["broker-run", "compose"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    registry = Registry(home.registry_url)
    try:
        if request.param == "broker-run":
            yield from _broker_run(home, registry)
        else:
            yield from _compose(home, registry, tmp_path)
    finally:
        registry.close()


def _broker_run(home: HubHome, registry: Registry) -> Iterator[Setup]:
    # What `roadside broker run` starts (cloud.cli.broker_run).
    with MosquittoBroker(
        home.broker_dir,
        ca_cert_pem=home.ca_file.read_bytes(),
        server=home.broker_server_cert(),
        devices=acl_devices(registry),
        crl_pem=home.ca().crl_pem(),
    ) as broker:
        yield Setup(home, registry, broker.host, broker.port, lambda: reload_broker(home))


def _compose(home: HubHome, registry: Registry, tmp: Path) -> Iterator[Setup]:
    # The shipped compose config, its container paths mapped onto this machine the way
    # docker-compose.yml mounts them: pki files, the hub's broker directory, a data volume.
    port = free_loopback_port()
    pki = tmp / "mosquitto-pki"
    pki.mkdir()
    for name in ("ca.cert.pem", "broker.cert.pem", "broker.key.pem"):
        (pki / name).write_bytes((home.pki / name).read_bytes())
    (tmp / "mosquitto-data").mkdir()
    conf = COMPOSE_CONF.read_text()
    conf = conf.replace("/mosquitto/pki/", f"{pki}/").replace("/mosquitto/roadside/", f"{home.broker_dir}/")
    conf = conf.replace("/mosquitto/data/", f"{tmp / 'mosquitto-data'}/")
    conf = conf.replace("listener 8883 0.0.0.0", f"listener {port} 127.0.0.1")
    conf = (
        conf.replace("log_dest stderr", f"log_dest file {home.broker_dir / 'mosquitto.log'}") + _user_line()
    )
    config = tmp / "mosquitto.conf"
    config.write_text(conf)
    write_acl(home, registry)
    process = subprocess.Popen([find_mosquitto(), "-c", str(config)], stderr=subprocess.PIPE)
    # What the compose broker's watcher finds: this process, reloadable by SIGHUP.
    state = {"pid": process.pid, "host": "127.0.0.1", "port": port, "config": str(config)}
    (home.broker_dir / STATE_FILE).write_text(json.dumps(state))
    try:
        _wait_listening(home, port, process)
        yield Setup(home, registry, "127.0.0.1", port, lambda: reload_broker(home))
    finally:
        process.terminate()
        process.wait(10)


def _wait_listening(home: HubHome, port: int, process: subprocess.Popen[bytes]) -> None:
    log = home.broker_dir / "mosquitto.log"
    for _ in range(500):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if log.is_file() and " running" in log.read_text():
            return
        process_wait = 0.02
        try:
            process.wait(process_wait)
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError(f"mosquitto did not start on {port}")


# -- item 3: session takeover ------------------------------------------------------------


def test_a_device_cannot_take_over_the_hub_session(setup: Setup, tmp_path: Path) -> None:
    hub_files = hub_identity(setup.home, setup.registry, "hub")
    hub = setup.client(hub_files.cert, hub_files.key, "hub", clean_start=False, expiry_s=300)
    assert hub.wait_connected(), hub.failure
    assert hub.subscribe(topics.hub_subscription(setup.home.hub_group())) == 1
    device = setup.device(setup.enroll("pole-1"), tmp_path, client_id="hub")
    assert device.wait_connected(), device.failure
    # The device's "hub" became "pole-1" at the broker: the hub keeps its session and
    # still receives what the device publishes on its own topic.
    assert device.publish(topics.uplink(SITE, "pole-1", "counts"), b"1") == SUCCESS
    assert hub.next_message().payload == b"1"
    assert not hub.failed.is_set()


def test_hub_processes_have_identities_of_their_own(setup: Setup, tmp_path: Path) -> None:
    group = topics.hub_subscription(setup.home.hub_group())
    hubs = []
    for name in ("hub", "hub-w1"):
        files = hub_identity(setup.home, setup.registry, name)
        hub = setup.client(files.cert, files.key, name, clean_start=False, expiry_s=300)
        assert hub.wait_connected(), hub.failure
        assert hub.subscribe(group) == 1
        hubs.append(hub)
    device = setup.device(setup.enroll("pole-1"), tmp_path)
    assert device.wait_connected()
    for payload in (b"1", b"2", b"3", b"4"):
        assert device.publish(topics.uplink(SITE, "pole-1", "counts"), payload) == SUCCESS
    assert not any(h.failed.is_set() for h in hubs)  # two processes, no mutual kicking
    with pytest.raises(ConfigError, match="must be 'hub' or start with 'hub-'"):
        hub_identity(setup.home, setup.registry, "pole-2")


# -- item 4: revocation at TLS -------------------------------------------------------------


def test_revocation_ends_the_session_and_refuses_the_certificate(setup: Setup, tmp_path: Path) -> None:
    bundle = setup.enroll("pole-1")
    other = setup.enroll("pole-2")
    device = setup.device(bundle, tmp_path)
    assert device.wait_connected()
    assert not device.publish(topics.uplink(SITE, "pole-1", "counts"), b"1").is_failure

    assert revoke_device(setup.home, setup.registry, "pole-1", broker=(setup.host, setup.port))

    assert device.failed.wait(5), "the revoked device's connection was not ended"
    again = setup.device(bundle, tmp_path / "again")
    assert not again.wait_connected(), "a revoked certificate passed the TLS handshake"
    assert again.failed.is_set()
    still = setup.device(other, tmp_path)  # the CRL refuses only what it lists
    assert still.wait_connected(), still.failure


def test_crl_is_in_every_config_the_project_writes(setup: Setup) -> None:
    running = running_broker(setup.home.broker_dir)
    assert running is not None
    assert f"crlfile {setup.home.broker_crl_file}" in running.config_file.read_text()
    assert "use_username_as_clientid true" in running.config_file.read_text()


# -- item 5: reserved and colliding names -------------------------------------------------


@pytest.mark.parametrize("name", ["hub", "hub-1", "HUB"])
def test_a_reserved_name_is_refused_before_anything_is_written(setup: Setup, name: str) -> None:
    acl_before = setup.home.acl_file.read_text()
    out = setup.home.bundles / f"{name}.json"
    with pytest.raises(ConfigError, match="reserved"):
        issue_enrollment(setup.home, setup.registry, name, SITE, BrokerAddress(host="h", port=1), out=out)
    assert setup.registry.devices.get(name) is None
    assert not out.exists()
    assert not (setup.home.device_certs / f"{name}.cert.pem").exists()
    assert setup.home.acl_file.read_text() == acl_before
    write_acl(setup.home, setup.registry)  # ACL writes still work afterwards
    setup.enroll("pole-9")


def test_a_failed_enrollment_leaves_nothing_behind(setup: Setup) -> None:
    setup.enroll("pole-1")
    with pytest.raises(ConfigError, match="already enrolled"):
        setup.enroll("pole-1")
    out = setup.home.root / "taken.json"
    out.write_text("someone's file")
    acl_before = setup.home.acl_file.read_text()
    with pytest.raises(ConfigError, match="exists"):
        issue_enrollment(setup.home, setup.registry, "pole-2", SITE, BrokerAddress(host="h", port=1), out=out)
    assert setup.registry.devices.get("pole-2") is None  # the row was rolled back
    assert out.read_text() == "someone's file"
    assert not (setup.home.device_certs / "pole-2.cert.pem").exists()
    assert setup.home.acl_file.read_text() == acl_before
    assert [e.action for e in setup.registry.audit.entries()].count("device.enroll") == 1


# -- item 12: enrollment while the broker runs, in the README's order ------------------


def test_device_enrolled_while_the_broker_runs_may_publish_at_once(setup: Setup, tmp_path: Path) -> None:
    hub_files = hub_identity(setup.home, setup.registry, "hub")
    hub = setup.client(hub_files.cert, hub_files.key, "hub")
    assert hub.wait_connected()
    assert hub.subscribe(topics.hub_subscription(setup.home.hub_group())) == 1
    out = tmp_path / "pole-1.json"
    result = CliRunner().invoke(
        _cli(),
        ["device", "enroll", "pole-1", "--site", SITE, "--home", str(setup.home.root),
         "--broker-host", "127.0.0.1", "--broker-port", str(setup.port), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    device = setup.device(read_bundle(out), tmp_path)
    assert device.wait_connected()
    assert device.publish(topics.uplink(SITE, "pole-1", "counts"), b"1") == SUCCESS
    assert hub.next_message().payload == b"1"


def test_enrolling_keeps_what_the_broker_queued_for_the_offline_hub(setup: Setup, tmp_path: Path) -> None:
    # Regression (issue 14, enroll-while-hub-down): enrollment made Mosquitto reload its ACL,
    # and Mosquitto 2.0 dropped the offline sessions of certificate-named clients on a reload,
    # with what it had queued for them: the hub's, while the hub was down.
    hub_files = hub_identity(setup.home, setup.registry, "hub")
    subscription = topics.hub_subscription(setup.home.hub_group())
    hub = setup.client(hub_files.cert, hub_files.key, "hub", clean_start=False, expiry_s=300)
    assert hub.wait_connected()
    assert hub.subscribe(subscription) == 1
    hub.close()
    device = setup.device(setup.enroll("pole-1"), tmp_path)
    assert device.wait_connected()
    topic = topics.uplink(SITE, "pole-1", "counts")
    for payload in (b"1", b"2", b"3"):
        assert device.publish(topic, payload) == SUCCESS  # the broker holds them for the hub now
    acl_before = setup.home.acl_file.read_text()

    newcomer = setup.device(setup.enroll("pole-2"), tmp_path)  # while the hub is down

    assert setup.home.acl_file.read_text() == acl_before
    assert newcomer.wait_connected()
    assert newcomer.publish(topics.uplink(SITE, "pole-2", "counts"), b"4") == SUCCESS
    hub = setup.client(hub_files.cert, hub_files.key, "hub", clean_start=False, expiry_s=300)
    assert hub.wait_connected()
    assert [hub.next_message().payload for _ in range(4)] == [b"1", b"2", b"3", b"4"]


def _cli() -> typer.Typer:
    from roadside.cloud.cli import register

    app = typer.Typer()
    register(app)
    return app


def test_the_api_path_writes_no_bundle(setup: Setup) -> None:
    bundle = setup.enroll("pole-1")
    assert bundle.client_key_pem
    assert not setup.home.bundles.exists() or not any(setup.home.bundles.iterdir())


def test_broker_run_cli_writes_a_config_with_the_crl(tmp_path: Path) -> None:
    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    process = subprocess.Popen(
        [sys.executable, "-c", "from roadside.cli import main; main()", "broker", "run", "--home", str(home.root),
         "--port", "0"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        running = running_broker(home.broker_dir)
        assert running is not None
        assert running.pid == started["pid"]
        assert f"crlfile {home.broker_crl_file}" in running.config_file.read_text()
        publish_crl(home, home.ca())
        assert reload_broker(home)
    finally:
        process.terminate()
        process.wait(15)
    assert running_broker(home.broker_dir) is None


# -- compose: the broker container's reload watcher ---------------------------------------

RUN_SH = COMPOSE_CONF.parent / "run.sh"


def test_compose_watcher_reloads_the_broker_when_the_hub_rewrites_acl_or_crl(tmp_path: Path) -> None:
    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    conf = COMPOSE_CONF.read_text().replace("/mosquitto/pki/", f"{home.pki}/")
    conf = conf.replace("/mosquitto/roadside/", f"{home.broker_dir}/").replace(
        "/mosquitto/data/", f"{tmp_path}/"
    )
    conf = conf.replace("listener 8883 0.0.0.0", f"listener {free_loopback_port()} 127.0.0.1")
    log = tmp_path / "mosquitto.log"
    config = tmp_path / "mosquitto.conf"
    config.write_text(conf.replace("log_dest stderr", f"log_dest file {log}") + _user_line())
    env = {**os.environ, "ROADSIDE_BROKER_CONF": str(config), "ROADSIDE_BROKER_DIR": str(home.broker_dir),
           "ROADSIDE_RELOAD_INTERVAL_S": "0.1"}  # fmt: skip
    watcher = subprocess.Popen(["/bin/sh", str(RUN_SH)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stderr is not None
        # The watcher takes its first digest before it starts Mosquitto: change nothing until then.
        deadline = time.monotonic() + 10
        while not (log.exists() and "running" in log.read_text()):
            assert time.monotonic() < deadline, "the compose broker did not start"
            time.sleep(0.05)
        ca = home.ca()
        ca.revoke(12345)
        publish_crl(home, ca)
        # Mosquitto's own warnings (running as root here) share stderr with the watcher's lines.
        assert any(line.startswith("roadside: ACL or CRL changed") for line in _lines_until_reload(watcher))
        (home.broker_dir / "ca.crl.pem").unlink()  # a broken hub home stops the broker, loudly
        assert watcher.wait(10) == 1
        assert "unreadable" in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.terminate()
            watcher.wait(10)
    assert "Reloading config." in log.read_text()


def _lines_until_reload(watcher: subprocess.Popen[str]) -> Iterator[str]:
    assert watcher.stderr is not None
    for line in watcher.stderr:
        yield line
        if line.startswith("roadside:"):
            return


def test_a_hub_start_reloads_the_broker_only_when_the_crl_is_about_to_lapse(tmp_path: Path) -> None:
    """Mosquitto 2.0 drops offline sessions of certificate-named clients on each reload (an
    ingest worker's queue among them), so refreshing the CRL at hub start must not reload
    for nothing."""
    import datetime as dt

    from roadside.cloud.home import refresh_crl

    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    before = home.broker_crl_file.read_bytes()
    assert refresh_crl(home) is False  # a year left: nothing re-issued, nothing reloaded
    assert home.broker_crl_file.read_bytes() == before
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert refresh_crl(home, now=later) is True
    assert home.broker_crl_file.read_bytes() != before
