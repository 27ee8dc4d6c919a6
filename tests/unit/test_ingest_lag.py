"""How far behind its devices ingest is (cloud.ingest.service.Lag): what rollouts wait for."""

from __future__ import annotations

from roadside.cloud.ingest.service import Lag


def test_nothing_stored_yet_is_not_behind() -> None:
    assert Lag().behind_s(100.0, waiting=True) == 0.0


def test_devices_with_slow_clocks_do_not_make_a_hub_that_keeps_up_look_behind() -> None:
    lag = Lag()
    lag.stored([0.2, 0.3, 0.25, 0.4, 7200.0], now=10.0)  # one device's clock two hours slow
    assert lag.behind_s(11.0, waiting=False) == 0.2
    lag.stored([600.0, 0.3], now=12.0)  # a fleet of two, one of them ten minutes slow
    assert lag.behind_s(12.0, waiting=False) == 0.3


def test_a_backlog_or_a_pause_grows_the_lag_until_the_next_batch() -> None:
    lag = Lag()
    lag.stored([40.0, 42.0, 41.0], now=10.0)
    assert lag.behind_s(10.0, waiting=True) == 40.0
    assert lag.behind_s(70.0, waiting=True) == 100.0  # nothing stored for a minute, messages waiting
    lag.stored([5.0], now=71.0)
    assert lag.behind_s(71.0, waiting=True) == 5.0


def test_caught_up_and_idle_is_not_behind_and_the_lag_is_capped() -> None:
    lag = Lag(idle_s=30.0, cap_s=3600.0)
    lag.stored([2.0], now=0.0)
    assert lag.behind_s(20.0, waiting=False) == 2.0
    assert lag.behind_s(31.0, waiting=False) == 0.0
    assert lag.behind_s(10_000.0, waiting=True) == 3600.0


def test_a_hub_that_sat_idle_a_moment_ago_is_not_behind_whatever_the_clocks_say() -> None:
    """One device, its clock ten minutes slow: its messages all look 600 s old. The hub found
    nothing to do 2 s ago, so nothing waiting can be older than 2 s."""
    lag = Lag()
    lag.idle(98.0)
    lag.stored([600.0], now=99.0)
    assert lag.behind_s(100.0, waiting=True) == 2.0
    assert lag.behind_s(100.0, waiting=False) == 2.0
    lag.idle(100.0)
    assert lag.behind_s(100.0, waiting=False) == 0.0


def test_a_backlog_is_bounded_by_how_long_ingest_has_been_busy() -> None:
    lag = Lag()
    lag.idle(0.0)
    lag.stored([300.0, 310.0], now=100.0)  # 5 minutes behind by the clocks, busy for 100 s
    assert lag.behind_s(100.0, waiting=True) == 100.0
    lag.stored([30.0, 31.0], now=200.0)  # busy for 200 s, and only 30 s behind now
    assert lag.behind_s(200.0, waiting=True) == 30.0
