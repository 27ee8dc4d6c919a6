"""The broker's ACL and config files: confined topics, no injection, mutual TLS on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from roadside.cloud.broker import mosquitto as broker_module
from roadside.cloud.broker.mosquitto import (
    AclDevice,
    check_device_name,
    check_hub_identity,
    connect_packet,
    find_mosquitto,
    render_acl,
    render_compose_config,
    render_config,
)
from roadside.shared.errors import ConfigError

A = AclDevice("dev-a", "s1")
B = AclDevice("dev-b", "s1")
C = AclDevice("dev-c", "s2")


def _rules(acl: str) -> dict[str, list[tuple[str, str]]]:
    """user -> [(access, filter)], read the way Mosquitto reads the file."""
    rules: dict[str, list[tuple[str, str]]] = {}
    user = ""
    for line in acl.splitlines():
        if not line or line.startswith("#"):
            continue
        keyword, rest = line.split(" ", 1)
        if keyword == "user":
            user = rest
            rules.setdefault(user, [])
        else:
            assert keyword == "topic", line
            access, topic_filter = rest.split(" ", 1)
            rules.setdefault(user, []).append((access, topic_filter))
    return rules


def _may(acl: str, user: str, access: str, topic: str) -> bool:
    return any(
        a in (access, "readwrite") and topic_matches_sub(f, topic) for a, f in _rules(acl).get(user, [])
    )


def test_devices_write_only_their_own_subtree() -> None:
    acl = render_acl([A, B, C])
    assert _may(acl, "dev-a", "write", "roadside/v1/s1/dev-a/events")
    assert _may(acl, "dev-a", "write", "roadside/v1/s1/dev-a/status")
    assert not _may(acl, "dev-a", "write", "roadside/v1/s1/dev-b/events")
    assert not _may(acl, "dev-a", "write", "roadside/v1/s2/dev-a/events")
    assert not _may(acl, "dev-a", "write", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "dev-a", "read", "roadside/v1/s1/dev-a/events")


def test_devices_read_only_their_own_commands() -> None:
    acl = render_acl([A, B, C])
    assert _may(acl, "dev-a", "read", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "dev-a", "read", "roadside/v1/cmd/dev-b")
    assert _may(acl, "dev-c", "read", "roadside/v1/cmd/dev-c")


def test_hub_reads_every_uplink_and_writes_commands() -> None:
    acl = render_acl([A, C], ["hub", "hub-w1"])
    assert _may(acl, "hub-w1", "read", "roadside/v1/s2/dev-c/counts")
    assert _may(acl, "hub", "read", "roadside/v1/s2/dev-c/counts")
    assert _may(acl, "hub", "write", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "hub", "write", "roadside/v1/s1/dev-a/events")
    assert not _may(acl, "hub", "read", "$SYS/broker/uptime")


def test_nothing_is_granted_before_the_first_user_line() -> None:
    # Rules above any "user" line would apply to anonymous clients.
    assert "" not in _rules(render_acl([A]))


def test_acl_is_deterministic_and_lists_a_repeated_device_once() -> None:
    assert render_acl([B, A, A]) == render_acl([A, B])
    assert render_acl([A]).count("user dev-a") == 1


def test_acl_text_for_one_device() -> None:
    body = [line for line in render_acl([A]).splitlines() if line and not line.startswith("#")]
    assert body == [
        "user hub",
        "topic read roadside/v1/#",
        "topic write roadside/v1/cmd/#",
        "topic write roadside/signals/v1/#",
        "user dev-a",
        "topic write roadside/v1/s1/dev-a/#",
        "topic read roadside/v1/cmd/dev-a",
    ]


UNSAFE = ["", "a/b", "a#", "+", "#", "a b", "dev\nuser hub", "dev\rx", "x" * 65, "café", "$SYS"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_device_ids_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="device id"):
        render_acl([AclDevice(name, "s1")])


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_sites_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="site"):
        render_acl([AclDevice("dev-a", name)])


def test_unsafe_hub_user_is_refused() -> None:
    with pytest.raises(ConfigError, match="hub user"):
        render_acl([A], ["hub\ntopic readwrite #"])


@pytest.mark.parametrize("name", ["hub", "HUB", "hub-1", "hub_w2", "Hub-main"])
def test_a_device_cannot_take_a_hub_name(name: str) -> None:
    with pytest.raises(ConfigError, match="reserved for the hub"):
        render_acl([AclDevice(name, "s1")])
    with pytest.raises(ConfigError, match="reserved for hub processes"):
        check_device_name(name)


@pytest.mark.parametrize("name", ["hubcap-7", "pole-hub", "dev-a"])
def test_names_that_only_contain_hub_are_devices(name: str) -> None:
    assert check_device_name(name) == name
    assert f"user {name}" in render_acl([AclDevice(name, "s1")])


@pytest.mark.parametrize("name", ["hub", "hub-1", "hub-w3"])
def test_hub_identities(name: str) -> None:
    assert check_hub_identity(name) == name


@pytest.mark.parametrize("name", ["hubx", "dev-a", "hub-/#", "HUB-1"])
def test_a_hub_client_id_outside_the_hub_namespace_is_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        check_hub_identity(name)


def test_a_device_at_two_sites_is_refused() -> None:
    with pytest.raises(ConfigError, match="two sites"):
        render_acl([A, AclDevice("dev-a", "s2")])


@settings(max_examples=200, deadline=None)
@given(device_id=st.text(max_size=70), site=st.text(max_size=70))
def test_any_accepted_name_adds_exactly_one_confined_user(device_id: str, site: str) -> None:
    try:
        acl = render_acl([AclDevice(device_id, site)])
    except ConfigError:
        return
    rules = _rules(acl)
    assert set(rules) == {"hub", device_id}
    assert rules[device_id] == [
        ("write", f"roadside/v1/{site}/{device_id}/#"),
        ("read", f"roadside/v1/cmd/{device_id}"),
    ]


# -- mosquitto.conf -------------------------------------------------------------


def _config(**overrides: object) -> dict[str, list[str]]:
    settings_: dict[str, object] = {
        "port": 18883,
        "cafile": Path("/etc/rs/ca.pem"),
        "certfile": Path("/etc/rs/server.pem"),
        "keyfile": Path("/etc/rs/server.key"),
        "acl_file": Path("/etc/rs/acl"),
        "persistence_dir": Path("/var/lib/rs"),
    }
    settings_.update(overrides)
    text = render_config(**settings_)  # type: ignore[arg-type]
    parsed: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            parsed.setdefault(key, []).append(value)
    return parsed


def test_config_requires_client_certificates_and_uses_the_acl() -> None:
    conf = _config()
    assert conf["listener"] == ["18883 127.0.0.1"]
    assert conf["require_certificate"] == ["true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["acl_file"] == ["/etc/rs/acl"]
    assert conf["cafile"] == ["/etc/rs/ca.pem"]
    assert conf["certfile"] == ["/etc/rs/server.pem"]
    assert conf["keyfile"] == ["/etc/rs/server.key"]
    assert conf["tls_version"] == ["tlsv1.2"]
    assert "crlfile" not in conf
    assert "psk_hint" not in conf


def test_config_persists_and_bounds_messages_and_queues() -> None:
    conf = _config(max_packet_size=1024, max_queued_messages=50)
    assert conf["persistence"] == ["true"]
    assert conf["persistence_location"] == ["/var/lib/rs/"]
    assert conf["max_packet_size"] == ["1024"]
    assert conf["max_queued_messages"] == ["50"]


def test_config_optional_settings() -> None:
    conf = _config(crlfile="/etc/rs/ca.crl", log_file="/tmp/m.log", tls_version="tlsv1.3", run_as_user="rs")
    assert conf["crlfile"] == ["/etc/rs/ca.crl"]
    assert conf["log_dest"] == ["file /tmp/m.log"]
    assert conf["tls_version"] == ["tlsv1.3"]
    assert conf["user"] == ["rs"]
    assert _config()["log_dest"] == ["stderr"]


def test_every_config_binds_the_client_id_to_the_certificate() -> None:
    assert _config()["use_username_as_clientid"] == ["true"]
    assert _config()["use_identity_as_username"] == ["true"]
    assert _config()["require_certificate"] == ["true"]


def _parse(text: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            parsed.setdefault(key, []).append(value)
    return parsed


def test_compose_broker_config_is_rendered_by_render_config() -> None:
    # One source: compose runs exactly what render_config writes (regenerate with
    # `python -c "from roadside.cloud.broker.mosquitto import render_compose_config; print(render_compose_config(), end='')"`).
    shipped = Path(__file__).resolve().parents[2] / "compose" / "mosquitto" / "mosquitto.conf"
    assert shipped.read_text() == render_compose_config()
    conf = _parse(shipped.read_text())
    # The same persistence as every broker the project runs, not Mosquitto's 30-minute default.
    for key in ("autosave_interval", "persistence", "persistence_file", "max_queued_messages"):
        assert conf[key] == _config()[key], key
    assert conf["crlfile"] == ["/mosquitto/roadside/ca.crl.pem"]
    assert conf["use_username_as_clientid"] == ["true"]
    assert not any("ca.key" in value for values in conf.values() for value in values)


def test_connect_packet_is_mqtt_311_with_a_clean_session() -> None:
    packet = connect_packet("x", keepalive_s=10)
    assert packet == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x0a\x00\x01x"


def test_each_setting_appears_once() -> None:
    conf = _config(crlfile="/c")
    repeated = {key for key, values in conf.items() if len(values) > 1 and key != "log_type"}
    assert not repeated


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"max_packet_size": 0}, "max_packet_size"),
        ({"tls_version": "tlsv1"}, "tls_version"),
        ({"acl_file": "/tmp/acl\nallow_anonymous true"}, "acl_file"),
        ({"keyfile": ""}, "keyfile"),
        ({"host": " 0.0.0.0"}, "host"),
    ],
)
def test_config_refuses_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_missing_mosquitto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr(broker_module, "_FALLBACK_EXECUTABLE", "/nonexistent/mosquitto")
    with pytest.raises(ConfigError, match="apt-get install mosquitto"):
        find_mosquitto()
