"""The hub's default per-class emission factors, g per vehicle-km, and where they come from.

Source: Eclipse SUMO 1.28.0's emission model with its default HBEFA 4 classes
(``HBEFA4/PC_petrol_Euro-4`` for cars, ``RT_le7.5t_Euro-VI_A-C`` for trucks,
``TT_AT_gt34-40t_Euro-VI_A-C`` for trailers, ``UBus_Std_gt15-18t_Euro-VI_A-C``
for buses, ``MC_4S_gt250cc_preEuro`` for motorcycles; bicycles emit nothing),
run over Roadside's intersection scenario (50 km/h legs, a signalised
junction, its vehicle mix) at seed 7 for 1,920 simulated seconds: each
detector class's mass over its finished trips' distance. Reproduce with
``python -m bench.air_sumo --derive-factors`` (docs/air-quality.md).

Per **detector** class, as the hub counts: ``truck`` is trucks, trailers and
buses weighted by distance; ``cyclist`` is motorcycles and bicycles (about
half and half here, so the factor moves with that share). NOx is
NO2-equivalent mass; ``pm10`` is SUMO's ``PMx``, which for HBEFA 4 is PM10
from exhaust and wear together (SUMO's HBEFA4 page). These stand for a Euro-4/
Euro-VI fleet in urban stop-and-go: replace them with the city's own fleet
(EMEP/EEA Guidebook 1.A.3.b, HBEFA, COPERT) in ``air.emission_factors``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_EMISSION_FACTORS", "DEFAULT_EMISSION_FACTORS_SOURCE"]

DEFAULT_EMISSION_FACTORS_SOURCE: Final = (
    "SUMO 1.28.0 HBEFA4 default classes over Roadside's intersection scenario, seed 7 "
    "(python -m bench.air_sumo --derive-factors)"
)

DEFAULT_EMISSION_FACTORS: Final[dict[str, dict[str, float]]] = {
    "nox": {"car": 0.1083, "cyclist": 0.1093, "truck": 0.509},
    "pm10": {"car": 0.0206, "cyclist": 0.0257, "truck": 0.2351},
    "co2": {"car": 309.5, "cyclist": 99.4, "truck": 1322.2},
}
