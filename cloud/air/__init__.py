"""Air quality on the hub: raw → cleaned → calibrated measurements with flags and calibration lineage,
hourly and daily means with coverage, indices per location (``docs/air-quality.md``).

The rules (indices, NowCast, calibration formulas) are :mod:`roadside.shared.air`; this package
applies them to what the fleet sends and keeps the results.
"""
