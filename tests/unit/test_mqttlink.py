"""The MQTT session wrapper's pure parts: the PUBACK-16 rule and credential loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from roadside.mqttlink import (
    Delivery,
    MqttSession,
    SessionConfig,
    TlsFiles,
    context_from_pem,
    puback_delivery,
)
from roadside.shared.errors import ConfigError


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, Delivery.DELIVERED),
        (16, Delivery.UNROUTED),  # "no matching subscribers": accepted, yet nobody got it (ADR 0006)
        (0x80, Delivery.REFUSED),
        (135, Delivery.REFUSED),  # not authorised
        (151, Delivery.REFUSED),  # quota exceeded
    ],
)
def test_puback_reason_decides_the_delivery(code: int, expected: Delivery) -> None:
    assert puback_delivery(code) is expected


def test_pem_that_does_not_load_is_a_config_error_and_leaves_no_key(tmp_path: Path) -> None:
    scratch = tmp_path / "tls"
    with pytest.raises(ConfigError, match="do not load"):
        context_from_pem("not a CA", "not a cert", "-----BEGIN PRIVATE KEY-----\nsecret", scratch)
    assert list(scratch.iterdir()) == []
    assert scratch.stat().st_mode & 0o777 == 0o700


def test_missing_tls_files_are_a_config_error_naming_them(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "hub.crt", tmp_path / "hub.key")
    with pytest.raises(ConfigError, match=r"hub\.crt"):
        MqttSession(SessionConfig("127.0.0.1", 1, "hub", tls=files))


def test_only_the_wrapper_imports_paho() -> None:
    """Style §13: one wrapper per vendor library. The tests may drive paho directly."""
    import ast

    root = Path(__file__).resolve().parents[2]
    importers = []
    for path in sorted(root.glob("*/**/*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in {"tests", ".venv", "build"} or relative.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "paho" or name.startswith("paho.") for name in names):
                importers.append(str(relative))
    assert sorted(set(importers)) == ["mqttlink/session.py"]
