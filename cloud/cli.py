"""``roadside pki|device|hub|broker|audit ...``, and :func:`register` for the hub's other sub-commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, RegistryUrlOption, actor, fail, open_registry
from roadside.cloud.console.link_cli import ui_link
from roadside.shared.errors import ConfigError, RoadsideError

pki_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="The hub's certificate authority and keys."
)
device_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Enroll, list and revoke devices.")
hub_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Run the hub; manage API tokens.")
audit_app = typer.Typer(no_args_is_help=True, add_completion=False, help="The hash-chained audit log.")
broker_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Run a Mosquitto configured by the hub."
)


@pki_app.command("init")
def pki_init(
    home: HomeOption = DEFAULT_HOME,
    broker_host: Annotated[
        list[str] | None, typer.Option(help="DNS names in the broker's certificate.")
    ] = None,
    broker_ip: Annotated[
        list[str] | None, typer.Option(help="IP addresses in the broker's certificate.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing CA and keys.")] = False,
) -> None:
    """Create the CA, the hub's and the broker's certificates, and the hub's envelope keys."""
    from roadside.cloud.home import init_home

    try:
        init_home(home, broker_host or ["localhost"], broker_ip or ["127.0.0.1"], force=force)
    except RoadsideError as exc:
        raise fail(exc) from exc
    typer.echo(f"hub home ready at {home}")


@device_app.command("enroll")
def device_enroll(
    device_id: Annotated[str, typer.Argument(help="Unique device id, e.g. pole-0042.")],
    site: Annotated[str, typer.Option(help="Site (intersection, corridor) the device belongs to.")],
    home: HomeOption = DEFAULT_HOME,
    broker_host: Annotated[str, typer.Option(help="Broker address the device connects to.")] = "localhost",
    broker_port: Annotated[int, typer.Option(help="Broker TLS port.")] = 8883,
    out: Annotated[Path | None, typer.Option(help="Where to write the bundle.")] = None,
    repo_url: Annotated[
        str | None,
        typer.Option(
            help="Where the device fetches model updates (default https://<broker-host>:8443 "
            "when the home has a model repository)."
        ),
    ] = None,
) -> None:
    """Issue the device's certificate and keys as one bundle and register it on the hub."""
    from roadside.cloud.broker.mosquitto import running_broker
    from roadside.cloud.home import HubHome, enroll_device
    from roadside.cloud.registry import Registry
    from roadside.shared.bundle import BrokerAddress

    hub_home = HubHome(home)
    registry = Registry(hub_home.registry_url)
    try:
        registry.create_schema()
        _, path = enroll_device(
            hub_home,
            registry,
            device_id,
            site,
            BrokerAddress(host=broker_host, port=broker_port),
            out,
            actor(),
            repo_url=repo_url or (f"https://{broker_host}:8443" if hub_home.has_repository() else None),
        )
    except RoadsideError as exc:
        raise fail(exc) from exc
    finally:
        registry.close()
    typer.echo(
        f"enrolled {device_id} at {site}; bundle written to {path} (mode 0600, contains private keys: "
        "copy it to the device securely, then delete it here)"
    )
    if running_broker(hub_home.broker_dir) is None:
        typer.echo(
            f"broker ACL regenerated at {hub_home.acl_file}; no broker runs from {home}: "
            "make yours reload it (compose's broker container does so by itself)"
        )


@device_app.command("list")
def device_list(home: HomeOption = DEFAULT_HOME) -> None:
    """The registered devices."""
    from roadside.cloud.home import HubHome
    from roadside.cloud.registry import Registry

    registry = Registry(HubHome(home).registry_url)
    try:
        for d in registry.devices.list():
            typer.echo(f"{d.device_id}\t{d.site}\t{d.status}\tlast seen {d.last_seen_at or 'never'}")
    finally:
        registry.close()


@device_app.command("revoke")
def device_revoke(device_id: str, home: HomeOption = DEFAULT_HOME) -> None:
    """Refuse the device from now on: registry, CRL, broker ACL, and its open connection."""
    from roadside.cloud.broker.mosquitto import running_broker
    from roadside.cloud.home import HubHome, revoke_device

    hub_home = HubHome(home)
    with open_registry(home) as registry:
        if registry.devices.get(device_id) is None:
            raise fail(ConfigError(f"device {device_id!r} is not enrolled"))
        ended = revoke_device(hub_home, registry, device_id, actor=actor())
    typer.echo(f"revoked {device_id}; running hubs refuse it within seconds")
    if running_broker(hub_home.broker_dir) is None:
        typer.echo(
            f"no broker runs from {home}: make yours reload {hub_home.acl_file} and "
            f"{hub_home.broker_crl_file} (compose's broker container does so by itself)"
        )
    elif not ended:
        typer.echo(f"warning: could not end {device_id}'s open connection; see the log", err=True)


@hub_app.command("run")
def hub_run(
    home: HomeOption = DEFAULT_HOME,
    config: Annotated[Path | None, typer.Option(help="Hub config (TOML or JSON).")] = None,
    log_level: str = "INFO",
    workers: Annotated[
        int,
        typer.Option(
            help="Extra ingest-only processes on the same shared subscription (one per spare core)."
        ),
    ] = 0,
    api_port: Annotated[int | None, typer.Option(help="Override the API port (-1: no API).")] = None,
    client_id: Annotated[str | None, typer.Option(help="Override the MQTT client id.")] = None,
    parent_pid: Annotated[int, typer.Option(hidden=True)] = 0,
) -> None:
    """Run ingest and the API until SIGTERM or Ctrl-C."""
    from roadside.cloud.hub import Hub
    from roadside.cloud.settings import load_hub_settings
    from roadside.shared.logs import setup_logging

    setup_logging(log_level)
    try:
        settings = load_hub_settings(config, home=home, api_port=api_port, client_id=client_id)
        hub = Hub(settings)
        hub.start()
    except RoadsideError as exc:
        raise fail(exc) from exc
    typer.echo(f"hub API on {hub.api_url}" if hub.api_url else "hub ingest worker running")
    children = [_start_worker(home, config, log_level, settings.client_id, i) for i in range(1, workers + 1)]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A worker that dies is started again under its client id: the broker holds its persistent
    # session and what it queued there, which only that id collects (found by bench.chaos).
    while not stop.wait(1.0):
        if parent_pid and os.getppid() != parent_pid:
            # The `hub run --workers` that started this worker was killed (SIGKILL sends no signal on):
            # a worker left running would hold its share of the uplink in a session nobody restarts.
            typer.echo("the hub that started this ingest worker is gone; stopping", err=True)
            break
        for i, child in enumerate(children):
            if child.poll() is not None:
                typer.echo(f"ingest worker {i + 1} exited ({child.returncode}); starting it again", err=True)
                children[i] = _start_worker(home, config, log_level, settings.client_id, i + 1)
    for child in children:
        child.terminate()
    hub.stop()
    for child in children:
        child.wait(timeout=60)


def _start_worker(
    home: Path, config: Path | None, log_level: str, client_id: str, index: int
) -> subprocess.Popen[bytes]:
    """An ingest-only hub process: its own MQTT session (client id) in the same shared group, no API."""
    command = [
        sys.executable,
        "-c",
        "from roadside.cli import main; main()",
        "hub",
        "run",
        "--home",
        str(home),
    ]
    command += ["--log-level", log_level, "--api-port", "-1", "--client-id", f"{client_id}-w{index}"]
    command += ["--parent-pid", str(os.getpid())]
    command += ["--config", str(config)] if config else []
    return subprocess.Popen(command)


@hub_app.command("token")
def hub_token(
    name: Annotated[str, typer.Argument(help="API client name, e.g. traffic-ops.")],
    scope: Annotated[list[str], typer.Option(help="read:telemetry, write:devices, write:rollouts, admin.")],
    department: str = "",
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Create an API client and print its token (shown once; only a hash is kept)."""
    with open_registry(home) as registry:
        registry.create_schema()
        typer.echo(registry.api_clients.create(name, scope, department, actor=actor()))


hub_app.command("ui-link")(ui_link)


@hub_app.command("migrate")
def hub_migrate(
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Upgrade the registry database to the newest schema (safe to run again)."""
    with open_registry(home, registry_url) as registry:
        registry.schema.migrate()
        typer.echo(f"registry at revision {registry.schema.current_revision()}")


@audit_app.command("verify")
def audit_verify(
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Check the audit log's hash chain; exit 1 and name the first bad entry if it was tampered with."""
    with open_registry(home, registry_url) as registry:
        report = registry.audit.verify()
    if report.ok:
        typer.echo(f"audit log intact: {report.entries} entries, head {report.head_hash}")
        return
    typer.echo(
        f"audit log TAMPERED at seq {report.first_bad_seq} ({report.reason}): {report.message}", err=True
    )
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(home: HomeOption = DEFAULT_HOME, limit: int = 50) -> None:
    """The latest audit entries."""
    from roadside.cloud.home import HubHome
    from roadside.cloud.registry import Registry

    registry = Registry(HubHome(home).registry_url)
    try:
        entries = registry.audit.entries(limit=100_000)[-limit:]
    finally:
        registry.close()
    for e in entries:
        typer.echo(f"{e.seq}\t{e.ts.isoformat()}\t{e.actor}\t{e.action}\t{e.subject}")


@broker_app.command("run")
def broker_run(
    home: HomeOption = DEFAULT_HOME,
    port: Annotated[int, typer.Option(help="TLS port; 0 picks a free one.")] = 8883,
) -> None:
    """Run Mosquitto with mutual TLS, the CA's CRL and the ACL generated from the registry."""
    from roadside.cloud.broker.mosquitto import MosquittoBroker
    from roadside.cloud.home import HubHome, acl_devices, revoked_devices

    hub_home = HubHome(home)
    with open_registry(home) as registry:
        hub_home.require()
        broker = MosquittoBroker(
            hub_home.broker_dir,
            ca_cert_pem=hub_home.ca_file.read_bytes(),
            server=hub_home.broker_server_cert(),
            devices=acl_devices(registry),
            revoked=revoked_devices(registry),
            port=port or None,
            crl_pem=hub_home.ca().crl_pem(),
        )
        broker.start()
    typer.echo(json.dumps({"broker": f"{broker.host}:{broker.port}", "pid": broker.pid}))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    broker.stop()


def register(app: typer.Typer) -> None:
    """Add the hub's sub-commands to the ``roadside`` command (:mod:`roadside.cli`)."""
    from roadside.cloud.dataset.cli import dataset_app
    from roadside.cloud.ingest.deadletter_cli import deadletters_app
    from roadside.cloud.release.model_cli import model_app
    from roadside.cloud.release.rollout_cli import rollout_app

    app.add_typer(pki_app, name="pki")
    app.add_typer(device_app, name="device")
    app.add_typer(hub_app, name="hub")
    app.add_typer(broker_app, name="broker")
    app.add_typer(audit_app, name="audit")
    app.add_typer(rollout_app, name="rollout")
    app.add_typer(dataset_app, name="dataset")
    app.add_typer(model_app, name="model")
    app.add_typer(deadletters_app, name="deadletters")
