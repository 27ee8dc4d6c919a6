"""A real hub, Mosquitto and two agents, and Debian's Chromium driven by Playwright, shared by a module.

The hub runs in this process (so a test can reach its console's session store);
the agents run as ``roadside agent run`` processes on synthetic streams, as in
``roadside demo``. Chromium is the Debian package (``/usr/bin/chromium``):
Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.shared.bundle import BrokerAddress
from roadside.sim.demo import start_agent, stop_agents

CHROMIUM = Path(os.environ.get("ROADSIDE_CHROMIUM", "/usr/bin/chromium"))
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DEVICES = (("demo-01", "main-st"), ("demo-02", "oak-ave"))
SPARE = ("spare-01", "elm-st")  # enrolled, no agent: a rollout to it waits, so it can be paused and resumed
MODEL = ("detector", "9.9.0")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

playwright_sync = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/setup does)", allow_module_level=True
    )


@dataclass
class ConsoleRig:
    home: HubHome
    hub: Hub
    registry: Registry
    admin_token: str
    viewer_token: str
    shots: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # script errors in any signed-in page

    @property
    def url(self) -> str:
        return self.hub.api_url

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def _agent_config(workdir: Path, device_id: str, seed: int) -> Path:
    config = {
        "sources": [{"type": "synthetic", "name": "cam0", "seed": seed, "fps": 5, "realtime": True}],
        "interval_s": 2,
        "heartbeat_s": 2,
        "outbox": {"path": str(workdir / "agents" / device_id / "outbox.db")},
    }
    path = workdir / "agents" / device_id / "agent.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def console_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleRig]:
    root = tmp_path_factory.mktemp("console")
    home = init_home(root / "hub", ["localhost"], ["127.0.0.1"])
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    registry = Registry(home.registry_url)
    hub: Hub | None = None
    agents: list[subprocess.Popen[bytes]] = []
    with broker:
        try:
            address = BrokerAddress(host="127.0.0.1", port=broker.port)
            bundles = [enroll_device(home, registry, d, s, address)[1] for d, s in (*DEVICES, SPARE)]
            broker.reload_acl(acl_devices(registry))
            admin = registry.api_clients.create("ops-admin", ["admin"], "traffic ops")
            viewer = registry.api_clients.create("ops-viewer", ["read:telemetry"], "dashboard")
            registry.models.publish(*MODEL, "ab" * 32, 1234, {"opset": 17, "labels": ["car", "bus"]})
            settings = HubSettings(home=home.root, broker_port=broker.port, api_port=0, batch_wait_s=0.05)
            hub = Hub(settings)
            hub.start()
            assert hub.wait_ready(15), broker.log_tail()
            for seed, ((device_id, _), bundle) in enumerate(zip(DEVICES, bundles, strict=False)):
                agents.append(start_agent(root, device_id, bundle, _agent_config(root, device_id, seed)))
            shots = Path(os.environ.get("ROADSIDE_CONSOLE_SHOTS", str(root / "screenshots")))
            shots.mkdir(parents=True, exist_ok=True)
            yield ConsoleRig(home, hub, registry, admin, viewer, shots, agents)
        finally:
            stop_agents(agents)
            if hub is not None:
                hub.stop()
            registry.close()


@pytest.fixture(scope="module")
def browser(console_rig: ConsoleRig) -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _console_error(rig: ConsoleRig, url: str, message: Any) -> None:
    """Script errors count; a 4xx page (a refused form, which the tests expect) logs one too, and does not."""
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        rig.page_errors.append(f"{url}: console: {message.text}")


def sign_in(browser: Any, rig: ConsoleRig, token: str, **context_options: Any) -> Any:
    """A new browser context (its own cookies) signed in with ``token``; returns its page."""
    context = browser.new_context(viewport=DESKTOP, base_url=rig.url, **context_options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("pageerror", lambda error: rig.page_errors.append(f"{page.url}: {error}"))
    page.on("console", lambda message: _console_error(rig, page.url, message))
    page.goto("/ui/overview")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/overview$"))
    return page


@pytest.fixture
def admin_page(browser: Any, console_rig: ConsoleRig) -> Iterator[Any]:
    page = sign_in(browser, console_rig, console_rig.admin_token)
    yield page
    page.context.close()


@pytest.fixture
def viewer_page(browser: Any, console_rig: ConsoleRig) -> Iterator[Any]:
    page = sign_in(browser, console_rig, console_rig.viewer_token)
    yield page
    page.context.close()


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.25)


def csrf_of(page: Any) -> str:
    """The session's CSRF token as the page carries it (htmx sends it from <body hx-headers>)."""
    headers = json.loads(page.get_attribute("body", "hx-headers"))
    return str(headers["X-CSRF-Token"])


def copy_screenshot(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
