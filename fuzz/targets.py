"""The fuzz targets: one function per parser of outside bytes, and seeds for each.

A target returns normally when its parser accepted or refused the input as
documented; any other exception propagates and is a crash.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roadside.cloud.dataset.formats import parse_coco, parse_yolo
from roadside.cloud.settings import HubSettings
from roadside.edge.ota.policy import OtaRefusal, parse_target
from roadside.edge.settings import AgentSettings
from roadside.shared import schemas
from roadside.shared.bundle import read_bundle
from roadside.shared.config import load_settings
from roadside.shared.envelope import DeviceSealer, HubOpener, parse
from roadside.shared.errors import RoadsideError
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.vision.yolo import decode_yolo


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


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
    with contextlib.suppress(RoadsideError):
        schemas.decode_uplink(kind, raw)


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
    return [
        ("counts", json.dumps({"schema": 1, "kind": "counts", "records": [count]}).encode()),
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
    with tempfile.TemporaryDirectory(prefix="fuzz-coco-") as scratch:
        path = Path(scratch) / "labels.json"
        path.write_bytes(data)
        with contextlib.suppress(RoadsideError):
            parse_coco(path, {}, Path(scratch))


def dataset_yolo(data: bytes) -> None:
    """The first line is classes.txt (names split on ``|``), the rest one image's label file."""
    classes, _, labels = data.partition(b"\n")
    with tempfile.TemporaryDirectory(prefix="fuzz-yolo-") as scratch:
        folder = Path(scratch)
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
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as scratch:
        path = Path(scratch) / f"config{suffix}"
        path.write_bytes(data[1:])
        overrides: dict[str, Any] = {"home": Path(scratch)} if model is HubSettings else {}
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
    with tempfile.TemporaryDirectory(prefix="fuzz-bundle-") as scratch:
        path = Path(scratch) / "bundle.json"
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
