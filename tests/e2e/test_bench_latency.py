"""The latency benchmark, small: every event the agents sent reaches the API, the SSE stream and a webhook.

It runs ``bench.latency.run`` (the code behind ``python -m bench.latency``)
with two real agents until they have sent a few events, against a real
Mosquitto and a real hub process, so the benchmark cannot rot unnoticed. No
timing is asserted: only that each stored event was seen on all three paths,
once each on the push paths, with a capture time in the past.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.latency import PATHS, RunConfig, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]


def test_every_stored_event_is_seen_on_the_api_the_stream_and_a_webhook(tmp_path: Path) -> None:
    config = RunConfig(agents=2, seconds=90.0, settle_s=20.0, stop_after_events=3)
    result = run(config, tmp_path)
    assert result["stored"] >= 3, result
    assert result["agent_exit_codes"] == [0, 0], result
    for path in PATHS:
        assert result[f"{path}_missing"] == 0, (path, result)
        assert result[f"{path}_count"] == result["stored"], (path, result)
        assert result[f"{path}_p99_ms"] is not None
    assert result["broker_missing"] == 0, result
    for key in ("sse_duplicates", "webhook_duplicates", "webhook_refused", "api_poll_errors"):
        assert result[key] == 0, (key, result)
