"""Helpers both settings modules use: read a TOML/JSON file, explain validation errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from roadside.shared.errors import ConfigError


def read_config_file(path: Path, what: str) -> dict[str, Any]:
    """The mapping in a ``.toml`` or ``.json`` file; ``ConfigError`` saying what is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # found by fuzz/ (issue 14): it escaped as itself
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a table/object at the top level")
    return data


def describe(exc: ValidationError, what: str) -> str:
    """One line per problem, naming the setting to change."""
    lines = [f"{what} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def load_settings(
    model: type[SettingsT], path: Path | None, what: str, overrides: dict[str, Any]
) -> SettingsT:
    """``model`` from an optional TOML/JSON file, the environment and ``overrides`` (``None`` values
    ignored), validated once; a ``ConfigError`` naming each bad field otherwise."""
    data = read_config_file(path, what) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, what)) from exc
