"""The fuzz targets: one function per parser of outside bytes, and seeds for each.

A target returns normally when its parser accepted or refused the input as
documented; any other exception propagates and is a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from pyasn1.codec.ber import encoder as snmp_encoder
from pysnmp.proto import api as snmp_api

from roadside.cloud.dataset.formats import parse_coco, parse_yolo
from roadside.cloud.settings import HubSettings
from roadside.edge.ota.decoding import decode_into
from roadside.edge.ota.policy import ZSTD, ZSTD_PATCH, OtaRefusal, parse_target
from roadside.edge.sensors.air import alphasense, climate, plantower, sds011, sps30
from roadside.edge.sensors.air.framing import FrameError
from roadside.edge.settings import AgentSettings
from roadside.mqttlink.lean import LeanSession, encode_varint
from roadside.mqttlink.session import Message, SessionConfig
from roadside.shared import compact, schemas
from roadside.shared.bundle import read_bundle
from roadside.shared.config import load_settings
from roadside.shared.envelope import DeviceSealer, HubOpener, parse
from roadside.shared.errors import RoadsideError, SchemaError, TamperedTargetError, TransportError
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.signalcontrol import ntcip
from roadside.vision.yolo import decode_yolo


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


# -- scratch files --------------------------------------------------------------------------------
#
# The parsers that take a path get one folder per process, reused for every input, in RAM
# (/dev/shm) where there is one: a temporary folder per input made those targets 20x slower.
# ``python -m fuzz`` makes the folder and names it in ROADSIDE_FUZZ_SCRATCH (and removes it);
# in process (the tests) one is made on first use and removed at exit.

SCRATCH_ENV = "ROADSIDE_FUZZ_SCRATCH"
_scratch: list[Path] = []


def scratch_root() -> str | None:
    """Where scratch folders go: /dev/shm when this machine has it."""
    return "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None  # noqa: S108


def scratch() -> Path:
    if not _scratch:
        named = os.environ.get(SCRATCH_ENV)
        if named:
            _scratch.append(Path(named))
        else:
            made = Path(tempfile.mkdtemp(prefix="fuzz-scratch-", dir=scratch_root()))
            atexit.register(shutil.rmtree, made, True)
            _scratch.append(made)
    return _scratch[0]


def _folder(name: str) -> Path:
    """An empty-at-first folder for one target, reused for every input."""
    folder = scratch() / name
    folder.mkdir(exist_ok=True)
    return folder


# -- envelope ------------------------------------------------------------------------------

_HUB = KeyPair.generate()
_DEVICE = KeyPair.generate()
_DEVICE_ID = "fuzz-dev"


def _lookup(device_id: str, kid: str) -> PublicKeys | None:
    return _DEVICE.public() if device_id == _DEVICE_ID and kid == _DEVICE.kid else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def envelope_parse(data: bytes) -> None:
    with contextlib.suppress(RoadsideError):
        parse(data)


def envelope_open(data: bytes) -> None:
    opener = HubOpener([_HUB], _lookup)
    try:
        opened = opener.open(data, _now_ms())
    except RoadsideError:
        return
    schemas_payload(opened.header.kind, opened.plaintext)


def _sealed_seeds() -> list[bytes]:
    sealer = DeviceSealer(_DEVICE_ID, _DEVICE, _HUB.public())
    return [sealer.seal(kind, n + 1, body, _now_ms()) for n, (kind, body) in enumerate(_payload_seeds())]


# -- message schemas -------------------------------------------------------------------------

_KINDS = (
    "counts", "events", "sensors", "health", "samples", "ota", "ack", "detector", "movements",
)  # fmt: skip


def schemas_payload(kind: str, raw: bytes) -> None:
    """The hub's decoder: JSON, or the compact counts encoding (ADR 0033)."""
    with contextlib.suppress(RoadsideError):
        compact.decode_any(kind, raw)


def message_schemas(data: bytes) -> None:
    """First byte picks the envelope kind (and the command decoder); the rest is the payload."""
    if not data:
        return
    pick, raw = data[0], data[1:]
    if pick >= len(_KINDS):
        with contextlib.suppress(RoadsideError):
            schemas.decode_command(raw)
        return
    schemas_payload(_KINDS[pick], raw)


def _payload_seeds() -> list[tuple[str, bytes]]:
    now = "2026-01-01T00:00:00+00:00"
    count = {"interval_start": now, "interval_s": 60, "line": "l0", "cls": "car", "direction": "in",
             "count": 3, "model_version": "m1"}  # fmt: skip
    records = [
        schemas.CountRecord.model_validate(count | {"lane": lane, "count": lane or 0}) for lane in (None, 1, 2)
    ]
    return [
        ("counts", json.dumps({"schema": 1, "kind": "counts", "records": [count]}).encode()),
        ("counts", compact.encode_counts(records)),
        ("counts", b'{"schema": 1, "kind": "counts", "records": []}'),
        ("health", b'{"schema": 1, "kind": "health", "health": {}}'),
        ("events", b'{"schema": 1, "kind": "events", "records": [{}]}'),
    ]


def _schema_seeds() -> list[bytes]:
    return [bytes([_KINDS.index(kind)]) + body for kind, body in _payload_seeds()] + [
        bytes([255]) + b'{"id": "x", "name": "reload", "args": {}}'
    ]


# -- YOLO decoder ------------------------------------------------------------------------------


def yolo_decode(data: bytes) -> None:
    """Bytes 0-1 give the channel and candidate counts, 2 the layout; the rest are float32s."""
    if len(data) < 3:
        return
    channels, candidates, layout = data[0] % 16 + 1, data[1] % 64 + 1, data[2] % 3
    floats = np.frombuffer(data[3:][: (len(data) - 3) // 4 * 4], dtype=np.float32)
    values = np.resize(floats, channels * candidates) if floats.size else np.zeros(channels * candidates)
    array = values.reshape(channels, candidates)
    shaped: Any = array if layout == 0 else array.T if layout == 1 else array[None]
    with contextlib.suppress(ValueError):  # the decoder's documented refusal of a shape it cannot read
        decode_yolo(shaped, num_classes=channels - 4 if channels > 4 and layout else None)


def _yolo_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [bytes([7, 20, i]) + rng.random(140, dtype=np.float32).tobytes() for i in range(3)]


# -- dataset import ------------------------------------------------------------------------------


def dataset_coco(data: bytes) -> None:
    folder = _folder("coco")
    path = folder / "labels.json"
    path.write_bytes(data)
    with contextlib.suppress(RoadsideError):
        parse_coco(path, {}, folder)


def dataset_yolo(data: bytes) -> None:
    """The first line is classes.txt (names split on ``|``), the rest one image's label file."""
    classes, _, labels = data.partition(b"\n")
    folder = _folder("yolo")
    (folder / "classes.txt").write_bytes(classes.replace(b"|", b"\n"))
    (folder / "img0.txt").write_bytes(labels)
    with contextlib.suppress(RoadsideError):
        parse_yolo(folder, {}, folder)


def _coco_seeds() -> list[bytes]:
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12]}],
        "categories": [{"id": 1, "name": "car"}],
    }
    return [json.dumps(coco).encode(), b"{}", b"[]"]


def _yolo_label_seeds() -> list[bytes]:
    return [b"car|truck\n0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.05 0.05\n", b"car\n", b"\n0 1 1 1 1"]


# -- config files and enrollment bundles ---------------------------------------------------------


def config_file(data: bytes) -> None:
    """First byte picks agent or hub settings and TOML or JSON; the rest is the file."""
    if not data:
        return
    model: type[AgentSettings] | type[HubSettings] = AgentSettings if data[0] & 1 else HubSettings
    suffix = ".toml" if data[0] & 2 else ".json"
    folder = _folder("config")
    path = folder / f"config{suffix}"
    path.write_bytes(data[1:])
    overrides: dict[str, Any] = {"home": folder} if model is HubSettings else {}
    with contextlib.suppress(RoadsideError):
        load_settings(model, path, "fuzzed config", overrides)


def _config_seeds() -> list[bytes]:
    return [
        b"\x03interval_s = 1\n[outbox]\nrecords_per_message = 5\n",
        b'\x01{"interval_s": 60, "sources": [{"type": "synthetic"}]}',
        b'\x00{"broker_port": 8883, "api_port": 0}',
        b'\x02broker_port = 1\n[store]\ntype = "influx_v1"\n',
    ]


def enrollment_bundle(data: bytes) -> None:
    path = _folder("bundle") / "bundle.json"
    path.write_bytes(data)
    with contextlib.suppress(RoadsideError):
        read_bundle(path)


def _bundle_seeds() -> list[bytes]:
    device = KeyPair.generate()
    bundle = {
        "device_id": "d1",
        "site": "s1",
        "broker": {"host": "127.0.0.1", "port": 8883},
        "ca_cert_pem": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "client_cert_pem": "",
        "client_key_pem": "",
        "device_keys": device.to_json(),
        "hub_public": _HUB.public().to_json(),
    }
    return [json.dumps(bundle).encode(), b"{}"]


# -- TUF target metadata on the device --------------------------------------------------------------


def tuf_target(data: bytes) -> None:
    """A target entry as the device reads it from signed ``targets.json``: JSON bytes."""
    try:
        entry = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(entry, dict):
        return
    hashes = entry.get("hashes")
    length = entry.get("length")
    if not isinstance(hashes, dict) or not isinstance(length, int):
        return  # python-tuf's own metadata classes refuse these before Roadside sees them
    result = parse_target(str(entry.get("path", "")), length, hashes, entry.get("custom"))
    assert isinstance(result, OtaRefusal) or result.length == length


def _tuf_seeds() -> list[bytes]:
    custom = {"name": "yolo", "model_version": "1.2.0", "min_agent_version": "0.1.0", "opset": 17,
              "input_shape": [1, 3, 320, 320], "labels": ["car", "truck"]}  # fmt: skip
    entry = {"path": "models/yolo/1.2.0/model.onnx", "length": 1234, "hashes": {"sha256": "ab" * 32},
             "custom": custom}  # fmt: skip
    return [json.dumps(entry).encode(), b'{"hashes": {}, "length": 1}']


# -- the hub's lean MQTT 5 reader (bytes from the broker) --------------------------------------------


class _LeanReader:
    """One :class:`LeanSession` that never connects; inputs go to its packet cutter as if the
    broker had sent them (CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT and others)."""

    def __init__(self) -> None:
        self.session: LeanSession | None = None

    def feed(self, data: bytes) -> None:
        if self.session is None:
            config = SessionConfig("127.0.0.1", 1, "fuzz-lean", mqtt5=True, persistent=True)
            self.session = LeanSession(config, on_message=self.message)
        session = self.session
        try:
            rest = session._dispatch(data)  # what the network thread does with each read
        except TransportError:  # covers ProtocolError: the session drops the connection
            return
        assert len(rest) <= len(data)

    @staticmethod
    def message(message: Message) -> None:
        assert isinstance(message.topic, str)
        assert isinstance(message.payload, bytes)


_LEAN = _LeanReader()


def mqtt_lean(data: bytes) -> None:
    _LEAN.feed(data)


def _mqtt_packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def _mqtt_seeds() -> list[bytes]:
    connack = _mqtt_packet(0x20, b"\x00\x00\x06\x21\x00\x40\x13\x00\x1e")  # Receive Maximum, Keep Alive
    topic = b"\x00\x0droadside/x/up"
    publish1 = _mqtt_packet(0x32, topic + b"\x00\x07" + b"\x00" + b"payload")
    publish0 = _mqtt_packet(0x30, topic + b"\x03\x01\x01\x00" + b"p")
    props = b"\x1f\x00\x02ok\x26\x00\x01k\x00\x01v\x0b\x05"
    publish_props = _mqtt_packet(0x32, topic + b"\x00\x08" + bytes([len(props)]) + props + b"x")
    return [
        connack + publish1 + publish0,
        connack + publish_props,
        _mqtt_packet(0x40, b"\x00\x01"),
        _mqtt_packet(0x40, b"\x00\x02\x10"),
        _mqtt_packet(0x90, b"\x00\x01\x00\x01"),
        b"\xd0\x00" + publish1[:5],
        _mqtt_packet(0xE0, b"\x8e"),
    ]


# -- air-quality sensor frames (serial and I2C bytes from the sensors) -------------------------------


def air_frames(data: bytes) -> None:
    """Byte 0 picks the codec (Plantower, SDS011, SPS30 streams; SHT3x, ADS1115 registers),
    byte 1 the chunk size the stream arrives in; the rest is what the sensor sent."""
    if len(data) < 2:
        return
    pick, size, raw = data[0] % 5, data[1] % 64 + 1, data[2:]
    if pick >= 3:
        with contextlib.suppress(FrameError):
            if pick == 3:
                climate.decode_measurement(raw)
            elif len(raw) == 2:  # the driver reads exactly the 2-byte conversion register
                alphasense.ads1115_millivolts(raw)
        return
    decoder = (plantower.PlantowerDecoder, sds011.Sds011Decoder, sps30.Sps30Decoder)[pick]()
    frames = 0
    for at in range(0, len(raw), size):
        frames += len(decoder.feed(raw[at : at + size]))
    decoder.reset()
    stats = decoder.stats
    assert frames == stats.accepted
    assert stats.skipped_bytes <= len(raw)


def _air_seeds() -> list[bytes]:
    values = {"pm25": 12, "pm10": 20}
    reading = sps30.miso(sps30.CMD_READ, sps30.encode_values({"pm25": 3.5}))
    return [
        b"\x00\x07" + plantower.encode_frame(values) + b"\x42" + plantower.encode_frame({}),
        b"\x01\x03" + sds011.encode_frame(12.5, 20.1) + b"\xaa\xc0" + sds011.encode_frame(0.0, 999.9),
        b"\x02\x05" + reading + sps30.miso(sps30.CMD_START) + reading[:9],
        b"\x03\x00" + climate.encode_measurement(21.5, 40.0),
        b"\x04\x00\x12\x34",
    ]


# -- model updates: a compressed model or a patch against the model held (ADR 0027) -----------------

_BASE = bytes(range(256)) * 64
_MAX_MODEL_BYTES = 1 << 20


def ota_decode(data: bytes) -> None:
    """Byte 0 picks a compressed model or a patch against a 16 KiB base model; the rest is the
    downloaded file. Decoded bytes are capped at 1 MiB as the model target's signed length caps them."""
    if not data:
        return
    patch = bool(data[0] & 1)
    path = _folder("ota") / "model.onnx.zst"
    path.write_bytes(data[1:])
    written: list[int] = []
    try:
        total = decode_into(
            ZSTD_PATCH if patch else ZSTD, path, lambda b: written.append(len(b)), _MAX_MODEL_BYTES,
            _BASE if patch else None,
        )  # fmt: skip
    except TamperedTargetError:
        return
    assert total == sum(written) <= _MAX_MODEL_BYTES


def _ota_seeds() -> list[bytes]:
    model = _BASE[:4000] + b"new weights" * 50
    patch = zstandard.ZstdCompressor(
        dict_data=zstandard.ZstdCompressionDict(_BASE, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    ).compress(model)
    return [
        b"\x00" + zstandard.ZstdCompressor(level=3).compress(model),
        b"\x01" + patch,
        b"\x00" + zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 5000),
    ]


# -- NTCIP 1202 answers from a signal cabinet (SNMP v2c datagrams) ----------------------------------

_SNMP_REQUEST_ID = 4242
_SNMP_ASKED = [ntcip.MAX_PHASES, f"{ntcip.STATUS_GREENS}.1", f"{ntcip.CONTROL_VEH_CALL}.1"]
_V2C: Any = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]


def ntcip_answer(data: bytes) -> None:
    """One UDP datagram as :class:`~roadside.signalcontrol.ntcip.SnmpV2cClient` reads it in
    answer to a GET or SET of three objects."""
    try:
        answer = ntcip.decode_answer(data, _SNMP_REQUEST_ID, _SNMP_ASKED)
        if answer is not None:
            for oid, value in answer:
                ntcip.integer_value(oid, value)
    except SchemaError:
        return


def _snmp_response(values: list[Any], error_status: int = 0, error_index: int = 0) -> bytes:
    pdu = _V2C.ResponsePDU()
    _V2C.apiPDU.set_defaults(pdu)
    _V2C.apiPDU.set_request_id(pdu, _SNMP_REQUEST_ID)
    _V2C.apiPDU.set_error_status(pdu, error_status)
    _V2C.apiPDU.set_error_index(pdu, error_index)
    _V2C.apiPDU.set_varbinds(pdu, list(zip(_SNMP_ASKED, values, strict=False)))
    message = _V2C.Message()
    _V2C.apiMessage.set_defaults(message)
    _V2C.apiMessage.set_community(message, "public")
    _V2C.apiMessage.set_pdu(message, pdu)
    return bytes(snmp_encoder.encode(message))


def _ntcip_seeds() -> list[bytes]:
    return [
        _snmp_response([_V2C.Integer(16), _V2C.Integer(0b10001), _V2C.Integer(2)]),
        _snmp_response([_V2C.Integer(16), _V2C.NoSuchObject(""), _V2C.OctetString(b"x")]),
        _snmp_response([_V2C.Null("")] * 3, error_status=17, error_index=3),
        _snmp_response([_V2C.Integer(-1)]),
    ]


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("envelope-parse", envelope_parse, _sealed_seeds),
        Target("envelope-open", envelope_open, _sealed_seeds),
        Target("schemas", message_schemas, _schema_seeds),
        Target("yolo", yolo_decode, _yolo_seeds),
        Target("dataset-coco", dataset_coco, _coco_seeds),
        Target("dataset-yolo", dataset_yolo, _yolo_label_seeds),
        Target("config", config_file, _config_seeds),
        Target("bundle", enrollment_bundle, _bundle_seeds),
        Target("tuf-target", tuf_target, _tuf_seeds),
        Target("mqtt-lean", mqtt_lean, _mqtt_seeds),
        Target("air-frames", air_frames, _air_seeds),
        Target("ota-decode", ota_decode, _ota_seeds),
        Target("ntcip-answer", ntcip_answer, _ntcip_seeds),
    )
}


def mutations(seeds: list[bytes], count: int, seed: int) -> list[bytes]:
    """``count`` cheap mutants of ``seeds`` (flips, cuts, splices, repeats): the tests' short
    stand-in for a fuzzer, deterministic for a ``seed``."""
    rng = random.Random(seed)  # noqa: S311 (test inputs, not secrets)
    out: list[bytes] = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds) or b"\0")
        for _ in range(rng.randint(1, 4)):
            op, at = rng.randrange(5), rng.randrange(len(data) or 1)
            if op == 0 and data:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[at : at + rng.randint(1, 16)]
            elif op == 2:
                data[at:at] = rng.choice(seeds)[: rng.randint(1, 32)]
            elif op == 3:
                data[at:at] = bytes([rng.choice((0, 0x7F, 0x80, 0xFF, 0x22, 0x7B, 0x5B))]) * rng.randint(1, 8)
            else:
                data = data[:at]
        out.append(bytes(data))
    return out
