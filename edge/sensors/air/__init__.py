"""Drivers for the air-quality sensors cities put on poles: each a pure frame codec plus a thin reader.

=================  ==========================================  ==========================
device             frames                                      module
=================  ==========================================  ==========================
Plantower PMS5003  32-byte frames, 16-bit sum, active/passive  :mod:`.plantower`
/ PMS7003
Nova SDS011        10-byte frames, 8-bit sum, duty cycle       :mod:`.sds011`
Sensirion SPS30    UART SHDLC: 0x7E-delimited, byte-stuffed,   :mod:`.sps30`
                   inverted 8-bit sum
Alphasense B4/A4   working and auxiliary electrode voltages    :mod:`.alphasense`
NO2 / OX           through an ADC (ADS1115), calibration sheet
Sensirion SHT3x    temperature and RH words, CRC-8             :mod:`.climate`
=================  ==========================================  ==========================

The codecs take bytes and return readings or raise :class:`~.framing.FrameError`
with a fixed ``reason``; :class:`~.framing.FrameStats` counts both. Only
:mod:`.reader` opens a port. Sources: ``docs/air-quality.md``.
"""
