"""A simulated NTCIP 1202 cabinet for tests: an SNMP v2c agent on loopback UDP.

No signal controller can sit on this machine, so the tests stand one up: a UDP
agent that answers GET and SET of the NTCIP 1202 phase objects the relay uses,
and behind them Roadside's own actuated controller, stepped by the test, whose
calls are whatever the last SETs placed. As a real controller does, it clears
the external calls when no SET came for ``backup_ticks`` (backup mode), and it
can drop datagrams or refuse writes on demand.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from roadside.shared.signals import EventCode
from roadside.signalcontrol import ntcip
from roadside.signalcontrol.core import ActuatedController, Ped, Vehicle
from roadside.signalcontrol.timing import TimingPlan

V2C: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]


class SimulatedCabinet:
    def __init__(self, plan: TimingPlan, *, max_phases: int = 8, backup_ticks: int = 50) -> None:
        self.controller = ActuatedController(plan)
        self.max_phases = max_phases
        self.backup_ticks = backup_ticks
        self.community = "public"
        self.write_community = "private"
        self.values: dict[str, int] = {ntcip.MAX_PHASES: max_phases}
        groups = ntcip.groups_for(max_phases)
        for column in (ntcip.CONTROL_VEH_CALL, ntcip.CONTROL_PED_CALL):
            self.values |= {f"{column}.{g}": 0 for g in groups}
        self._status_columns = {
            "reds": ntcip.STATUS_REDS,
            "yellows": ntcip.STATUS_YELLOWS,
            "greens": ntcip.STATUS_GREENS,
            "walks": ntcip.STATUS_WALKS,
            "ped_clears": ntcip.STATUS_PED_CLEARS,
            "ons": ntcip.STATUS_PHASE_ONS,
        }
        self._clearing: set[int] = set()
        self.served: list[tuple[int, int]] = []  # (tick, phase) of every green start
        self.sets = 0
        self.drop_requests = 0  # datagrams to ignore, counting down
        self.refuse_writes = False
        self._since_set = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)  # so that the serving thread sees the stop promptly
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="simulated-cabinet", daemon=True)
        self._publish_status()

    def __enter__(self) -> SimulatedCabinet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def calls(self, column: str) -> frozenset[int]:
        with self._lock:
            groups = ntcip.groups_for(self.max_phases)
            return frozenset().union(*(ntcip.decode_group(g, self.values[f"{column}.{g}"]) for g in groups))

    def reboot(self) -> None:
        """Power cycle: the external calls are gone until the relay writes them again."""
        with self._lock:
            for key in self.values:
                if key.startswith((ntcip.CONTROL_VEH_CALL, ntcip.CONTROL_PED_CALL)):
                    self.values[key] = 0

    def tick(self) -> None:
        """0.1 s of the cabinet: the controller serves the calls the network placed."""
        vehicle = self.calls(ntcip.CONTROL_VEH_CALL)
        ped = self.calls(ntcip.CONTROL_PED_CALL)
        with self._lock:
            self._since_set += 1
            if self._since_set > self.backup_ticks:  # backup mode: external calls dropped
                vehicle, ped = frozenset(), frozenset()
        step = self.controller.step(vehicle, ped)
        for event in step.events:
            if event.code == EventCode.PHASE_BEGIN_RED_CLEARANCE:
                self._clearing.add(event.param)
            elif event.code == EventCode.PHASE_END_RED_CLEARANCE:
                self._clearing.discard(event.param)
            elif event.code == EventCode.PHASE_BEGIN_GREEN:
                self.served.append((step.display.tick, event.param))
        self._display = step.display
        self._publish_status()

    def _publish_status(self) -> None:
        display = getattr(self, "_display", None)
        phases = range(1, self.max_phases + 1)
        shown: dict[str, set[int]] = {k: set() for k in self._status_columns}
        for p in phases:
            head = display.vehicle.get(p, Vehicle.RED) if display else Vehicle.RED
            shown[{Vehicle.GREEN: "greens", Vehicle.YELLOW: "yellows", Vehicle.RED: "reds"}[head]].add(p)
            walk = display.ped.get(p) if display else None
            if walk is Ped.WALK:
                shown["walks"].add(p)
            elif walk is Ped.CLEAR:
                shown["ped_clears"].add(p)
        shown["ons"] = shown["greens"] | shown["yellows"] | (self._clearing & set(phases))
        with self._lock:
            for name, column in self._status_columns.items():
                for g, bits in ntcip.call_groups(shown[name], ntcip.groups_for(self.max_phases)).items():
                    self.values[f"{column}.{g}"] = bits

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65_535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self.drop_requests > 0:
                    self.drop_requests -= 1
                    continue
            answer = self._answer(data)
            if answer is not None:
                try:
                    self._sock.sendto(answer, peer)
                except OSError:
                    return

    def _answer(self, data: bytes) -> bytes | None:
        try:
            message, _ = decoder.decode(data, asn1Spec=V2C.Message())
        except Exception:  # an agent ignores what it cannot parse
            return None
        community = str(V2C.apiMessage.get_community(message))
        pdu = V2C.apiMessage.get_pdu(message)
        response = V2C.apiPDU.get_response(pdu)
        V2C.apiPDU.set_error_status(response, 0)
        varbinds = [(str(oid), value) for oid, value in V2C.apiPDU.get_varbinds(pdu)]
        out: list[tuple[str, Any]] = []
        with self._lock:
            if pdu.isSameTypeWith(V2C.SetRequestPDU()):
                if community != self.write_community or self.refuse_writes:
                    V2C.apiPDU.set_error_status(response, 16 if community != self.write_community else 5)
                    V2C.apiPDU.set_error_index(response, 1)
                    out = varbinds
                elif any(oid not in self.values or oid == ntcip.MAX_PHASES for oid, _ in varbinds):
                    bad = next(
                        i
                        for i, (o, _) in enumerate(varbinds, 1)
                        if o not in self.values or o == ntcip.MAX_PHASES
                    )
                    V2C.apiPDU.set_error_status(response, 17)  # notWritable
                    V2C.apiPDU.set_error_index(response, bad)
                    out = varbinds
                else:
                    for oid, value in varbinds:
                        self.values[oid] = int(value)
                    self.sets += 1
                    self._since_set = 0
                    out = varbinds
            elif community not in (self.community, self.write_community):
                return None  # v2c agents stay silent to a wrong community
            else:
                for oid, _ in varbinds:
                    value = self.values.get(oid)
                    out.append((oid, V2C.Integer(value) if value is not None else V2C.NoSuchObject("")))
        V2C.apiPDU.set_varbinds(response, out)
        reply = V2C.Message()
        V2C.apiMessage.set_defaults(reply)
        V2C.apiMessage.set_community(reply, community)
        V2C.apiMessage.set_pdu(reply, response)
        return bytes(encoder.encode(reply))
