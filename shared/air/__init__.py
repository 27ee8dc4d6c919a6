"""Air quality by the published rules: the US EPA AQI (2024 tables) and NowCast, the EEA's
European Air Quality Index and Citeair's CAQI, and gas unit conversions.

Pure functions over numbers: no I/O, no clock, nothing of Roadside's but the
exception tree, so the agent, the hub and the ``roadside air`` command compute
the same index from the same numbers. Sources for every table and formula
are in ``docs/air-quality.md``.
"""
