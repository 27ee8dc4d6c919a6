"""``roadside hub ui-link NAME``: print a one-time sign-in link to the console for an API client."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, actor, fail, open_registry
from roadside.cloud.console.links import DEFAULT_LINK_TTL_S, issue, load_or_create_key
from roadside.cloud.release.rollouts import parse_duration
from roadside.shared.errors import ConfigError, RoadsideError


def console_base_url(api_host: str, api_port: int) -> str:
    """Where operators reach the console, from the hub's API address (a wildcard bind means this host)."""
    host = "127.0.0.1" if api_host in ("0.0.0.0", "", "::") else api_host  # noqa: S104 - reading, not binding
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{api_port}"


def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/ui/link/{token}"


def ui_link(
    name: Annotated[str, typer.Argument(help="The API client to sign in as (its scopes apply).")],
    ttl: Annotated[str, typer.Option(help="How long the link works, e.g. 15m, 1h (at most 24h).")] = "15m",
    url: Annotated[
        str | None, typer.Option(help="The console's address as operators reach it (default: the hub's API).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Hub config (TOML or JSON), for the API address.")
    ] = None,
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Print a link that signs in to the console once, as NAME, within TTL (audited)."""
    from roadside.cloud.settings import load_hub_settings

    try:
        ttl_s = parse_duration(ttl) if ttl else DEFAULT_LINK_TTL_S
        settings = load_hub_settings(config, home=home)
        base = url or console_base_url(settings.api_host, settings.api_port)
        with open_registry(home, settings.registry_url) as registry:
            if registry.api_clients.get(name) is None:
                raise ConfigError(
                    f"no active API client {name!r}; create one with: roadside hub token {name} --scope ..."
                )
            token = issue(load_or_create_key(home), name, time.time(), ttl_s)
            expires = datetime.fromtimestamp(time.time() + ttl_s, UTC).isoformat(timespec="seconds")
            registry.record_audit(actor(), "console.link", name, {"expires": expires})
    except RoadsideError as exc:
        raise fail(exc) from exc
    typer.echo(link_url(base, token))
    typer.echo(f"(one use, until {expires})", err=True)
