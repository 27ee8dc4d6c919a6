"""The console's pure core: session expiry and CSRF, signed one-time links, the vendored files' hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roadside.cloud.console import links
from roadside.cloud.console.assets import MANIFEST, Assets, check_vendor_manifest
from roadside.cloud.console.links import LinkError, SpentLinks, issue, verify
from roadside.cloud.console.sessions import SessionPolicy, SessionStore
from roadside.shared.errors import ConfigError

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_idle_or_too_old() -> None:
    clock = Clock()
    store = SessionStore(SessionPolicy(lifetime_s=100, idle_s=10), clock=clock)
    session_id, session = store.open("ops")
    assert store.touch(session_id) == session
    for _ in range(9):  # used every 9 s: the idle clock restarts each time...
        clock.now += 9
        assert store.touch(session_id) is not None
    clock.now += 19  # ...but never past the lifetime
    assert store.touch(session_id) is None
    other, _ = store.open("ops")
    clock.now += 10
    assert store.touch(other) is None, "idle for the whole idle timeout"
    assert len(store) == 0


def test_sign_out_and_revocation_end_sessions_and_unknown_ids_are_nobody() -> None:
    store = SessionStore()
    first, _ = store.open("ops")
    second, _ = store.open("ops")
    third, _ = store.open("viewer")
    store.close(first)
    assert store.touch(first) is None
    assert store.close_client("ops") == 1
    assert store.touch(second) is None
    assert store.touch(third) is not None
    assert store.touch("made-up") is None
    assert store.touch(None) is None
    assert store.touch("") is None


def test_the_store_is_bounded_and_drops_the_least_recently_used() -> None:
    store = SessionStore(max_sessions=2)
    a, _ = store.open("a")
    b, _ = store.open("b")
    store.touch(a)
    c, _ = store.open("c")
    assert store.touch(b) is None
    assert store.touch(a) is not None
    assert store.touch(c) is not None


def test_csrf_tokens_match_only_their_session() -> None:
    store = SessionStore()
    _, one = store.open("ops")
    _, two = store.open("ops")
    assert one.csrf_matches(one.csrf_token)
    assert not one.csrf_matches(two.csrf_token)
    assert not one.csrf_matches(None)
    assert not one.csrf_matches("")


def test_session_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="idle"):
        SessionPolicy(lifetime_s=10, idle_s=20)


def test_a_link_verifies_until_it_expires_and_spends_once() -> None:
    token = issue(KEY, "ops", now=100.0, ttl_s=60)
    grant = verify(KEY, token, now=159.0)
    assert grant.client_name == "ops"
    with pytest.raises(LinkError, match="expired"):
        verify(KEY, token, now=160.0)
    spent = SpentLinks()
    spent.spend(grant, now=120.0)
    with pytest.raises(LinkError, match="already used"):
        spent.spend(grant, now=121.0)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: ("A" if t[0] != "A" else "B") + t[1:],  # payload
        lambda t: t.replace(".", ""),
        lambda t: t + "." + t,
        lambda t: "x" * 600,
        lambda t: "",
        lambda t: "not base64!.also not",
    ],
)
def test_forged_or_malformed_links_are_refused(tamper: object) -> None:
    token = issue(KEY, "ops", now=100.0)
    assert callable(tamper)
    with pytest.raises(LinkError):
        verify(KEY, tamper(token), now=101.0)


def test_a_link_from_another_hub_is_refused() -> None:
    with pytest.raises(LinkError, match="signature"):
        verify(b"o" * 32, issue(KEY, "ops", now=100.0), now=101.0)


def test_a_link_signed_over_a_payload_without_a_client_is_refused() -> None:
    import base64
    import hashlib
    import hmac

    body = base64.urlsafe_b64encode(json.dumps({"exp": 10**10}).encode()).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(hmac.new(KEY, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(LinkError, match="not a sign-in link"):
        verify(KEY, f"{body}.{signature.decode()}", now=1.0)


def test_link_lifetimes_are_bounded() -> None:
    with pytest.raises(ConfigError):
        issue(KEY, "ops", now=0.0, ttl_s=0)
    with pytest.raises(ConfigError):
        issue(KEY, "ops", now=0.0, ttl_s=links.MAX_LINK_TTL_S + 1)


def test_the_link_key_is_made_once_private_and_checked(tmp_path: Path) -> None:
    key = links.load_or_create_key(tmp_path)
    assert len(key) == links.KEY_BYTES
    assert (tmp_path / links.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert links.load_or_create_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [links.KEY_FILE]
    (tmp_path / links.KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError, match="delete it"):
        links.load_or_create_key(tmp_path)


def test_the_vendored_files_are_the_ones_the_manifest_records() -> None:
    assert check_vendor_manifest() == []
    listed = json.loads(MANIFEST.read_text())["files"]
    assert {e["package"] for e in listed} == {"htmx.org", "uplot"}


def test_a_changed_vendored_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "lib.js").write_text("original")
    manifest = tmp_path / "manifest.json"
    entry = {"file": "lib.js", "package": "lib", "version": "1", "license": "MIT", "sha256": "0" * 64}
    manifest.write_text(json.dumps({"files": [entry]}))
    assert check_vendor_manifest(manifest) == [f"lib.js: sha256 {_sha('original')}, manifest says {'0' * 64}"]
    (tmp_path / "extra.js").write_text("smuggled")
    assert "extra.js: vendored but not in the manifest" in check_vendor_manifest(manifest)


def test_axe_for_the_browser_tests_is_the_recorded_file() -> None:
    assert check_vendor_manifest(Path(__file__).parents[1] / "console" / "vendor" / "manifest.json") == []


def test_assets_are_served_by_content_hash() -> None:
    assets = Assets()
    path = assets.url_path("vendor/htmx.min.js")
    digest, name = path.split("/", 1)
    assert name == "vendor/htmx.min.js"
    assert _sha_bytes(assets.find(path).body).startswith(digest)  # type: ignore[union-attr]
    assert assets.find(f"{'0' * len(digest)}/{name}") is None, "a stale hash is not served"
    assert assets.find("../../etc/passwd") is None


def _sha(text: str) -> str:
    return _sha_bytes(text.encode())


def _sha_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_session_kept_elsewhere_records_its_last_use_at_most_once_a_step() -> None:
    from roadside.cloud.console.sessions import MemorySessions

    now = [1000.0]
    writes: list[float] = []

    class CountingSessions(MemorySessions):
        def touch(self, digest: str, last_used_at: float) -> None:
            writes.append(last_used_at)
            super().touch(digest, last_used_at)

    store = SessionStore(SessionPolicy(lifetime_s=3600, idle_s=600), clock=lambda: now[0],
                         backend=CountingSessions(), touch_every_s=60)  # fmt: skip
    session_id, _ = store.open("ops")
    for step in (10, 20, 30, 50, 70):  # seconds after sign-in
        now[0] = 1000.0 + step
        touched = store.touch(session_id)
        assert touched is not None
        assert touched.last_used_at == now[0]
    assert writes == [1070.0]  # 60 s after the last write, not on every page
    now[0] = 1070.0 + 600
    assert store.touch(session_id) is None  # idle past the timeout: ended and forgotten
    assert len(store) == 0


def test_opening_a_session_drops_idle_ones_first() -> None:
    now = [0.0]
    store = SessionStore(SessionPolicy(lifetime_s=3600, idle_s=60), clock=lambda: now[0], max_sessions=10)
    stale, _ = store.open("ops")
    now[0] = 61.0
    fresh, _ = store.open("ops")
    assert len(store) == 1
    assert store.touch(stale) is None
    assert store.touch(fresh) is not None
