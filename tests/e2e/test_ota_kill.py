"""``kill -9`` in the middle of a model update: the restarted agent boots a model that verifies and counts on.

The agent runs as ``roadside agent run`` (a real process to kill). The
updater's ``ota.pause_at`` test seam makes it sleep at a named durable step,
the test waits for the log line that says it got there, and SIGKILLs it:

=============  =================================================  ==================
killed at      what is on disk                                    boots
=============  =================================================  ==================
downloaded     a ``.part`` file, pointer untouched                shipped (old)
shadow         the verified file staged, pointer untouched        shipped (old)
moved          the file in ``installed/``, pointer untouched      shipped (old)
swapped        the pointer names the new model (not yet running)  1.1.0 (new)
=============  =================================================  ==================

The install the kill interrupted is then taken up again (the agent journals the
command until its last report, issue 14): it ends ``active`` on 1.1.0, where a
short shadow lets it.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roadside.edge.inference.engine import DEFAULT_MODEL
from roadside.edge.ota.updater import ModelUpdater, ShippedModel
from roadside.shared.bundle import write_bundle
from tests.e2e.conftest import Loop
from tests.e2e.ota_rig import SHIPPED_VERSION, OtaRig, ota_rig, wait_for
from tests.e2e.test_agent_resilience import start_agent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def rig(loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OtaRig]:
    with ota_rig(loop, tmp_path / "release", monkeypatch) as rig:
        yield rig


class KillRig:
    def __init__(self, loop: Loop, rig: OtaRig, base: Path, device: str) -> None:
        self.rig = rig
        self.device = device
        self.base = base
        self.bundle = base / "bundle.json"
        write_bundle(loop.enroll(device), self.bundle)
        self.root = base / "root.json"
        self.root.write_bytes(rig.release.first_root)
        self.state = base / "state"
        self.log = base / "agent.log"

    def config(self, pause_at: str | None) -> Path:
        path = self.base / "agent.toml"
        pause = f'pause_at = "{pause_at}"\npause_s = 120\n' if pause_at else ""
        path.write_text(
            f"interval_s = 1\nheartbeat_s = 1.0\n"
            f'[outbox]\npath = "{self.state / "outbox.db"}"\n'
            f'[ota]\nrepo_url = "{self.rig.url}"\ntrusted_root = "{self.root}"\nshadow_every = 1\n{pause}'
            '[[sources]]\ntype = "synthetic"\nname = "cam0"\nseed = 3\nfps = 10.0\n'
        )
        return path

    def start(self, pause_at: str | None = None) -> subprocess.Popen[bytes]:
        seen = len(self.rig.health)
        agent = start_agent(self.bundle, self.config(pause_at), self.log)
        # A heartbeat at the hub: the agent is up, connected and subscribed to its commands.
        assert wait_for(lambda: len([d for d, _ in self.rig.health[seen:] if d == self.device]) > 0, 60), (
            self.tail()
        )
        return agent

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def logged(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text()

    def booted(self) -> tuple[str, str, str]:
        """What a fresh updater over the agent's state would boot: (version, source, sha256 of the file)."""
        shipped = ShippedModel(DEFAULT_MODEL, "detector", SHIPPED_VERSION)
        updater = ModelUpdater(
            self.state, self.rig.url, self.rig.release.first_root, "0.1.0", 1 << 26, shipped=shipped
        )
        choice = updater.boot()
        return choice.version, choice.source, hashlib.sha256(choice.path.read_bytes()).hexdigest()


def kill(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)


def restart_and_check(kr: KillRig, expected: str, resumed: str | None = None) -> None:
    """The restart boots ``expected``; with ``resumed``, the interrupted install then ends active on it."""
    final = resumed or expected
    counted_before = kr.rig.counted_with(kr.device, final)
    health_seen = len(kr.rig.health)
    reports_seen = len(kr.rig.states(kr.device))
    log_from = kr.log.stat().st_size if kr.log.exists() else 0
    second = kr.start()
    try:
        # The booted version is the first model the restarted agent loads. Its first health report
        # may already name the resumed install's version: a resumed install can finish in under a
        # second, before that report is sent.
        loaded = re.findall(r"model (\S+) loaded on", kr.log.read_bytes()[log_from:].decode(errors="replace"))
        assert loaded[:1] == [expected], kr.tail()
        if resumed is None:
            latest = [v for d, v in kr.rig.health[health_seen:] if d == kr.device]
            assert latest[0] == expected, kr.tail()
        if resumed is not None:  # taken up again, not left for the hub's install timeout
            assert wait_for(lambda: "active" in kr.rig.states(kr.device, resumed)[reports_seen:], 90), (
                kr.tail()
            )
            assert kr.logged("resuming the install of detector 1.1.0") or expected == resumed, kr.tail()
        assert wait_for(lambda: kr.rig.counted_with(kr.device, final) > counted_before, 60), kr.tail()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    version, source, digest = kr.booted()
    assert version == final
    wanted = kr.rig.sha256(final) if final != SHIPPED_VERSION else _sha256(DEFAULT_MODEL)
    assert (source, digest) == ("shipped" if final == SHIPPED_VERSION else "active", wanted)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("step", "expected"),
    [("downloaded", SHIPPED_VERSION), ("moved", SHIPPED_VERSION), ("swapped", "1.1.0")],
)
def test_kill_9_at_a_durable_step_boots_a_verified_model(
    loop: Loop, rig: OtaRig, tmp_path: Path, step: str, expected: str
) -> None:
    kr = KillRig(loop, rig, tmp_path, f"dev-kill-{step}")
    rig.publish("1.1.0")
    first = kr.start(pause_at=step)
    try:
        ok, _ = rig.send(
            kr.device, action="install", name="detector", version="1.1.0", shadow_s=0.5, min_frames=2
        )
        assert ok
        assert wait_for(lambda: kr.logged(f"ota checkpoint {step} reached"), 90), kr.tail()
    finally:
        kill(first)
    if step == "downloaded":
        assert list((kr.state / "models" / "staging").rglob("*.part")), "killed mid-download"
    restart_and_check(kr, expected, resumed="1.1.0")


def test_kill_9_during_shadow_boots_the_old_model(loop: Loop, rig: OtaRig, tmp_path: Path) -> None:
    kr = KillRig(loop, rig, tmp_path, "dev-kill-shadow")
    rig.publish("1.1.0")
    first = kr.start()
    try:
        ok, _ = rig.send(
            kr.device, action="install", name="detector", version="1.1.0", shadow_s=600, min_frames=2
        )
        assert ok
        rig.wait_state(kr.device, "shadow", 90)
    finally:
        kill(first)
    assert (kr.state / "models" / "staging" / "detector" / "1.1.0.onnx").is_file()
    shadows = kr.rig.states(kr.device, "1.1.0").count("shadow")
    restart_and_check(kr, SHIPPED_VERSION)
    assert kr.rig.states(kr.device, "1.1.0").count("shadow") > shadows  # its shadow test began again
