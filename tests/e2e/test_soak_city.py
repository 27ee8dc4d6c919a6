"""The soak and the city-sized fleet, small and bounded (issue 14): the books, not the timings.

``python -m bench.soak --agents 50 --minutes 60`` and ``python -m bench.city
--devices 10000`` are the long forms. Here: a one-minute soak (five light agents
and one ``roadside agent run``) and a city of 200 devices (real TLS sessions,
real sealed messages, a rollout to all of them). Every message a device made
must be stored; nothing is asserted about memory growth, lag or speed, which
the benchmarks report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import city, soak

pytestmark = pytest.mark.slow


@pytest.mark.timeout(280)
def test_a_one_minute_soak_stores_everything_it_made(tmp_path: Path) -> None:
    options = "--agents 5 --real-agents 1 --minutes 1 --sample-s 10 --warmup-min 0.2 --counts-every-s 2"
    options += " --health-every-s 5 --events-per-hour 600"
    args = soak.parser().parse_args([*options.split(), "--workdir", str(tmp_path)])
    result = soak.run(args)
    assert result["created"] > 0, result
    assert (result["lost"], result["unexplained"], result["rejected"]) == (0, 0, {}), result
    assert result["samples"] >= 5, result
    assert set(result["growth_pct_per_h"]) >= {"hub.rss_mb", "fleet.fds", "hub.wal_bytes"}, result


@pytest.mark.timeout(280)
def test_a_small_city_connects_every_device_and_loses_nothing(tmp_path: Path) -> None:
    devices = 200
    options = f"--devices {devices} --procs 1 --minutes 0.3 --counts-every-s 5 --health-every-s 5"
    options += " --events-per-hour 360 --canary 5 --waves 50,100 --rollout-timeout-s 150 --settle-s 60"
    args = city.parser().parse_args([*options.split(), "--workdir", str(tmp_path)])
    result = city.run(args)
    assert result["connected"] == devices, result
    assert result["created"] > devices, result
    assert (result["lost"], result["unacked_at_end"], result["refused"]) == (0, 0, 0), result
    assert result["rollout_state"] == "completed", result
    assert result["rollout_devices"] == {"active": devices}, result
