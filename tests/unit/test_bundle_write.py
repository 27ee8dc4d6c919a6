"""Issue 9, item 17: a re-written bundle is 0600 whatever the old file's mode was."""

from __future__ import annotations

from pathlib import Path

from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, write_bundle
from roadside.shared.keys import KeyPair


def _bundle() -> EnrollmentBundle:
    return EnrollmentBundle.model_construct(
        device_id="pole-1",
        site="s1",
        broker=BrokerAddress(host="h", port=1),
        ca_cert_pem="ca",
        client_cert_pem="cert",
        client_key_pem="key",
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )


def test_rewriting_a_bundle_makes_a_new_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "pole-1.json"
    path.write_text("old")
    path.chmod(0o644)
    write_bundle(_bundle(), path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert '"device_id": "pole-1"' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["pole-1.json"]  # no temporary left behind
