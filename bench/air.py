"""Air quality throughput: the drivers' frame parsing and the hub's air work for a city's fleet.

    python -m bench.air [--frames 50000] [--sensors 1000] [--seconds 60]

- **drivers**: frames per second each codec decodes from one byte stream
  (PMS5003 32-byte frames, SDS011 10-byte frames, SPS30 SHDLC frames with
  stuffed bytes), fed in 256-byte reads as a UART gives them; the baseline in
  the same run is the agent's existing text-line parser (NMEA sentences with
  two values) on the same number of lines.
- **fleet**: ``--sensors`` sensors at 1 Hz for ``--seconds`` seconds, each
  reporting PM2.5 (CF=1) and RH: the readings of that minute through the
  hub's stages (clean, EPA-corrected calibration) and an hourly mean per
  sensor; then the index now for every sensor's location from 12 hourly
  means (NowCast and AQI), and the three stages written to an air store.
  ``realtime_share`` is the seconds the fleet's readings cost per second of
  wall time (``_with_store`` adding the SQLite writes): below 1 the hub keeps
  up on one core.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from roadside.cloud.air import aggregate, indexing, stages
from roadside.cloud.air.stages import CleaningRules
from roadside.cloud.air.store import AirStore
from roadside.edge.sensors.air import plantower, sds011, sps30
from roadside.edge.sensors.serial import LineParser, LineSplitter, format_nmea
from roadside.shared.air.calibration import CalibrationBook, CalibrationVersion, EpaPm25


def _rate(stream: bytes, feed: object, frames: int) -> float:
    chunks = [stream[i : i + 256] for i in range(0, len(stream), 256)]
    started = time.perf_counter()
    got = 0
    for chunk in chunks:
        got += len(feed(chunk))  # type: ignore[operator]
    elapsed = time.perf_counter() - started
    if got != frames:
        raise SystemExit(f"decoded {got} of {frames} frames")
    return frames / elapsed


def drivers(frames: int, rng: random.Random) -> dict[str, float]:
    pms = b"".join(
        plantower.encode_frame(
            {"pm1": rng.randrange(200), "pm25": rng.randrange(300), "pm10": rng.randrange(400)}
        )
        for _ in range(frames)
    )
    sds = b"".join(
        sds011.encode_frame(rng.randrange(5000) / 10, rng.randrange(5000) / 10) for _ in range(frames)
    )
    sps = b"".join(
        sps30.miso(
            sps30.CMD_READ, sps30.encode_values({"pm25": rng.random() * 100, "pm10": rng.random() * 200})
        )
        for _ in range(frames)
    )
    lines = b"".join(
        format_nmea(
            [("pm25", rng.randrange(3000) / 10, "ug/m3"), ("pm10", rng.randrange(3000) / 10, "ug/m3")]
        )
        for _ in range(frames)
    )
    parser = LineParser("nmea")
    splitter = LineSplitter(parser)

    def nmea(chunk: bytes) -> list[object]:
        return [v for line in splitter.feed(chunk) if (v := parser.parse(line))]

    return {
        "pms5003_frames_per_s": round(_rate(pms, plantower.PlantowerDecoder().feed, frames)),
        "sds011_frames_per_s": round(_rate(sds, sds011.Sds011Decoder().feed, frames)),
        "sps30_frames_per_s": round(_rate(sps, sps30.Sps30Decoder().feed, frames)),
        "baseline_nmea_lines_per_s": round(_rate(lines, nmea, frames)),
    }


def fleet(sensors: int, seconds: int, rng: random.Random) -> dict[str, float]:
    start = datetime(2025, 5, 1, 8, tzinfo=UTC).timestamp()
    batch = []
    for s in range(sensors):
        base = rng.uniform(5, 60)
        for t in range(seconds):
            batch.append(stages.raw(start + t, f"pm-{s}", "pm25_cf1", base + rng.gauss(0, 1), "ug/m3", "ok"))
            batch.append(stages.raw(start + t, f"pm-{s}", "rh", 55.0, "%", "ok"))
    book = CalibrationBook.of(
        CalibrationVersion(f"pm-{s}", "pm25_cf1", 1, EpaPm25(), 0.0, "pm25") for s in range(sensors)
    )
    started = time.process_time()
    cleaned = stages.clean(batch, CleaningRules())
    calibrated = stages.calibrate(cleaned, book)
    hours = aggregate.hourly(calibrated, ZoneInfo("UTC"), 1.0)
    staged_cpu = time.process_time() - started
    with tempfile.TemporaryDirectory(prefix="bench-air-") as folder:
        store = AirStore(Path(folder) / "air.db")
        rows = [(f"{m.sensor}.{m.parameter}", "loc", m) for m in (*batch, *cleaned, *calibrated)]
        started = time.perf_counter()
        store.write(rows)
        store_s = time.perf_counter() - started
        store.close()

    now = datetime(2025, 5, 1, 12, 20, tzinfo=UTC)
    last = datetime(2025, 5, 1, 11, tzinfo=UTC)
    per_location = [
        [aggregate.Aggregate(f"pm-{s}", "pm25", "ug/m3", "1h", last - timedelta(hours=h), last - timedelta(hours=h - 1),
                             rng.uniform(5, 80), 0, 0, 3600, 3600) for h in range(12)]
        for s in range(sensors)
    ]  # fmt: skip
    started = time.process_time()
    reports = [indexing.current_index("us-epa", hours_, now, ZoneInfo("UTC")) for hours_ in per_location]
    index_cpu = time.process_time() - started
    if any(isinstance(r, indexing.NoIndex) for r in reports) or len(hours) != sensors * 2:
        raise SystemExit("the fleet run did not produce what it should")
    readings = len(batch)
    return {
        "fleet_sensors": sensors,
        "fleet_readings": readings,
        "stages_readings_per_s": round(readings / staged_cpu),
        "index_locations_per_s": round(sensors / index_cpu),
        "store_rows_per_s": round(len(rows) / store_s),
        # The hub stages every reading once and computes every index once a minute (every_s = 60);
        # with_store adds writing the three stages to the air store (SQLite, synchronous=FULL).
        "realtime_share": round((staged_cpu + index_cpu * seconds / 60) / seconds, 4),
        "realtime_share_with_store": round((staged_cpu + store_s + index_cpu * seconds / 60) / seconds, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    result = {**drivers(args.frames, rng), **fleet(args.sensors, args.seconds, rng)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
