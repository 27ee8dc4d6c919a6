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

Rule = tuple[str, str]  # (access, filter)


def _rules(acl: str) -> tuple[dict[str, list[Rule]], list[Rule]]:
    """(user -> rules, patterns), read the way Mosquitto 2.0 reads the file (security_default.c)."""
    users: dict[str, list[Rule]] = {}
    patterns: list[Rule] = []
    user = ""
    for line in acl.splitlines():
        if not line or line.startswith("#"):
            continue
        keyword, rest = line.split(" ", 1)
        if keyword == "user":
            user = rest
            users.setdefault(user, [])
            continue
        access, topic_filter = rest.split(" ", 1)
        assert access in ("read", "write", "readwrite", "deny"), line
        if keyword == "pattern":
            patterns.append((access, topic_filter))
        else:
            assert keyword == "topic", line
            assert user, f"a rule before the first user line applies to anonymous clients: {line}"
            users[user].append((access, topic_filter))
    return users, patterns


def _decide(rules: list[Rule], access: str, topic: str) -> bool | None:
    # Deny rules first, then the first rule that grants; None: no rule decided.
    ordered = [r for r in rules if r[0] == "deny"] + [r for r in rules if r[0] != "deny"]
    for granted, topic_filter in ordered:
        if topic.startswith("$") and not topic_filter.startswith("$"):
            continue
        if topic_matches_sub(topic_filter, topic):
            if granted == "deny":
                return False
            if granted in (access, "readwrite"):
                return True
    return None


def _may(acl: str, user: str, access: str, topic: str) -> bool:
    """Whether Mosquitto lets the client with certificate name ``user`` ``access`` ``topic``."""
    users, patterns = _rules(acl)
    own = _decide(users.get(user, []), access, topic)
    if own is not None:
        return own
    mine = [(a, f.replace("%u", user).replace("%c", user)) for a, f in patterns]
    return bool(_decide(mine, access, topic))


def test_devices_write_only_their_own_subtree() -> None:
    acl = render_acl([A, B, C])
    assert _may(acl, "dev-a", "write", "roadside/v1/s1/dev-a/events")
    assert _may(acl, "dev-a", "write", "roadside/v1/s1/dev-a/status")
    assert not _may(acl, "dev-a", "write", "roadside/v1/s1/dev-b/events")
    assert not _may(acl, "dev-a", "write", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "dev-a", "write", "roadside/v1/cmd/dev-a/events")  # never the command tree
    assert not _may(acl, "dev-a", "write", "roadside/signals/v1/x/calls")
    assert not _may(acl, "dev-a", "read", "roadside/v1/s1/dev-a/events")


def test_the_pattern_cannot_know_a_devices_site() -> None:
    # Another site under its own name passes the broker; the hub refuses it (topic_mismatch).
    assert _may(render_acl([A]), "dev-a", "write", "roadside/v1/s2/dev-a/events")


def test_devices_read_only_their_own_commands() -> None:
    acl = render_acl([A, B, C])
    assert _may(acl, "dev-a", "read", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "dev-a", "read", "roadside/v1/cmd/dev-b")
    assert _may(acl, "dev-c", "read", "roadside/v1/cmd/dev-c")


def test_a_new_device_needs_no_change_to_the_file() -> None:
    # Enrolling writes nothing and reloads nothing: a reload drops offline sessions (ADR 0022).
    assert render_acl([A]) == render_acl([A, B, C]) == render_acl([])
    assert _may(render_acl([]), "dev-new", "write", "roadside/v1/s9/dev-new/counts")


def test_hub_reads_every_uplink_and_writes_commands() -> None:
    acl = render_acl([A, C], ["hub", "hub-w1"])
    assert _may(acl, "hub-w1", "read", "roadside/v1/s2/dev-c/counts")
    assert _may(acl, "hub", "read", "roadside/v1/s2/dev-c/counts")
    assert _may(acl, "hub", "write", "roadside/v1/cmd/dev-a")
    assert not _may(acl, "hub", "write", "roadside/v1/s1/dev-a/events")
    assert not _may(acl, "hub", "write", "roadside/v1/s1/hub/events")  # no device rights of its own
    assert not _may(acl, "hub-w1", "write", "roadside/v1/s1/hub-w1/events")
    assert not _may(acl, "hub", "read", "$SYS/broker/uptime")


def test_a_revoked_device_may_do_nothing() -> None:
    acl = render_acl([B], revoked=["dev-a"])
    assert not _may(acl, "dev-a", "write", "roadside/v1/s1/dev-a/events")
    assert not _may(acl, "dev-a", "read", "roadside/v1/cmd/dev-a")
    assert _may(acl, "dev-b", "write", "roadside/v1/s1/dev-b/events")


def test_a_revoked_name_cannot_be_an_enrolled_device_or_a_hub() -> None:
    with pytest.raises(ConfigError, match="revoked device"):
        render_acl([A], revoked=["dev-a"])
    with pytest.raises(ConfigError, match="revoked device"):
        render_acl([], revoked=["hub-2"])
    with pytest.raises(ConfigError, match="revoked device id"):
        render_acl([], revoked=["dev/#"])


def test_anonymous_clients_get_nothing() -> None:
    # Every pattern names %u (skipped without a username); every topic rule follows a user line.
    users, patterns = _rules(render_acl([A], controllers={"ctl": ["s-1"]}, revoked=["dev-x"]))
    assert "" not in users
    assert all("%u" in topic_filter for _, topic_filter in patterns)


def test_acl_is_deterministic() -> None:
    assert render_acl([B, A, A], ["hub-2", "hub"], revoked=["x", "y"]) == render_acl(
        [A, B], ["hub", "hub-2"], revoked=["y", "x", "x"]
    )
    assert render_acl([A], revoked=["x", "x"]).count("user x") == 1


def test_acl_text() -> None:
    body = [
        line
        for line in render_acl([A], revoked=["dev-old"]).splitlines()
        if line and not line.startswith("#")
    ]
    assert body == [
        "pattern deny roadside/v1/cmd/%u/+/#",
        "pattern write roadside/v1/+/%u/+/#",
        "pattern read roadside/v1/cmd/%u",
        "user hub",
        "topic deny roadside/v1/+/hub/#",
        "topic read roadside/v1/#",
        "topic write roadside/v1/cmd/#",
        "topic write roadside/signals/v1/#",
        "user dev-old",
        "topic deny #",
    ]


UNSAFE = ["", "a/b", "a#", "+", "#", "a b", "dev\nuser hub", "dev\rx", "x" * 65, "café", "$SYS", "%u", "a%c"]


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
    acl = render_acl([AclDevice(name, "s1")])
    assert _may(acl, name, "write", f"roadside/v1/s1/{name}/counts")
    assert not _may(acl, name, "read", "roadside/v1/s1/dev-b/counts")


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
@given(device_id=st.text(max_size=70), other=st.text(max_size=70), site=st.text(max_size=70))
def test_any_accepted_name_is_confined_to_its_own_topics(device_id: str, other: str, site: str) -> None:
    try:
        acl = render_acl([AclDevice(device_id, site), AclDevice(other, site)])
    except ConfigError:
        return
    assert _may(acl, device_id, "write", f"roadside/v1/{site}/{device_id}/counts")
    assert _may(acl, device_id, "read", f"roadside/v1/cmd/{device_id}")
    if other != device_id:
        assert not _may(acl, device_id, "write", f"roadside/v1/{site}/{other}/counts")
        assert not _may(acl, device_id, "read", f"roadside/v1/cmd/{other}")
        assert not _may(acl, device_id, "read", f"roadside/v1/{site}/{other}/counts")


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
