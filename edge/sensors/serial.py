"""Sensors on a serial line: two text line protocols and the pyserial port adapter.

``nmea``
    NMEA 0183-style sentences, one or more ``quantity,value,unit`` triples
    after a ``$RS`` + type identifier, closed by ``*`` and the two-hex-digit
    XOR of every byte between ``$`` and ``*``::

        $RSAQ,pm25,12.3,ug/m3,no2,40.1,ug/m3*2E

    The checksum catches line noise and lines cut short by a reconnect.

``kv``
    Comma-separated ``quantity=value`` pairs; units come from the config,
    and an optional ``ts=<epoch seconds>`` gives the device's own time::

        pm25=12.3,no2=40.1,ts=1718000000.5

    It has no checksum, so a line cut inside a number cannot be told from a
    shorter number: prefer ``nmea`` where the firmware allows.

The parsers are pure and raise :class:`LineError` with a fixed ``reason``;
:class:`LineParser` counts accepted and rejected lines by reason.
:class:`SerialSensorSource` is the only code that imports ``serial``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from operator import xor
from typing import Final, Literal, Protocol

from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import SerialSensorConfig
from roadside.shared.backoff import Backoff

log = logging.getLogger(__name__)

Reason = Literal[
    "too_long", "encoding", "bad_start", "truncated", "bad_checksum", "bad_fields", "non_numeric"
]

MAX_LINE: Final = 256  # NMEA allows 82 bytes; room for a few triples, and a bound on a line without end
_NUMBER: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_UNIT: Final = re.compile(r"^[\x21-\x7e]{1,16}$")  # printable ASCII, no separators below
_SENTENCE: Final = re.compile(r"^RS[A-Z]{2,4}$")


class LineError(ValueError):
    """A line that does not parse; ``reason`` is a short fixed label for counting."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class LineValue:
    quantity: str
    value: float
    unit: str
    ts: float | None = None  # the device's own time, when the line carries one


def checksum(body: bytes) -> int:
    """The NMEA checksum: XOR of the bytes between ``$`` and ``*``."""
    return reduce(xor, body, 0)


def format_nmea(values: Sequence[tuple[str, float, str]], sentence: str = "RSAQ") -> bytes:
    """One ``nmea`` line (with CRLF) carrying ``(quantity, value, unit)`` triples."""
    fields = [sentence] + [f"{q},{_number_text(v)},{u}" for q, v, u in values]
    body = ",".join(fields).encode("ascii")
    return b"$" + body + b"*" + f"{checksum(body):02X}".encode() + b"\r\n"


def format_kv(values: Mapping[str, float], ts: float | None = None) -> bytes:
    """One ``kv`` line (with CRLF)."""
    pairs = [f"{q}={_number_text(v)}" for q, v in values.items()]
    if ts is not None:
        pairs.append(f"ts={_number_text(ts)}")
    return ",".join(pairs).encode("ascii") + b"\r\n"


def _number_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"cannot send {value!r}: not a finite number")
    return repr(float(value))  # repr round-trips a float exactly


def _decode(line: bytes) -> str:
    if len(line) > MAX_LINE:
        raise LineError("too_long", f"{len(line)} bytes")
    try:
        return line.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise LineError("encoding", "not ASCII") from exc


def _number(text: str) -> float:
    # float() alone would also take "nan", "inf" and "1_000".
    if not _NUMBER.match(text):
        raise LineError("non_numeric", repr(text[:20]))
    value = float(text)
    if not math.isfinite(value):
        raise LineError("non_numeric", repr(text[:20]))
    return value


def parse_nmea(line: bytes) -> list[LineValue]:
    """The values of one ``nmea`` sentence; :class:`LineError` if it is corrupt."""
    text = _decode(line)
    if not text.startswith("$"):
        raise LineError("bad_start", "no leading '$'")
    star = text.rfind("*")
    if star < 0 or len(text) - star != 3:
        raise LineError("truncated", "no '*hh' checksum at the end")
    body, given = text[1:star], text[star + 1 :]
    try:
        expected = int(given, 16)
    except ValueError as exc:
        raise LineError("truncated", "checksum is not two hex digits") from exc
    if checksum(body.encode("ascii")) != expected:
        raise LineError("bad_checksum", f"{given} does not match the sentence")
    fields = body.split(",")
    if not _SENTENCE.match(fields[0]) or len(fields) < 4 or (len(fields) - 1) % 3:
        raise LineError("bad_fields", f"{fields[0]!r} with {len(fields) - 1} fields")
    out = []
    for i in range(1, len(fields), 3):
        quantity, value, unit = fields[i : i + 3]
        if not _NAME.match(quantity) or not _UNIT.match(unit):
            raise LineError("bad_fields", f"quantity {quantity[:20]!r} or unit {unit[:20]!r}")
        out.append(LineValue(quantity, _number(value), unit))
    return out


def parse_kv(line: bytes, units: Mapping[str, str]) -> list[LineValue]:
    """The values of one ``kv`` line; units from ``units`` (empty when unknown)."""
    text = _decode(line)
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not _NAME.match(key) or key in pairs:
            raise LineError("bad_fields", f"field {part[:20]!r}")
        pairs[key] = value.strip()
    ts_text = pairs.pop("ts", None)
    ts = None if ts_text is None else _number(ts_text)
    if not pairs:
        raise LineError("bad_fields", "no values")
    return [LineValue(q, _number(v), units.get(q, ""), ts) for q, v in pairs.items()]


@dataclass
class LineParser:
    """Parses lines of one protocol, counting what it accepts and rejects (by reason)."""

    protocol: Literal["nmea", "kv"]
    units: Mapping[str, str] = field(default_factory=dict)
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def parse(self, line: bytes) -> list[LineValue]:
        """The values of ``line``; ``[]`` for a blank or corrupt line (counted)."""
        if not line.strip():
            return []  # CRLF pairs and keep-alive newlines: nothing was lost
        try:
            values = parse_nmea(line) if self.protocol == "nmea" else parse_kv(line, self.units)
        except LineError as exc:
            self.rejected[exc.reason] += 1
            return []
        self.accepted += 1
        return values


@dataclass
class LineSplitter:
    """Bytes in, complete lines out; a line past ``MAX_LINE`` is cut and counted as ``too_long``."""

    parser: LineParser
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        if len(self._buffer) > MAX_LINE:
            self.parser.rejected["too_long"] += 1
            self._buffer.clear()
        return [bytes(line) for line in lines]

    def reset(self) -> None:
        """Forget a partial line (the port went away mid-line): it is counted as truncated."""
        if self._buffer.strip():
            self.parser.rejected["truncated"] += 1
        self._buffer.clear()


class _Port(Protocol):
    """The part of ``serial.Serial`` this adapter uses."""

    in_waiting: int

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class SerialSensorSource:
    """Reads lines from a serial port, reopening it with jittered backoff when it goes away."""

    def __init__(self, config: SerialSensorConfig, clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.config = config
        self.parser = LineParser(config.protocol, config.units)
        self.opens = 0  # successful opens of the port: 1 + reconnects
        self._clock = clock
        self._stop = threading.Event()

    def samples(self) -> Iterator[SensorSample]:
        import serial  # pyserial: only this adapter needs it

        backoff = Backoff(self.config.reconnect_base_s, self.config.reconnect_cap_s)
        splitter = LineSplitter(self.parser)
        while not self._stop.is_set():
            try:
                port: _Port = serial.Serial(self.config.port, self.config.baudrate, timeout=0.25)
            except (serial.SerialException, OSError) as exc:
                log.warning("sensor %s: cannot open %s: %s", self.name, self.config.port, exc)
                self._stop.wait(backoff.next_delay())
                continue
            self.opens += 1
            log.info("sensor %s: reading %s", self.name, self.config.port)
            try:
                yield from self._read(port, splitter, backoff)
            except (serial.SerialException, OSError) as exc:
                log.warning("sensor %s: lost %s: %s", self.name, self.config.port, exc)
            finally:
                port.close()
                splitter.reset()
            self._stop.wait(backoff.next_delay())

    def _read(self, port: _Port, splitter: LineSplitter, backoff: Backoff) -> Iterator[SensorSample]:
        while not self._stop.is_set():
            # Blocks up to the port timeout, so close() is noticed within a quarter second.
            chunk = bytes(port.read(max(1, port.in_waiting)))
            for line in splitter.feed(chunk):
                values = self.parser.parse(line)
                if values:
                    backoff.reset()  # the device is talking sense again
                now = self._clock()
                for v in values:
                    yield SensorSample(
                        v.ts if v.ts is not None else now, self.name, v.quantity, v.value, v.unit
                    )

    def close(self) -> None:
        self._stop.set()
