"""Devices for :mod:`bench.city`: thousands of real TLS sessions and sealed messages in one process.

    python -m bench.city_fleet --dir DIR --first I --count N --status FILE [rates]

Each device ``DIR/bundles/<device>.json`` (an enrollment bundle) gets its own
mutual-TLS context, its own MQTT 5 connection (:mod:`bench.mqtt_lite` on one
asyncio loop), its own envelope keys (:class:`roadside.shared.envelope.DeviceSealer`),
and sends what :mod:`bench.traffic` makes at a city's rates. A message stays in
the device's memory until its PUBACK; after a lost connection the device
reconnects with jittered backoff and sends the unacknowledged ones again (sealed
anew, same sequence number), as the agent's outbox does.

Commands are real: each is opened by the device's
:class:`roadside.edge.control.verifier.CommandVerifier` (the hub's signature, the
device's key), acknowledged (sealed ``ack``), and an ``ota`` install is reported
``staging`` then ``active`` (a rollback ``rolled_back``). The model itself is not
downloaded: ten thousand TUF fetches of a model are what ``bench.rollout``
measures; here the rollout's commands and reports cross the city-sized fleet.

Every few seconds the process writes its figures to ``--status`` (JSON). On
SIGTERM it stops making messages, waits up to ``--drain-s`` for every PUBACK,
writes each message it made (device, seq, created_ms) to ``--created`` as TSV
and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import resource
import signal
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.mqtt_lite import LiteSession, MqttProtocolError
from bench.traffic import TrafficClock, body
from roadside.edge.control.verifier import CommandVerifier, InvalidCommandError
from roadside.mqttlink import context_from_pem
from roadside.shared import topics
from roadside.shared.backoff import Backoff
from roadside.shared.bundle import EnrollmentBundle, read_bundle
from roadside.shared.envelope import DeviceSealer
from roadside.shared.errors import IntegrityError, SchemaError
from roadside.shared.schemas import AckMessage, OtaCommandArgs, OtaMessage, OtaReport, encode

log = logging.getLogger("bench.city_fleet")
RUNNING = "1.0.0"
KEEPALIVE_S = 120  # health every 30 s keeps the link busy anyway


@dataclass
class Books:
    """The process's figures, written to the status file."""

    connected: int = 0
    connects: int = 0
    connect_failures: int = 0
    created: int = 0
    acked: int = 0
    refused: int = 0
    commands: int = 0
    commands_refused: int = 0
    reports_active: int = 0
    created_log: list[tuple[str, int, int]] = field(default_factory=list)


class CityDevice:
    """One device: identity, sealer, what it has not had acknowledged, and its link."""

    def __init__(
        self, bundle: EnrollmentBundle, tls: ssl.SSLContext, clock: TrafficClock, books: Books
    ) -> None:
        self.bundle = bundle
        self.device_id = bundle.device_id
        self.tls = tls
        self.clock = clock
        self.books = books
        self.sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        self.verifier: CommandVerifier | None = None  # made at the first command
        self.seq = 0
        self.unacked: dict[int, tuple[str, bytes]] = {}  # seq -> (kind, plaintext)
        self.in_flight: dict[int, int] = {}  # packet id -> seq, this session's
        self.session: LiteSession | None = None
        self.running_version = RUNNING
        self.answered: dict[str, AckMessage] = {}  # command id -> its ack: act once, answer again
        self.started = time.monotonic()
        self.ever_connected = False  # messages are made from the first connection on

    # Sending.

    def make(self, kind: str, plaintext: bytes) -> None:
        """A new message: numbered, remembered until acknowledged, sent if connected."""
        self.seq += 1
        self.unacked[self.seq] = (kind, plaintext)
        self.books.created += 1
        self.books.created_log.append((self.device_id, self.seq, int(time.time() * 1000)))
        self.send(self.seq)

    def send(self, seq: int) -> None:
        if self.session is None:
            return
        kind, plaintext = self.unacked[seq]
        wire = self.sealer.seal(kind, seq, plaintext, int(time.time() * 1000))
        topic = topics.uplink(self.bundle.site, self.device_id, kind)  # type: ignore[arg-type]
        self.in_flight[self.session.publish(topic, wire)] = seq

    def on_puback(self, packet_id: int, reason: int) -> None:
        seq = self.in_flight.pop(packet_id, None)
        if seq is None:
            return
        if reason >= 0x80:
            self.books.refused += 1  # kept: sent again on the next connection
            return
        if self.unacked.pop(seq, None) is not None:
            self.books.acked += 1

    def traffic(self, now: float) -> None:
        for kind in self.clock.due(now):
            uptime = now - self.started
            interval = int(self.clock.counts_every_s)
            self.make(
                kind, body(kind, self.clock.rng, interval, uptime, len(self.unacked), self.running_version)
            )

    # Commands.

    def on_message(self, _topic: str, wire: bytes) -> None:
        self.books.commands += 1
        if self.verifier is None:
            self.verifier = CommandVerifier(self.device_id, self.bundle.hub_public(), [self.bundle.keypair()])
        try:
            command = self.verifier.open(wire, int(time.time() * 1000))
        except InvalidCommandError as exc:
            self.books.commands_refused += 1
            if exc.command_id is not None:
                self.answer(AckMessage(command_id=exc.command_id, ok=False, detail=f"invalid: {exc}"))
            return
        except (IntegrityError, SchemaError):
            self.books.commands_refused += 1
            return
        earlier = self.answered.get(str(command.command_id))
        if earlier is not None:  # redelivered: answer again, act once
            self.make("ack", encode(earlier))
            return
        if command.type != "ota":
            self.answer(
                AckMessage(command_id=command.command_id, ok=False, detail=f"{command.type}: not here")
            )
            return
        args = OtaCommandArgs.model_validate(command.args)
        self.answer(AckMessage(command_id=command.command_id, ok=True, detail="accepted"))
        if args.action == "install" and args.name and args.version:
            self.report(args, "staging")
            self.running_version = args.version
            self.report(args, "active")
            self.books.reports_active += 1  # its next health (every 30 s) names the new version
        elif args.action == "rollback":
            self.running_version = RUNNING
            self.report(args, "rolled_back")

    def answer(self, ack: AckMessage) -> None:
        self.answered[str(ack.command_id)] = ack
        self.make("ack", encode(ack))

    def report(self, args: OtaCommandArgs, state: str) -> None:
        report = OtaReport(
            rollout_id=args.rollout_id,
            name=args.name or "detector",
            version=args.version or self.running_version,
            state=state,  # type: ignore[arg-type]  # one of OtaState's literals
            running_version=self.running_version,
        )
        self.make("ota", encode(OtaMessage(report=report)))

    # The link.

    async def life(self, host: str, port: int, gate: asyncio.Semaphore, stop: asyncio.Event) -> None:
        backoff = Backoff(base_s=1.0, cap_s=30.0)
        while not stop.is_set():
            try:
                async with gate:  # so many handshakes at once, not ten thousand
                    session = await LiteSession.open(
                        host, port, self.tls, self.device_id, KEEPALIVE_S, self.on_puback, self.on_message
                    )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, MqttProtocolError) as exc:
                self.books.connect_failures += 1
                log.debug("%s: connect failed: %s", self.device_id, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            await self.connected(session, stop)
            if not stop.is_set():
                await asyncio.sleep(backoff.next_delay())

    async def connected(self, session: LiteSession, stop: asyncio.Event) -> None:
        self.books.connects += 1
        self.books.connected += 1
        self.session = session
        if not self.ever_connected:
            self.ever_connected = True
            self.clock.start(time.monotonic())
        self.in_flight.clear()
        session.subscribe(topics.command(self.device_id))
        for seq in list(self.unacked):
            self.send(seq)
        reader = asyncio.ensure_future(session.run())
        try:
            await reader
        except (OSError, asyncio.IncompleteReadError, MqttProtocolError) as exc:
            log.debug("%s: connection lost: %s", self.device_id, exc)
        finally:
            self.session = None
            self.books.connected -= 1
            session.close()


async def drive(devices: list[CityDevice], stop: asyncio.Event) -> None:
    """Make every device's messages when due (one loop for all of them)."""
    while not stop.is_set():
        now = time.monotonic()
        for device in devices:
            if device.ever_connected:
                device.traffic(now)
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> None:
    books = Books()
    paths = sorted((args.dir / "bundles").glob("*.json"))[args.first : args.first + args.count]
    scratch = Path(tempfile.mkdtemp(prefix="city-tls-"))
    devices = []
    for i, path in enumerate(paths):
        bundle = read_bundle(path)
        tls = context_from_pem(bundle.ca_cert_pem, bundle.client_cert_pem, bundle.client_key_pem, scratch)
        rng = random.Random(args.seed * 1_000_003 + args.first + i)
        clock = TrafficClock(args.counts_every_s, args.health_every_s, args.events_per_hour, rng)
        devices.append(CityDevice(bundle, tls, clock, books))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gate = asyncio.Semaphore(args.handshakes)
    links = [asyncio.ensure_future(d.life(args.host, args.port, gate, stop)) for d in devices]
    traffic = asyncio.ensure_future(drive(devices, stop))
    log.info("city fleet started: %d devices", len(devices))
    while not stop.is_set():
        write_status(args.status, books, len(devices), done=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
    await traffic
    deadline = time.monotonic() + args.drain_s
    while any(d.unacked for d in devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for link in links:
        link.cancel()
    for device in devices:
        if device.session is not None:
            device.session.close()
    await asyncio.gather(*links, return_exceptions=True)
    with args.created.open("w") as out:
        out.writelines(f"{d}\t{s}\t{c}\n" for d, s, c in books.created_log)
    write_status(args.status, books, len(devices), done=True, unacked=sum(len(d.unacked) for d in devices))


def write_status(path: Path, books: Books, devices: int, done: bool, unacked: int | None = None) -> None:
    figures = {k: v for k, v in vars(books).items() if k != "created_log"}
    figures.update(devices=devices, done=done, unacked=unacked)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(figures))
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--created", type=Path, required=True)
    parser.add_argument("--counts-every-s", type=float, default=60.0)
    parser.add_argument("--health-every-s", type=float, default=30.0)
    parser.add_argument("--events-per-hour", type=float, default=20.0)
    parser.add_argument("--handshakes", type=int, default=64, help="TLS handshakes at once")
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per device
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
