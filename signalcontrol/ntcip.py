"""Roadside's calls into a real cabinet controller over NTCIP 1202, and its phases back out.

Beside a cabinet the controller is the city's own (it times the phases); Roadside
only places calls, as a detector card or a central system would. The standard
way in over the network is NTCIP 1202's phase control group (v02 and v03):

- ``phaseControlGroupVehCall`` / ``phaseControlGroupPedCall``
  (``1.3.6.1.4.1.1206.4.2.1.1.5.1.{6,7}.<group>``): one INTEGER 0–255 per group
  of eight phases, bit 0 the group's lowest phase. A set bit places a call the
  controller holds only while it is set, and the controller clears the object when
  it drops to backup mode after ``unitBackupTime`` without a set: the relay
  writes every change at once and rewrites the whole state every
  ``refresh_s`` so that a rebooted controller or a lost datagram heals itself.
- ``phaseStatusGroup{Reds,Yellows,Greens,Walks,PedClears,PhaseOns}``
  (``1.3.6.1.4.1.1206.4.2.1.1.4.1.{2,3,4,7,6,10}.<group>``): what the heads show,
  read every tick and turned into the Indiana phase events (1, 7, 8, 9, 10, 11,
  12, 21, 22, 23) that the hub keeps in its ATSPM log.

The pure parts are :func:`call_groups`, :func:`decode_group` and
:class:`PhaseLog`; :class:`SnmpV2cClient` is the thin UDP adapter (SNMP v2c,
encoded with pysnmp's protocol modules); :class:`CallRelay` ties one tick
together and never stops on a bad datagram or a silent controller: it counts,
logs and keeps the calls it could not write pending.

SNMP v2c carries its community in clear: keep the link on the cabinet's own
network (docs/signals.md).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import api

from roadside.shared.errors import ConfigError, SchemaError, TransportError
from roadside.shared.signals import EventCode
from roadside.signalcontrol.calls import CallTable
from roadside.signalcontrol.core import PhaseEvent
from roadside.signalcontrol.runner import CallSource, EventSink

log = logging.getLogger(__name__)

_V2C: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]

PHASE: Final = "1.3.6.1.4.1.1206.4.2.1.1"
MAX_PHASES: Final = f"{PHASE}.1.0"
STATUS_REDS: Final = f"{PHASE}.4.1.2"
STATUS_YELLOWS: Final = f"{PHASE}.4.1.3"
STATUS_GREENS: Final = f"{PHASE}.4.1.4"
STATUS_PED_CLEARS: Final = f"{PHASE}.4.1.6"
STATUS_WALKS: Final = f"{PHASE}.4.1.7"
STATUS_PHASE_ONS: Final = f"{PHASE}.4.1.10"
CONTROL_VEH_CALL: Final = f"{PHASE}.5.1.6"
CONTROL_PED_CALL: Final = f"{PHASE}.5.1.7"

_STATUS_COLUMNS: Final = {
    "reds": STATUS_REDS,
    "yellows": STATUS_YELLOWS,
    "greens": STATUS_GREENS,
    "walks": STATUS_WALKS,
    "ped_clears": STATUS_PED_CLEARS,
    "ons": STATUS_PHASE_ONS,
}
MAX_DATAGRAM: Final = 65_507


def groups_for(max_phases: int) -> range:
    """The phase groups (of eight) that cover phases 1..max_phases."""
    if not 1 <= max_phases <= 255:
        raise ConfigError(f"maxPhases must be 1..255, the controller says {max_phases}")
    return range(1, (max_phases - 1) // 8 + 2)


def call_groups(phases: Iterable[int], groups: Iterable[int]) -> dict[int, int]:
    """Phases → ``{group: bitmap}`` for every group in ``groups`` (zero where no phase is called)."""
    out = dict.fromkeys(groups, 0)
    for phase in phases:
        group, bit = (phase - 1) // 8 + 1, (phase - 1) % 8
        if group not in out:
            raise ConfigError(f"phase {phase} is beyond the controller's {max(out, default=0) * 8} phases")
        out[group] |= 1 << bit
    return out


def decode_group(group: int, bits: int) -> frozenset[int]:
    """One group's bitmap → the phases it names."""
    if not 0 <= bits <= 255:
        raise SchemaError(f"phase status group {group} holds {bits}, not 0..255")
    return frozenset((group - 1) * 8 + b + 1 for b in range(8) if bits >> b & 1)


@dataclass(frozen=True)
class CabinetStatus:
    """What the cabinet's heads show now, per phase."""

    greens: frozenset[int] = frozenset()
    yellows: frozenset[int] = frozenset()
    reds: frozenset[int] = frozenset()
    walks: frozenset[int] = frozenset()
    ped_clears: frozenset[int] = frozenset()
    ons: frozenset[int] = frozenset()  # the phase is timing (green, yellow or red clearance)


class PhaseLog:
    """Successive statuses → the Indiana phase events between them. Pure.

    A cabinet's status has no "red clearance" bit: a phase that is red but still
    *on* (``phaseStatusGroupPhaseOns``) is in its red clearance, and it ends when
    the phase goes off. The first status only sets the baseline (no events), so a
    relay that starts mid-cycle does not invent a green start.
    """

    def __init__(self) -> None:
        self._last: CabinetStatus | None = None

    def observe(self, tick: int, status: CabinetStatus) -> list[PhaseEvent]:
        last, self._last = self._last, status
        if last is None:
            return []
        events: list[PhaseEvent] = []

        def emit(code: EventCode, phases: Iterable[int]) -> None:
            events.extend(PhaseEvent(tick, code, p) for p in sorted(phases))

        clearing_before = last.ons & last.reds
        ended_yellow = last.yellows - status.yellows
        left_red_clear = clearing_before - (status.ons & status.reds)
        emit(EventCode.PHASE_END_RED_CLEARANCE, left_red_clear)
        emit(EventCode.PHASE_INACTIVE, left_red_clear - status.ons)
        emit(EventCode.PHASE_BEGIN_GREEN, status.greens - last.greens)
        emit(EventCode.PHASE_GREEN_TERMINATION, last.greens - status.greens)
        emit(EventCode.PHASE_BEGIN_YELLOW_CLEARANCE, status.yellows - last.yellows)
        emit(EventCode.PHASE_END_YELLOW_CLEARANCE, ended_yellow)
        emit(EventCode.PHASE_BEGIN_RED_CLEARANCE, ended_yellow & status.reds & status.ons)
        emit(EventCode.PED_BEGIN_WALK, status.walks - last.walks)
        emit(EventCode.PED_BEGIN_CLEARANCE, status.ped_clears - last.ped_clears)
        emit(
            EventCode.PED_BEGIN_SOLID_DONT_WALK,
            (last.ped_clears - status.ped_clears) - status.walks,
        )
        return events


class SnmpLink(Protocol):
    """What the relay needs of an SNMP agent (the cabinet)."""

    def get(self, oids: Sequence[str]) -> dict[str, int]: ...

    def set(self, values: Mapping[str, int]) -> None: ...


class SnmpV2cClient:
    """A small synchronous SNMP v2c client over UDP: GET and SET of INTEGER objects.

    Each request waits ``timeout_s`` for its answer and is sent up to ``retries``
    more times; answers to other requests (late duplicates) are skipped.
    A timeout raises :class:`TransportError`, an error status or a missing
    object :class:`SchemaError` (both say which object).
    """

    def __init__(
        self,
        host: str,
        port: int,
        community: str,
        *,
        timeout_s: float = 0.3,
        retries: int = 1,
        write_community: str | None = None,
    ) -> None:
        self._address = (host, port)
        self._community = community
        self._write_community = write_community or community
        self._timeout_s = timeout_s
        self._retries = retries
        self._ids = itertools.count(secrets.randbelow(1 << 30) + 1)  # unguessable: answers are matched on it
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def close(self) -> None:
        self._sock.close()

    def get(self, oids: Sequence[str]) -> dict[str, int]:
        answer = self._request(_V2C.GetRequestPDU(), [(o, _V2C.Null("")) for o in oids], self._community)
        return {oid: integer_value(oid, value) for oid, value in answer}

    def set(self, values: Mapping[str, int]) -> None:
        self._request(
            _V2C.SetRequestPDU(),
            [(o, _V2C.Integer(v)) for o, v in values.items()],
            self._write_community,
        )

    def _request(self, pdu: Any, varbinds: list[tuple[str, Any]], community: str) -> list[tuple[str, Any]]:
        request_id = next(self._ids) % (1 << 31)
        _V2C.apiPDU.set_defaults(pdu)
        _V2C.apiPDU.set_request_id(pdu, request_id)
        _V2C.apiPDU.set_varbinds(pdu, varbinds)
        message = _V2C.Message()
        _V2C.apiMessage.set_defaults(message)
        _V2C.apiMessage.set_community(message, community)
        _V2C.apiMessage.set_pdu(message, pdu)
        wire = encoder.encode(message)
        for _ in range(self._retries + 1):
            self._sock.sendto(wire, self._address)
            answer = self._await(request_id, [o for o, _ in varbinds])
            if answer is not None:
                return answer
        raise TransportError(
            f"no SNMP answer from {self._address[0]}:{self._address[1]} "
            f"after {self._retries + 1} tries of {self._timeout_s} s"
        )

    def _await(self, request_id: int, asked: list[str]) -> list[tuple[str, Any]] | None:
        deadline = time.monotonic() + self._timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                data, sender = self._sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                return None
            except OSError as exc:  # ICMP port unreachable surfaces here on Linux
                log.debug("SNMP receive: %s", exc)
                time.sleep(min(left, 0.05))
                continue
            if sender[:2] != self._address:
                continue
            answer = decode_answer(data, request_id, asked)
            if answer is not None:
                return answer
        return None


def decode_answer(data: bytes, request_id: int, asked: Sequence[str]) -> list[tuple[str, Any]] | None:
    """The (oid, value) pairs of one datagram from the cabinet that answers ``request_id``.

    ``None`` for a datagram that does not decode (logged) or answers another request;
    :class:`SchemaError` when the cabinet refused the request (its error-status).
    """
    try:
        message, _ = decoder.decode(data, asn1Spec=_V2C.Message())
        pdu = _V2C.apiMessage.get_pdu(message)
        if int(_V2C.apiPDU.get_request_id(pdu)) != request_id:
            return None
    # pyasn1 on hostile bytes raises more than PyAsn1Error (fuzzing: OverflowError for a BER length
    # past an index, IndexError for a sequence of indefinite length with too many members)
    except (PyAsn1Error, ValueError, TypeError, OverflowError, LookupError) as exc:
        # pyasn1's messages can hold its whole schema (100 kB): one line, cut short
        log.warning("undecodable SNMP datagram from the cabinet (%s bytes): %.200s", len(data), exc)
        return None
    return _check(pdu, asked)


def _check(pdu: Any, asked: Sequence[str]) -> list[tuple[str, Any]]:
    status = int(_V2C.apiPDU.get_error_status(pdu))
    if status:
        try:
            index = int(_V2C.apiPDU.get_error_index(pdu))
        except PyAsn1Error:  # an index past the answer's objects: pysnmp's ProtocolError (fuzzing found it)
            index = 0
        what = asked[index - 1] if 0 < index <= len(asked) else "the request"
        raise SchemaError(f"the cabinet refused {what}: SNMP error-status {status}")
    return [(str(oid), value) for oid, value in _V2C.apiPDU.get_varbinds(pdu)]


def integer_value(oid: str, value: Any) -> int:
    """An INTEGER the cabinet answered; :class:`SchemaError` for a missing object or another type."""
    if isinstance(value, _V2C.NoSuchObject | _V2C.NoSuchInstance | _V2C.EndOfMibView):
        raise SchemaError(f"the cabinet has no {oid} (is it an NTCIP 1202 controller?)")
    try:
        return int(value)
    except (TypeError, ValueError, PyAsn1Error) as exc:
        raise SchemaError(f"{oid} is {type(value).__name__}, not an INTEGER") from exc


@dataclass
class RelaySummary:
    ticks: int = 0
    writes: int = 0
    reads: int = 0
    events: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    feed_lost_ticks: int = 0
    cabinet_lost_ticks: int = 0


class CallRelay:
    """One cabinet: Roadside's detector calls in, NTCIP phase calls out, phase events back.

    Each :meth:`tick` (0.1 s of the caller's clock; the refresh counts ticks): take the source's channel
    updates into a fail-safe :class:`CallTable`, write the phase calls when they
    change (and all of them every ``refresh_s``), read the phase status and
    publish the events between this status and the last. A failed write stays
    pending and is retried next tick; a failed read only skips that tick's events.
    """

    def __init__(
        self,
        link: SnmpLink,
        source: CallSource,
        sink: EventSink | None = None,
        *,
        max_phases: int | None = None,
        refresh_s: float = 1.0,
    ) -> None:
        self._link = link
        self._source = source
        self._sink = sink
        self._refresh_ticks = max(1, round(refresh_s * 10))
        self.max_phases = max_phases if max_phases is not None else self._read_max_phases()
        self.groups = groups_for(self.max_phases)
        self.calls = CallTable(frozenset(range(1, self.max_phases + 1)))
        self.log = PhaseLog()
        self.summary = RelaySummary()
        self._written: tuple[dict[int, int], dict[int, int]] | None = None
        self._written_at = -self._refresh_ticks
        self.status: CabinetStatus | None = None

    def _read_max_phases(self) -> int:
        return self._link.get([MAX_PHASES])[MAX_PHASES]

    def tick(self) -> None:
        self.summary.ticks += 1
        for update in self._source.poll():
            self.calls.apply(update)
        self.calls.feed_lost = self._source.feed_lost()
        self.summary.feed_lost_ticks += int(self.calls.feed_lost)
        vehicle = call_groups(self.calls.vehicle_calls(), self.groups)
        ped = call_groups(self.calls.ped_calls(), self.groups)
        lost = False
        due = self.summary.ticks - self._written_at >= self._refresh_ticks
        if (vehicle, ped) != self._written or due:
            lost |= not self._write(vehicle, ped)
        lost |= not self._read()
        self.summary.cabinet_lost_ticks += int(lost)

    def _write(self, vehicle: dict[int, int], ped: dict[int, int]) -> bool:
        values = {f"{CONTROL_VEH_CALL}.{g}": bits for g, bits in vehicle.items()}
        values |= {f"{CONTROL_PED_CALL}.{g}": bits for g, bits in ped.items()}
        try:
            self._link.set(values)
        except (TransportError, SchemaError) as exc:
            self._count("write_" + _reason(exc), exc)
            return False
        self._written, self._written_at = (vehicle, ped), self.summary.ticks
        self.summary.writes += 1
        return True

    def _read(self) -> bool:
        oids = [f"{column}.{g}" for column in _STATUS_COLUMNS.values() for g in self.groups]
        try:
            raw = self._link.get(oids)
            status = CabinetStatus(
                **{
                    name: frozenset().union(*(decode_group(g, raw[f"{column}.{g}"]) for g in self.groups))
                    for name, column in _STATUS_COLUMNS.items()
                }
            )
        except KeyError as exc:
            self._count("read_schema", SchemaError(f"the cabinet's answer left out {exc}"))
            return False
        except (TransportError, SchemaError) as exc:
            self._count("read_" + _reason(exc), exc)
            return False
        self.summary.reads += 1
        self.status = status
        events = self.log.observe(self.summary.ticks, status)
        for event in events:
            self.summary.events[event.code] = self.summary.events.get(event.code, 0) + 1
        if events and self._sink is not None:
            self._sink.publish(events)
        return True

    def _count(self, reason: str, exc: Exception) -> None:
        seen = self.summary.errors.get(reason, 0)
        self.summary.errors[reason] = seen + 1
        if seen == 0 or (seen + 1) % 100 == 0:  # the first, then every hundredth: a dead link is one story
            log.warning("cabinet link %s (%s so far): %s", reason, seen + 1, exc)


def _reason(exc: Exception) -> str:
    return "timeout" if isinstance(exc, TransportError) else "refused"
