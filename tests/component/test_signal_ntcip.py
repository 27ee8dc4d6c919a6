"""Roadside's calls into a cabinet over NTCIP 1202 (SNMP v2c on loopback UDP) and its phases back (issue 11).

The cabinet is simulated (tests/support/ntcip_cabinet.py): an SNMP agent over
Roadside's own actuated controller, stepped by the test in lock step with the
relay, so every assertion is about what went over the wire.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from roadside.cli import build
from roadside.shared.errors import ConfigError, SchemaError, TransportError
from roadside.shared.signals import EventCode
from roadside.signalcontrol import ntcip
from roadside.signalcontrol.calls import DetectorInput
from roadside.signalcontrol.core import PhaseEvent
from roadside.signalcontrol.ntcip import CabinetStatus, CallRelay, PhaseLog, SnmpV2cClient
from roadside.signalcontrol.timing import TimingPlan
from tests.support.ntcip_cabinet import SimulatedCabinet

pytestmark = pytest.mark.timeout(60)


class Source:
    """A call source the test feeds by hand (the hub's stream in the product)."""

    def __init__(self) -> None:
        self.pending: list[DetectorInput] = []
        self.lost = False

    def poll(self) -> Iterable[DetectorInput]:
        out, self.pending = self.pending, []
        return out

    def feed_lost(self) -> bool:
        return self.lost


class Sink:
    def __init__(self) -> None:
        self.events: list[PhaseEvent] = []

    def publish(self, events: Iterable[PhaseEvent]) -> None:
        self.events.extend(events)


@pytest.fixture
def cabinet() -> Iterator[SimulatedCabinet]:
    with SimulatedCabinet(TimingPlan.standard()) as cab:
        yield cab


def link(cab: SimulatedCabinet, **kw: object) -> SnmpV2cClient:
    return SnmpV2cClient(
        "127.0.0.1",
        cab.port,
        cab.community,
        write_community=cab.write_community,
        **kw,  # type: ignore[arg-type]
    )


def run(relay: CallRelay, cab: SimulatedCabinet, ticks: int) -> None:
    for _ in range(ticks):
        relay.tick()
        cab.tick()


@given(st.sets(st.integers(1, 40)), st.integers(40, 255))
def test_phase_groups_round_trip(phases: set[int], max_phases: int) -> None:
    groups = ntcip.groups_for(max_phases)
    bitmaps = ntcip.call_groups(phases, groups)
    assert set(bitmaps) == set(groups)
    assert all(0 <= b <= 255 for b in bitmaps.values())
    assert frozenset().union(*(ntcip.decode_group(g, b) for g, b in bitmaps.items())) == phases


def test_group_encoding_follows_ntcip_and_refuses_what_cannot_be() -> None:
    assert ntcip.call_groups({1, 8, 9}, ntcip.groups_for(16)) == {1: 0b1000_0001, 2: 0b1}
    with pytest.raises(ConfigError, match="phase 9 is beyond the controller's 8 phases"):
        ntcip.call_groups({9}, ntcip.groups_for(8))
    with pytest.raises(ConfigError, match=re.escape("maxPhases must be 1..255")):
        ntcip.groups_for(0)
    with pytest.raises(SchemaError, match="holds 300"):
        ntcip.decode_group(1, 300)


def test_phase_log_turns_statuses_into_indiana_events() -> None:
    log = PhaseLog()
    red = CabinetStatus(reds=frozenset({2}))
    assert log.observe(0, red) == []  # the first status is the baseline
    steps = [
        CabinetStatus(greens=frozenset({2}), ons=frozenset({2}), walks=frozenset({2})),
        CabinetStatus(greens=frozenset({2}), ons=frozenset({2}), ped_clears=frozenset({2})),
        CabinetStatus(greens=frozenset({2}), ons=frozenset({2})),
        CabinetStatus(yellows=frozenset({2}), ons=frozenset({2})),
        CabinetStatus(reds=frozenset({2}), ons=frozenset({2})),
        CabinetStatus(reds=frozenset({2})),
    ]
    got = [(e.tick, e.code, e.param) for t, s in enumerate(steps, 1) for e in log.observe(t, s)]
    assert got == [
        (1, EventCode.PHASE_BEGIN_GREEN, 2),
        (1, EventCode.PED_BEGIN_WALK, 2),
        (2, EventCode.PED_BEGIN_CLEARANCE, 2),
        (3, EventCode.PED_BEGIN_SOLID_DONT_WALK, 2),
        (4, EventCode.PHASE_GREEN_TERMINATION, 2),
        (4, EventCode.PHASE_BEGIN_YELLOW_CLEARANCE, 2),
        (5, EventCode.PHASE_END_YELLOW_CLEARANCE, 2),
        (5, EventCode.PHASE_BEGIN_RED_CLEARANCE, 2),
        (6, EventCode.PHASE_END_RED_CLEARANCE, 2),
        (6, EventCode.PHASE_INACTIVE, 2),
    ]


def test_a_call_reaches_the_cabinet_and_its_green_comes_back(cabinet: SimulatedCabinet) -> None:
    source, sink = Source(), Sink()
    relay = CallRelay(link(cabinet), source, sink)
    assert relay.max_phases == 8  # read from the cabinet's maxPhases
    run(relay, cabinet, 5)
    source.pending.append(DetectorInput(channel=7, phase=4, pedestrian=False, called=True))
    source.pending.append(DetectorInput(channel=9, phase=6, pedestrian=True, called=True))
    run(relay, cabinet, 1)
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == {4}
    assert cabinet.calls(ntcip.CONTROL_PED_CALL) == {6}
    run(relay, cabinet, 600)
    served = {phase for _, phase in cabinet.served}
    assert {4, 6} <= served
    logged = {(e.code, e.param) for e in sink.events}
    assert (EventCode.PHASE_BEGIN_GREEN, 4) in logged
    assert (EventCode.PED_BEGIN_WALK, 6) in logged
    assert {(EventCode.PHASE_BEGIN_YELLOW_CLEARANCE, 6), (EventCode.PHASE_BEGIN_RED_CLEARANCE, 6)} <= logged
    assert relay.summary.errors == {}
    # one write for the change, then the periodic refresh (1 s = 10 ticks): never one per tick
    assert relay.summary.writes <= 2 + relay.summary.ticks // 10


def test_a_lost_feed_calls_every_phase(cabinet: SimulatedCabinet) -> None:
    source = Source()
    relay = CallRelay(link(cabinet), source)
    source.lost = True
    run(relay, cabinet, 1)
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == set(range(1, 9))
    source.lost = False
    run(relay, cabinet, 1)
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == set()


def test_lost_datagrams_refused_writes_and_a_reboot_heal(cabinet: SimulatedCabinet) -> None:
    source = Source()
    relay = CallRelay(link(cabinet, timeout_s=0.05, retries=0), source)
    cabinet.drop_requests = 1  # the write is lost
    source.pending.append(DetectorInput(channel=1, phase=2, pedestrian=False, called=True))
    run(relay, cabinet, 1)
    assert relay.summary.errors == {"write_timeout": 1}
    run(relay, cabinet, 1)  # kept pending, written next tick
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == {2}
    cabinet.refuse_writes = True
    source.pending.append(DetectorInput(channel=1, phase=2, pedestrian=False, called=False))
    run(relay, cabinet, 3)
    assert relay.summary.errors["write_refused"] == 3
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == {2}
    cabinet.refuse_writes = False
    source.pending.append(DetectorInput(channel=1, phase=2, pedestrian=False, called=True))
    run(relay, cabinet, 1)
    cabinet.reboot()
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == set()
    run(relay, cabinet, 11)  # the refresh (1 s) puts the call back
    assert cabinet.calls(ntcip.CONTROL_VEH_CALL) == {2}


def test_the_relay_keeps_the_call_up_against_the_cabinets_backup_timer(cabinet: SimulatedCabinet) -> None:
    cabinet.backup_ticks = 15  # 1.5 s without a SET drops external calls
    source = Source()
    relay = CallRelay(link(cabinet), source, refresh_s=1.0)
    source.pending.append(DetectorInput(channel=3, phase=8, pedestrian=False, called=True))
    run(relay, cabinet, 300)
    assert 8 in {phase for _, phase in cabinet.served}
    assert cabinet.sets >= 25


def test_wrong_community_and_non_ntcip_agents_give_clear_errors(cabinet: SimulatedCabinet) -> None:
    client = SnmpV2cClient("127.0.0.1", cabinet.port, "wrong", timeout_s=0.05, retries=1)
    with pytest.raises(TransportError, match=r"no SNMP answer .* after 2 tries"):
        client.get([ntcip.MAX_PHASES])
    client.close()
    client = link(cabinet)
    with pytest.raises(SchemaError, match=re.escape("the cabinet has no 1.3.6.1.2.1.1.1.0")):
        client.get(["1.3.6.1.2.1.1.1.0"])
    with pytest.raises(SchemaError, match=re.escape("the cabinet refused 1.3.6.1.4.1.1206.4.2.1.1.1.0")):
        client.set({ntcip.MAX_PHASES: 4})
    client.close()


def test_garbage_from_the_cabinets_address_is_skipped() -> None:
    """A datagram that is not SNMP (or answers another request) costs nothing but a log line."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = SnmpV2cClient("127.0.0.1", server.getsockname()[1], "public", timeout_s=0.3, retries=0)
    try:
        with SimulatedCabinet(TimingPlan.standard()) as real:

            def serve() -> None:
                data, peer = server.recvfrom(65_535)
                server.sendto(b"\x30\x03\x02\x01", peer)  # truncated BER
                server.sendto(b"not snmp at all", peer)
                answer = real._answer(data)
                assert answer is not None
                server.sendto(answer, peer)

            thread = threading.Thread(target=serve)
            thread.start()
            assert client.get([ntcip.MAX_PHASES]) == {ntcip.MAX_PHASES: 8}
            thread.join()
    finally:
        client.close()
        server.close()


def test_relay_cli_refuses_bad_settings_with_clear_errors(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("k")
    community = tmp_path / "community"
    community.write_text("")
    runner = CliRunner()
    base = ["signal", "relay", "--signal", "s1", "--hub", "http://127.0.0.1:1", "--token-file", str(token)]
    result = runner.invoke(
        build(), [*base, "--cabinet", "127.0.0.1:1161", "--write-community-file", str(community)]
    )
    assert result.exit_code == 2
    assert "is empty: put the SNMP write community in it" in result.output
    community.write_text("private")
    result = runner.invoke(
        build(), [*base, "--cabinet", "127.0.0.1:x", "--write-community-file", str(community)]
    )
    assert result.exit_code == 2
    assert "'x' is not a port number" in result.output
