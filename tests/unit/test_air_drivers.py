"""Air-sensor frame codecs: datasheet frames, every corruption refused and counted, round trips.

Frames are written out from the datasheets' layouts (docs/air-quality.md), not
built by the code under test, where the datasheet gives an example.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.edge.sensors.air import alphasense, climate, plantower, sds011, sps30
from roadside.edge.sensors.air.framing import FrameError

# Plantower: a PMS7003 frame by hand. Words: CF=1 PM1/2.5/10, atmospheric PM1/2.5/10,
# counts >0.3/0.5/1/2.5/5/10 µm per 0.1 L, reserved (version 0x97, error 0).
PMS_WORDS = (5, 8, 9, 5, 8, 9, 1200, 350, 60, 4, 1, 0, 0x9700)
PMS_BODY = b"\x42\x4d\x00\x1c" + struct.pack(">13H", *PMS_WORDS)
PMS_FRAME = PMS_BODY + struct.pack(">H", sum(PMS_BODY))


def test_a_plantower_frame_decodes() -> None:
    assert len(PMS_FRAME) == 32
    readings = plantower.decode_frame(PMS_FRAME)
    assert readings is not None
    values = {r.quantity: r.value for r in readings}
    assert (values["pm1"], values["pm25"], values["pm10"]) == (5, 8, 9)
    assert (values["pm25_cf1"], values["n03"], values["n05"], values["n100"]) == (8, 1200, 350, 0)
    assert plantower.encode_frame(
        dict(zip(["pm1_cf1", "pm25_cf1", "pm10_cf1", "pm1", "pm25", "pm10", "n03", "n05", "n10", "n25", "n50", "n100"], PMS_WORDS, strict=False)),
        reserved=0x9700,
    ) == PMS_FRAME  # fmt: skip


def test_plantower_commands_and_acknowledgement() -> None:
    # The manual's commands: 42 4D E1 00 00 01 70 (passive), E1 00 01 01 71 (active), E2 00 00 01 71 (read).
    assert plantower.set_passive() == bytes.fromhex("424de100000170")
    assert plantower.set_active() == bytes.fromhex("424de100010171")
    assert plantower.read_passive() == bytes.fromhex("424de200000171")
    decoder = plantower.PlantowerDecoder()
    assert decoder.feed(bytes.fromhex("424d0004e1000174")) == []  # the sensor's answer to a mode change
    assert (decoder.stats.acks, decoder.stats.accepted, decoder.stats.rejected_total) == (1, 0, 0)


def _flip(frame: bytes, index: int) -> bytes:
    return frame[:index] + bytes([frame[index] ^ 0x01]) + frame[index + 1 :]


@pytest.mark.parametrize("index", range(4, 32))
def test_plantower_any_flipped_byte_after_the_start_is_refused_and_counted(index: int) -> None:
    decoder = plantower.PlantowerDecoder()
    assert decoder.feed(_flip(PMS_FRAME, index) + PMS_FRAME) == [plantower.decode_frame(PMS_FRAME)]
    assert decoder.stats.accepted == 1
    assert decoder.stats.rejected_total >= 1
    reasons = set(decoder.stats.rejected)
    assert reasons <= {"bad_checksum", "bad_length", "truncated"}


def test_plantower_truncated_frame_then_a_good_one() -> None:
    decoder = plantower.PlantowerDecoder()
    out = decoder.feed(PMS_FRAME[:17] + PMS_FRAME + b"\x00\x42")
    assert out == [plantower.decode_frame(PMS_FRAME)]
    assert decoder.stats.rejected["truncated"] == 1
    decoder.reset()  # the port went away holding half a start marker
    assert decoder.stats.rejected["truncated"] == 2


def test_plantower_refuses_lengths_no_pms5003_sends() -> None:
    bad = b"\x42\x4d\x00\x14" + bytes(22)
    with pytest.raises(FrameError) as caught:
        plantower.decode_frame(bad)
    assert caught.value.reason == "bad_length"
    decoder = plantower.PlantowerDecoder()
    assert decoder.feed(bad + PMS_FRAME) == [plantower.decode_frame(PMS_FRAME)]
    assert decoder.stats.rejected["bad_length"] == 1


words = st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12)


@given(words, st.lists(st.integers(1, 40), min_size=1, max_size=20), st.binary(max_size=40))
def test_plantower_round_trip_through_any_chunking(values: list[int], cuts: list[int], noise: bytes) -> None:
    names = [
        "pm1_cf1",
        "pm25_cf1",
        "pm10_cf1",
        "pm1",
        "pm25",
        "pm10",
        "n03",
        "n05",
        "n10",
        "n25",
        "n50",
        "n100",
    ]
    frame = plantower.encode_frame(dict(zip(names, values, strict=True)))
    stream = noise.replace(b"\x42", b"") + frame + frame
    decoder = plantower.PlantowerDecoder()
    out, pos = [], 0
    for cut in cuts * 10:
        out += decoder.feed(stream[pos : pos + cut])
        pos += cut
    out += decoder.feed(stream[pos:])
    assert len(out) == 2
    assert [r.value for r in out[0]] == [float(v) for v in values]


# SDS011: the datasheet's example, PM2.5 123.6 and PM10 261.8 µg/m³.
SDS_FRAME = bytes.fromhex("aac0d4043a0aa1601dab")


def test_the_sds011_datasheet_frame() -> None:
    readings = sds011.decode_frame(SDS_FRAME)
    assert readings is not None
    assert [(r.quantity, r.value) for r in readings] == [("pm25", 123.6), ("pm10", 261.8)]
    assert sds011.encode_frame(123.6, 261.8, device_id=0x60A1) == SDS_FRAME


def test_sds011_duty_cycle_command() -> None:
    # Protocol V1.3: set working period to 1 minute, all sensors.
    assert sds011.set_working_period(1) == bytes.fromhex("aab408010100000000000000000000ffff08ab")
    assert sds011.set_working_period(0)[4] == 0  # continuous
    with pytest.raises(ValueError, match="0-30"):
        sds011.set_working_period(31)


@pytest.mark.parametrize("index", range(1, 10))
def test_sds011_any_flipped_byte_is_refused_and_counted(index: int) -> None:
    decoder = sds011.Sds011Decoder()
    corrupt = _flip(SDS_FRAME, index)
    out = decoder.feed(corrupt + SDS_FRAME)
    assert out == [sds011.decode_frame(SDS_FRAME)]
    assert decoder.stats.accepted == 1
    if index == 1:  # a flipped command byte makes 0xAA an ordinary byte: skipped, no frame there
        assert (decoder.stats.rejected_total, decoder.stats.skipped_bytes) == (0, 10)
    else:
        assert decoder.stats.rejected_total == 1


def test_sds011_reply_and_cut_frame() -> None:
    body = bytes([0xAA, 0xC5]) + bytes.fromhex("080101a16000")  # reply to "set working period"
    reply = body + bytes([sum(body[2:8]) & 0xFF, 0xAB])
    decoder = sds011.Sds011Decoder()
    assert decoder.feed(reply + SDS_FRAME[:6] + SDS_FRAME) == [sds011.decode_frame(SDS_FRAME)]
    assert decoder.stats.acks == 1
    assert decoder.stats.rejected["truncated"] == 1


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_sds011_round_trip(pm25: int, pm10: int, device: int) -> None:
    frame = sds011.encode_frame(pm25 / 10, pm10 / 10, device)
    readings = sds011.decode_frame(frame)
    assert readings is not None
    assert [r.value for r in readings] == [pm25 / 10, pm10 / 10]


# SPS30: the datasheet's command frames.


def test_sps30_datasheet_frames() -> None:
    assert sps30.start_measurement() == bytes.fromhex("7e00000201 03f97e".replace(" ", ""))
    assert sps30.read_measured_values() == bytes.fromhex("7e000300fc7e")
    assert sps30.mosi(sps30.CMD_STOP) == bytes.fromhex("7e000100fe7e")


def test_sps30_stuffing_of_each_special_byte() -> None:
    assert sps30.stuff(bytes([0x7E, 0x7D, 0x11, 0x13, 0x12])) == bytes.fromhex("7d5e7d5d7d317d3312")
    assert sps30.unstuff(bytes.fromhex("7d5e7d5d7d317d3312")) == bytes([0x7E, 0x7D, 0x11, 0x13, 0x12])


@pytest.mark.parametrize(
    "inside", [bytes.fromhex("7d00"), bytes.fromhex("00117d"), bytes.fromhex("0013"), bytes.fromhex("7d7d")]
)
def test_sps30_bad_stuffing_is_refused(inside: bytes) -> None:
    with pytest.raises(FrameError) as caught:
        sps30.unstuff(inside)
    assert caught.value.reason == "bad_stuffing"


MEASUREMENT = {"pm1": 3.5, "pm25": 7.25, "pm4": 9.0, "pm10": 9.5, "nc05": 20.0, "typical_size": 0.5}


def test_sps30_measurement_reply_decodes() -> None:
    frame = sps30.miso(sps30.CMD_READ, sps30.encode_values(MEASUREMENT))
    decoder = sps30.Sps30Decoder()
    (readings,) = decoder.feed(frame)
    values = {r.quantity: r.value for r in readings}
    assert {k: values[k] for k in MEASUREMENT} == MEASUREMENT  # all exact in float32
    # No new data yet: an empty reply; a start acknowledgement: an empty reply to 0x00.
    assert decoder.feed(sps30.miso(sps30.CMD_READ) + sps30.miso(sps30.CMD_START)) == []
    assert decoder.stats.acks == 2


def test_sps30_corruptions_are_refused_with_their_reason() -> None:
    good = sps30.miso(sps30.CMD_READ, sps30.encode_values(MEASUREMENT))
    inside = good[1:-1]
    raw = sps30.unstuff(inside)
    bad_sum = bytes([0x7E]) + sps30.stuff(raw[:-1] + bytes([raw[-1] ^ 0xFF])) + bytes([0x7E])
    bad_len = bytes([0x7E]) + sps30.stuff(raw[:3] + bytes([39]) + raw[4:]) + bytes([0x7E])
    bad_stuff = bytes([0x7E, 0x00, 0x03, 0x7D, 0x01, 0x7E])
    error = sps30.miso(sps30.CMD_READ, state=0x43)
    decoder = sps30.Sps30Decoder()
    out = decoder.feed(bad_sum + bad_len + bad_stuff + error + good[:20] + good)
    assert len(out) == 1
    assert decoder.stats.rejected == {
        "bad_checksum": 1, "bad_length": 2, "bad_stuffing": 1, "device_error": 1,
    }  # fmt: skip
    assert decoder.stats.accepted == 1


def test_sps30_no_end_delimiter_is_bounded() -> None:
    decoder = sps30.Sps30Decoder()
    decoder.feed(b"\x7e" + b"\x01" * (sps30.MAX_STUFFED + 10))
    assert decoder.stats.rejected["too_long"] == 1


@given(st.binary(max_size=300))
def test_sps30_stuffing_round_trip_never_leaves_a_delimiter_inside(raw: bytes) -> None:
    stuffed = sps30.stuff(raw)
    assert 0x7E not in stuffed
    assert sps30.unstuff(stuffed) == raw


@given(
    st.lists(st.floats(0, 1000, width=32), min_size=10, max_size=10),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
)
def test_sps30_round_trip_through_any_chunking(values: list[float], cuts: list[int]) -> None:
    names = ["pm1", "pm25", "pm4", "pm10", "nc05", "nc1", "nc25", "nc4", "nc10", "typical_size"]
    frame = sps30.miso(sps30.CMD_READ, sps30.encode_values(dict(zip(names, values, strict=True))))
    decoder = sps30.Sps30Decoder()
    out, pos = [], 0
    for cut in cuts * 20:
        out += decoder.feed(frame[pos : pos + cut])
        pos += cut
    out += decoder.feed(frame[pos:])
    assert [r.value for r in out[0]] == values


# Temperature and humidity: SHT3x


def test_sht3x_crc_check_value_and_decoding() -> None:
    assert climate.crc8(b"\xbe\xef") == 0x92  # the datasheet's example
    t, rh = climate.decode_measurement(
        bytes([0x66, 0x66, climate.crc8(b"\x66\x66"), 0x80, 0x00, climate.crc8(b"\x80\x00")])
    )
    assert t.value == pytest.approx(-45 + 175 * 0x6666 / 65535)  # 25.0 °C
    assert rh.value == pytest.approx(100 * 0x8000 / 65535)  # 50.0 %
    with pytest.raises(FrameError, match="bad_checksum"):
        climate.decode_measurement(bytes([0x66, 0x66, 0x00, 0x80, 0x00, 0x00]))
    with pytest.raises(FrameError, match="truncated"):
        climate.decode_measurement(b"\x66\x66")


@given(st.floats(-45, 130), st.floats(0, 100))
def test_sht3x_round_trip(celsius: float, rh: float) -> None:
    t, h = climate.decode_measurement(climate.encode_measurement(celsius, rh))
    assert t.value == pytest.approx(celsius, abs=175 / 65535)
    assert h.value == pytest.approx(rh, abs=100 / 65535)


# Alphasense through an ADS1115


def test_ads1115_config_words_and_scale() -> None:
    assert alphasense.ads1115_config(0) == 0xC383  # AIN0, ±4.096 V, single shot, 128 SPS, comparator off
    assert alphasense.ads1115_config(1) == 0xD383
    assert alphasense.ads1115_config(3, fsr_v=2.048, sps=8) == 0xF503
    assert alphasense.ads1115_millivolts(b"\x7f\xff") == pytest.approx(4095.875)
    assert alphasense.ads1115_millivolts(b"\x80\x00") == -4096.0
    assert alphasense.ads1115_millivolts((2400).to_bytes(2, "big")) == pytest.approx(300.0)


FACTORS = alphasense.TemperatureFactors((10.0, 20.0, 30.0), (1.0, 0.6, 0.4))


def _cal(algorithm: alphasense.Algorithm, **kw: float) -> alphasense.ElectrodeCalibration:
    base = {"we_electronic_zero": 230.0, "ae_electronic_zero": 220.0, "we_sensor_zero": 10.0,
            "ae_sensor_zero": 5.0, "sensitivity": 0.31}  # fmt: skip
    return alphasense.ElectrodeCalibration(**{**base, **kw}, algorithm=algorithm, factors=FACTORS)


def test_alphasense_algorithms_by_hand() -> None:
    we, ae = 300.0, 280.0  # raw mV: WEu - WEe = 70, AEu - AEe = 60
    assert alphasense.corrected_we(_cal(1), we, ae, 20.0) == pytest.approx(70 - 0.6 * 60)
    assert alphasense.corrected_we(_cal(2), we, ae, 20.0) == pytest.approx(70 - 0.6 * (10 / 5) * 60)
    assert alphasense.corrected_we(_cal(3), we, ae, 20.0) == pytest.approx(70 - 5 - 0.6 * 60)
    assert alphasense.corrected_we(_cal(4), we, ae, 20.0) == pytest.approx(70 - 10 - 0.6)
    assert alphasense.gas_ppb(_cal(1), we, ae, 20.0) == pytest.approx(34 / 0.31)
    # Temperature compensation: the factor interpolates (15 °C: 0.8) and holds past the ends.
    assert alphasense.corrected_we(_cal(1), we, ae, 15.0) == pytest.approx(70 - 0.8 * 60)
    assert alphasense.corrected_we(_cal(1), we, ae, -20.0) == pytest.approx(70 - 1.0 * 60)
    assert alphasense.corrected_we(_cal(1), we, ae, 45.0) == pytest.approx(70 - 0.4 * 60)


def test_alphasense_ox_subtracts_the_no2_it_also_sees() -> None:
    ox = _cal(1, sensitivity=0.369, no2_sensitivity=0.3)
    wec = 70 - 0.6 * 60
    assert alphasense.gas_ppb(ox, 300.0, 280.0, 20.0, no2_ppb=40.0) == pytest.approx((wec - 40 * 0.3) / 0.369)
    with pytest.raises(ValueError, match="NO2"):
        alphasense.gas_ppb(ox, 300.0, 280.0, 20.0)


def test_alphasense_calibration_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="sensitivity"):
        _cal(1, sensitivity=0.0)
    with pytest.raises(ValueError, match="rise"):
        alphasense.TemperatureFactors((20.0, 10.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="AE sensor zero"):
        _cal(2, ae_sensor_zero=0.0)
