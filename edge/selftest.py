"""``roadside agent selftest``: does this install work, before any bundle, broker or camera?

A field installer runs it right after carrying the wheel to a box (docs/install.md).
It exercises the agent's own parts, with nothing from the network:

- **model**: the detector (the shipped one, or ``--model``) loads on the asked
  providers, passes the load-time self-test (finite outputs on a blank frame),
  and runs ``frames`` frames; the report gives the provider that actually ran
  it and the median time per frame;
- **outbox**: a throw-away outbox in a temporary folder stores, returns and
  acknowledges a message (SQLite, WAL, full sync, as in the field);
- **envelope**: a message sealed with a fresh device key opens with the hub's,
  and a tampered copy is refused.

Each check is reported on its own, so one failure does not hide the others.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roadside.edge.settings import ModelConfig
from roadside.shared.envelope import DeviceSealer, HubOpener
from roadside.shared.errors import RoadsideError
from roadside.shared.keys import KeyPair


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SelfTestReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def check_model(config: ModelConfig, frames: int) -> Check:
    """Load the detector as the agent does and time ``frames`` frames on it."""
    from roadside.edge.inference.engine import OnnxDetector  # onnxruntime only for this check

    detector = OnnxDetector.from_config(config)
    height, width = detector.info.input_size
    frame = np.full((height, width, 3), 114, dtype=np.uint8)
    times = []
    for _ in range(frames):
        started = time.perf_counter()
        detector.detect([frame])
        times.append((time.perf_counter() - started) * 1000)
    info = detector.info
    return Check(
        "model",
        True,
        f"{info.path.name} {info.version} ({len(info.labels)} classes, {width}x{height}) on "
        f"{info.active_provider}: median {statistics.median(times):.1f} ms per frame over {frames}",
    )


def check_outbox(folder: Path) -> Check:
    """A message put in a fresh outbox comes back whole and leaves on ack."""
    from roadside.edge.outbox.sqlite import Outbox, Priority

    outbox = Outbox(folder / "outbox.db", max_bytes=1024 * 1024)
    try:
        payload = b"roadside selftest"
        outbox.put("counts", payload, Priority.COUNTS)
        items = outbox.pending(10)
        if [item.payload for item in items] != [payload]:
            return Check("outbox", False, f"wrote 1 message, read back {len(items)}")
        outbox.ack(items[0].seq)
        if outbox.backlog() != 0:
            return Check("outbox", False, "an acknowledged message stayed in the outbox")
    finally:
        outbox.close()
    return Check("outbox", True, "stores, returns and acknowledges a message (SQLite WAL, synchronous=FULL)")


def check_envelope() -> Check:
    """A sealed message opens with the hub's key, and a flipped byte is refused."""
    device, hub = KeyPair.generate(), KeyPair.generate()
    sealer = DeviceSealer("selftest", device, hub.public())
    opener = HubOpener([hub], lambda device_id, kid: device.public() if kid == device.kid else None)
    now_ms = int(time.time() * 1000)
    wire = sealer.seal("counts", 1, b"{}", now_ms)
    if opener.open(wire, now_ms).plaintext != b"{}":
        return Check("envelope", False, "a sealed message opened to different bytes")
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    try:
        opener.open(tampered, now_ms)
    except RoadsideError:
        return Check("envelope", True, "seals and opens (X25519, AES-256-GCM); a tampered copy is refused")
    return Check("envelope", False, "a tampered message was accepted")


def _run(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except (RoadsideError, OSError, RuntimeError, ValueError) as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def run_selftest(model: ModelConfig, frames: int = 5) -> SelfTestReport:
    """Every check, each isolated from the others' failures."""
    with tempfile.TemporaryDirectory(prefix="roadside-selftest-") as folder:
        return SelfTestReport(
            [
                _run("model", lambda: check_model(model, frames)),
                _run("outbox", lambda: check_outbox(Path(folder))),
                _run("envelope", check_envelope),
            ]
        )
