"""What the hub's sub-commands share: the home option, errors as exits, the actor, the registry.

``roadside pki|device|hub|broker|audit`` (:mod:`roadside.cloud.cli`), ``rollout``,
``model``, ``dataset`` and ``deadletters`` all import from here, and from no
other sub-command's module.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from roadside.shared.errors import RoadsideError

if TYPE_CHECKING:
    from roadside.cloud.registry import Registry

__all__ = ["DEFAULT_HOME", "HomeOption", "RegistryUrlOption", "actor", "fail", "open_registry"]

HomeOption = Annotated[
    Path, typer.Option("--home", help="The hub's home directory.", envvar="ROADSIDE_HUB_HOME")
]
DEFAULT_HOME = Path("/var/lib/roadside-hub")

RegistryUrlOption = Annotated[
    str | None, typer.Option(help="Registry database (default: SQLite in the home).")
]


def actor() -> str:
    """Who did it, for the audit log: the operator's login on this machine."""
    return f"cli:{getpass.getuser()}"


def fail(exc: RoadsideError) -> typer.Exit:
    """The exit for a refused command: the error on stderr, status 2. Raise it ``from exc``."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@contextlib.contextmanager
def open_registry(home: Path, url: str | None = None) -> Iterator[Registry]:
    """The hub's registry for one command: errors become a clear exit, the connection is closed."""
    from roadside.cloud.home import HubHome
    from roadside.cloud.registry import Registry

    registry = Registry(url or HubHome(home).registry_url)
    try:
        yield registry
    except RoadsideError as exc:
        raise fail(exc) from exc
    finally:
        registry.close()
