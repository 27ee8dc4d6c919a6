"""The signal benchmark's presence figure: zone on/off from the ATSPM log against SUMO's E2 samples."""

from __future__ import annotations

import pytest

pytest.importorskip("traci")

from roadside.sim.signal_loop import Zone, presence_figures

SQUARE = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
ZONES = [
    Zone("n", "n_0", "presence", SQUARE, channel=1, phase=2, lane="n_0"),
    Zone("n", "n_1", "presence", SQUARE, channel=2, phase=2, lane="n_1"),
    Zone("n", "walk", "pedestrian", SQUARE, channel=9, phase=2, lane=None),
]


def test_each_sample_is_agreed_missed_or_extra_per_lane() -> None:
    # Channel 1 goes on at 1.0 s and off at 3.0 s; channel 2 never goes on.
    events = [(1.0, 82, 1), (3.0, 81, 1)]
    e2 = [
        (0.5, {1: False, 2: False}),  # both agree: off
        (1.5, {1: True, 2: True}),  # 1 agrees; 2 missed
        (2.5, {1: False, 2: False}),  # 1 extra (the zone still on); 2 agrees
        (3.5, {1: True, 2: False}),  # 1 missed (the zone went off); 2 agrees
    ]
    figures = presence_figures(e2, events, ZONES)
    assert (figures.agree, figures.missed, figures.extra) == (5, 2, 1)
    assert figures.per_channel == {1: (2, 1, 1), 2: (3, 1, 0)}
    assert figures.agreement == pytest.approx(5 / 8, abs=1e-4)
    summary = figures.as_dict()
    assert summary["samples"] == 8
    assert summary["missed_share"] == 0.25
    assert summary["per_channel"]["2"] == {"agree": 3, "missed": 1, "extra": 0}


def test_pedestrian_channels_and_other_codes_do_not_count() -> None:
    events = [(1.0, 90, 9), (1.0, 82, 9), (1.0, 1, 1)]  # a pedestrian call, a phase event
    figures = presence_figures([(2.0, {1: False, 2: False, 9: True})], events, ZONES)
    assert (figures.agree, figures.missed, figures.extra) == (2, 0, 0)


def test_no_samples_give_no_figure() -> None:
    assert presence_figures([], [], ZONES).agreement is None
    assert presence_figures([], [], ZONES).as_dict()["missed_share"] is None
