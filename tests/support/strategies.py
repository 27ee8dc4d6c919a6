"""Hypothesis strategies shared by the tests of the wire forms."""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st

from roadside.shared.schemas import CountRecord


def count_records(
    interval_start: st.SearchStrategy[datetime],
    interval_s: st.SearchStrategy[int],
    names: st.SearchStrategy[str],
) -> st.SearchStrategy[CountRecord]:
    """Valid count records: every other field over its whole range."""
    return st.builds(
        CountRecord,
        interval_start=interval_start,
        interval_s=interval_s,
        line=names,
        cls=names,
        direction=st.sampled_from(["in", "out"]),
        count=st.integers(0, 1_000_000),
        lane=st.none() | st.integers(0, 64),
        model_version=names,
    )
