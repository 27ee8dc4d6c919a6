"""The broker's open-files limit is raised to the hard limit (issue 14: a city's fleet).

Under systemd a service's soft limit is 1,024: Mosquitto would refuse the 1,021st
device. The broker starts with whatever soft limit its parent had; the test
lowers this process's to 256 first and checks Mosquitto's own limit in /proc.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from roadside.cloud.broker.limits import raise_open_files
from roadside.cloud.broker.mosquitto import AclDevice, MosquittoBroker
from roadside.cloud.broker.pki import CertificateAuthority


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_broker_runs_with_its_hard_open_files_limit(
    tmp_path: Path, roadside_ca: CertificateAuthority, low_soft_limit: int
) -> None:
    with MosquittoBroker.for_ca(tmp_path / "broker", roadside_ca, [AclDevice("dev-a", "s1")]) as broker:
        assert broker.pid is not None
        soft, hard = open_files_limit(broker.pid)
    assert hard == low_soft_limit
    assert soft == hard  # raised from the 256 it inherited


def test_raising_this_process_limit_reports_it(low_soft_limit: int) -> None:
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(256, low_soft_limit)
    assert raise_open_files() == low_soft_limit
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == low_soft_limit
