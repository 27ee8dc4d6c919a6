"""Gas concentrations between mixing ratio (ppb, ppm) and mass per volume (µg/m³).

``µg/m³ = ppb × M / V_m`` with ``M`` the molar mass (g/mol) and ``V_m`` the
molar volume of an ideal gas at the reference conditions. The US EPA states
its gas breakpoints as mixing ratios; the EU's directives and both European
indices state mass concentrations at 293.15 K and 101.325 kPa
(Directive 2008/50/EC, Annex VI; kept in Directive (EU) 2024/2881), where
``V_m = 24.055 L/mol``. At 25 °C (the convention of US conversions) it is
24.465 L/mol.
"""

from __future__ import annotations

from typing import Final, Literal

Gas = Literal["no2", "o3", "so2", "co"]

# Molar masses, g/mol (IUPAC standard atomic weights: N 14.007, O 15.999, S 32.06, C 12.011).
MOLAR_MASS: Final[dict[Gas, float]] = {"no2": 46.005, "o3": 47.997, "so2": 64.058, "co": 28.010}

R: Final = 8.314462618  # J/(mol·K)
EU_REFERENCE_K: Final = 293.15
US_REFERENCE_K: Final = 298.15
STANDARD_PA: Final = 101325.0


def molar_volume_l(kelvin: float = EU_REFERENCE_K, pascal: float = STANDARD_PA) -> float:
    """Litres per mole of an ideal gas."""
    return R * kelvin / pascal * 1000.0


def ppb_to_ugm3(gas: Gas, ppb: float, kelvin: float = EU_REFERENCE_K) -> float:
    return ppb * MOLAR_MASS[gas] / molar_volume_l(kelvin)


def ugm3_to_ppb(gas: Gas, ugm3: float, kelvin: float = EU_REFERENCE_K) -> float:
    return ugm3 * molar_volume_l(kelvin) / MOLAR_MASS[gas]
