"""The fuzz targets' short form (issue 14): every target on its seeds, its committed
regression inputs and a few hundred cheap mutants, in process; one target through
atheris itself, to show the harness runs. ``python -m fuzz all --runs N`` is the long form."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fuzz.__main__ import REGRESSIONS
from fuzz.targets import TARGETS, mutations
from roadside.cloud.dataset.formats import parse_coco, parse_yolo
from roadside.edge.ota.policy import OtaRefusal, parse_target
from roadside.mqttlink.lean import LeanSession, ProtocolError, parse_properties, parse_publish
from roadside.mqttlink.session import ConnAck, SessionConfig
from roadside.shared.bundle import read_bundle
from roadside.shared.config import read_config_file
from roadside.shared.errors import ConfigError, SchemaError
from roadside.signalcontrol import ntcip

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


# The hub's lean MQTT 5 reader (fuzz/regressions/mqtt-lean/): a packet from the broker that was
# cut short, ran its properties past its end or named a topic that is not UTF-8 raised IndexError
# or UnicodeDecodeError out of the network thread, which ended it: no reconnection, ingest stopped.
# Each is now a ProtocolError (a TransportError): the session drops the connection and reconnects.


@pytest.mark.parametrize("name", sorted(p.name for p in (REGRESSIONS / "mqtt-lean").glob("*")))
def test_a_malformed_packet_from_the_broker_is_a_protocol_error(name: str) -> None:
    session = LeanSession(SessionConfig("127.0.0.1", 1, "fuzz-regression", persistent=True))
    with pytest.raises(ProtocolError):
        session._dispatch((REGRESSIONS / "mqtt-lean" / name).read_bytes())


def test_a_publish_topic_that_is_not_utf8_or_cut_short_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not UTF-8"):
        parse_publish(0x30, b"\x00\x02\x8e\x90\x00payload")
    with pytest.raises(ProtocolError, match="without a topic"):
        parse_publish(0x30, b"\x00")
    with pytest.raises(ProtocolError, match="runs past"):
        parse_publish(0x32, b"\x00\x01t\x00")  # QoS 1 with half a packet id


def test_a_string_property_cut_short_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="runs past"):
        parse_properties(b"\x1f\x00", 0, 2)
    with pytest.raises(ProtocolError, match="run past"):
        parse_properties(b"\x21\x00", 0, 9)


@pytest.mark.timeout(30)
def test_the_session_drops_a_connection_that_sends_a_malformed_packet_and_reconnects() -> None:
    """A loopback "broker" answers the first CONNECT with a CONNACK and a PUBLISH whose topic is
    not UTF-8, the second with a CONNACK only: the session reconnects instead of its thread dying."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reasons: list[str] = []
    connected = threading.Event()
    accepted: list[socket.socket] = []

    def broker() -> None:
        for answer in (b"\x20\x03\x00\x00\x00" + (REGRESSIONS / "mqtt-lean" / "topic-not-utf8").read_bytes(),
                       b"\x20\x03\x00\x00\x00"):  # fmt: skip
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(1024)  # CONNECT
            conn.sendall(answer)

    server = threading.Thread(target=broker, daemon=True)
    server.start()
    config = SessionConfig("127.0.0.1", port, "fuzz-regression", persistent=True, reconnect_delay_s=(0, 0))
    connects: list[int] = []

    def on_connect(_session: LeanSession, ack: ConnAck) -> None:
        connects.append(int(ack.ok))
        if len(connects) == 2:
            connected.set()

    session = LeanSession(config, on_connect=on_connect, on_disconnect=reasons.append)
    session.connect()
    session.loop_start()
    try:
        assert connected.wait(10), (connects, reasons)
    finally:
        session.disconnect()
        session.loop_stop()
        listener.close()
        for conn in accepted:
            conn.close()
    assert connects == [1, 1]
    assert reasons[0] == "a PUBLISH topic that is not UTF-8"  # then "disconnected", the session's own end


def test_a_cabinet_error_index_past_its_answer_is_a_schema_error() -> None:
    """fuzz/regressions/ntcip-answer/error-index-past-the-varbinds: error-status 17 with an
    error-index of 7 in an answer of 3 objects raised pysnmp's ProtocolError out of the SNMP
    client, past the relay's (TransportError, SchemaError) handling: one odd datagram ended the
    relay. Now the cabinet's refusal names "the request"."""
    data = (REGRESSIONS / "ntcip-answer" / "error-index-past-the-varbinds").read_bytes()
    with pytest.raises(SchemaError, match="refused the request: SNMP error-status 17"):
        ntcip.decode_answer(data, 4242, ["1.3.6.1.4.1.1206.4.2.1.1.1.0"] * 3)


def test_a_coco_image_named_dot_is_a_config_error(tmp_path: Path) -> None:
    """fuzz/regressions/dataset-coco/file-name-dot: an image whose ``file_name`` is "." raised
    pathlib's ValueError ("has an empty name") while the importer looked for the file."""
    path = tmp_path / "labels.json"
    path.write_bytes((REGRESSIONS / "dataset-coco" / "file-name-dot").read_bytes())
    with pytest.raises(ConfigError, match="names a folder, not a file"):
        parse_coco(path, {}, tmp_path)


def test_a_datagram_with_a_ber_length_past_an_index_is_undecodable_not_a_crash() -> None:
    """fuzz/regressions/ntcip-answer/ber-length-overflow: a BER length field too large for an
    index raised OverflowError out of pyasn1's decoder, past the client's handling."""
    data = (REGRESSIONS / "ntcip-answer" / "ber-length-overflow").read_bytes()
    assert ntcip.decode_answer(data, 4242, ["1.3.6.1.4.1.1206.4.2.1.1.1.0"]) is None


def test_a_datagram_with_too_many_members_of_indefinite_length_is_undecodable() -> None:
    """fuzz/regressions/ntcip-answer/indefinite-sequence-too-long: pyasn1 raised IndexError."""
    data = (REGRESSIONS / "ntcip-answer" / "indefinite-sequence-too-long").read_bytes()
    assert ntcip.decode_answer(data, 4242, ["1.3.6.1.4.1.1206.4.2.1.1.1.0"]) is None
