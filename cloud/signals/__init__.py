"""The hub's signal-control feed (issue 11; ``docs/signals.md``).

- :mod:`.channel_map`: which camera zone is which detector channel of which signal (pure).
- :mod:`.atspm`: the ATSPM high-resolution event log rows and CSV (pure).
- :mod:`.movements`: turning-movement counts in the 15-minute layout (pure).
- :mod:`.calls`: the real-time detector-call stream (MQTT topic and SSE) with its latency metric.
"""
