"""The agent's uplink against a real Mosquitto: a broker that refuses the device's messages
(its ACL denies the device), and the TLS key paho needs, which must not stay on disk."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roadside.cloud.broker.mosquitto import AclDevice
from roadside.edge.doctor import Status, check_uplink
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.transport.delivery import LinkState, read_status, uplink_status_path
from roadside.edge.transport.mqtt import MqttUplink
from roadside.shared.backoff import Backoff
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair
from tests.component.conftest import BrokerHarness

pytestmark = pytest.mark.timeout(60)

MESSAGES = 5


@pytest.fixture
def broker_devices(site: str) -> list[AclDevice]:
    """The fleet the broker starts with: ``dev-b``."""
    return [AclDevice("dev-b", site)]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def bundle_for(broker: BrokerHarness, site: str) -> EnrollmentBundle:
    issued = broker.issued("dev-a")
    return EnrollmentBundle(
        device_id="dev-a",
        site=site,
        broker=BrokerAddress(host="127.0.0.1", port=broker.port),
        ca_cert_pem=broker.broker.ca_file.read_text(),
        client_cert_pem=issued.cert_pem.decode(),
        client_key_pem=issued.key_pem.decode(),
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.db")
    try:
        yield box
    finally:
        box.close()


def test_a_refused_device_backs_off_logs_once_and_delivers_once_the_acl_allows_it(
    broker: BrokerHarness, site: str, tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # The ACL denies dev-a (as it does a revoked device): it connects (its certificate is good)
    # and every message it publishes is refused with PUBACK 135, not authorised.
    broker.allow(broker.devices, revoked=["dev-a"])
    hub = broker.connect("hub")
    hub.subscribe("$share/hub/roadside/v1/#")
    for i in range(MESSAGES):
        outbox.put("counts", f"m{i}".encode(), Priority.COUNTS)
    status_file = uplink_status_path(tmp_path / "state" / "outbox.db")
    uplink = MqttUplink(
        bundle_for(broker, site),
        outbox,
        lambda _wire: None,
        scratch_dir=tmp_path / "state" / "tls",
        status_file=status_file,
        refusal_backoff=Backoff(0.2, 1.0),  # the default caps at 30 s; a test waits less
    )
    caplog.set_level(logging.INFO, logger="roadside.edge.transport.mqtt")
    uplink.start()
    try:
        assert wait_until(lambda: uplink.refused >= 1), "the broker never refused dev-a"
        window_s = 3.0
        time.sleep(window_s)  # the measurement itself: what the uplink does over a few seconds

        # Bounded: the first burst, then about one probe per backoff round (the tight loop
        # seen in the field sent thousands of messages and logged every refusal).
        assert uplink.published <= MESSAGES + 15, uplink.published
        refusal_lines = [r for r in caplog.records if "refus" in r.getMessage()]
        assert len(refusal_lines) <= 2, [r.getMessage() for r in refusal_lines]
        assert outbox.backlog() == MESSAGES  # nothing lost

        status = uplink.status()
        assert status.state is LinkState.REFUSED
        assert status.refusals == uplink.refused
        assert status.reason == "Not authorized"
        written = read_status(status_file)
        assert written is not None
        assert written.state is LinkState.REFUSED
        doctor = check_uplink(status_file)  # `roadside agent doctor`, another process, reads the file
        assert doctor.status is Status.FAIL
        assert "refuses this device's messages" in doctor.detail
        assert "Not authorized" in doctor.detail
        assert "ACL" in doctor.fix

        broker.allow([AclDevice("dev-a", site), AclDevice("dev-b", site)])  # SIGHUP: no longer denied
        assert wait_until(lambda: outbox.backlog() == 0), (uplink.published, uplink.refused)
        payloads = {hub.next_message().payload for _ in range(MESSAGES)}
        assert len(payloads) == MESSAGES
        assert uplink.status().state is LinkState.PUBLISHING
        assert any("accepts" in r.getMessage() for r in caplog.records)
        assert check_uplink(status_file).status is Status.OK
    finally:
        uplink.stop()


def test_no_copy_of_the_tls_private_key_stays_on_disk(
    broker: BrokerHarness, site: str, tmp_path: Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where paho's copies used to go
    broker.allow([AclDevice("dev-a", site)])
    bundle = bundle_for(broker, site)
    scratch = tmp_path / "state" / "tls"

    def copies() -> list[Path]:
        places = [*(tmp_path / "state").rglob("*"), *temp.rglob("*")]  # not the harness's own certs/
        return [p for p in places if p.is_file() and bundle.client_key_pem.encode() in p.read_bytes()]

    scratch.mkdir(parents=True)
    leftover = scratch / "client.key"
    leftover.write_text(bundle.client_key_pem)  # as a crash between writing and removing it would leave
    uplink = MqttUplink(bundle, outbox, lambda _wire: None, scratch_dir=scratch)
    uplink.start()
    try:
        assert wait_until(lambda: uplink.connected)
        assert copies() == []  # loaded into memory: none while running (a kill -9 leaves none either)
    finally:
        uplink.stop()
    assert copies() == []
    assert list(temp.iterdir()) == []
