"""The simulated world Roadside is built and tested against.

- :mod:`roadside.sim.synthetic`: the synthetic road scene with ground truth (numpy and
  OpenCV only; ``models/`` trains and evaluates on it).
- :mod:`roadside.sim.camera`: that scene as a camera of the edge agent, which reaches it
  only through the ``roadside.sources`` entry-point group.
- :mod:`roadside.sim.sumo`: the SUMO world (Eclipse SUMO over TraCI) seen through virtual
  cameras; its ``sumo`` camera also reaches the agent through ``roadside.sources``
  (``docs/sumo.md``).
- :mod:`roadside.sim.demo` and :mod:`roadside.sim.drift`: the ``roadside demo`` scenarios (the
  whole loop on one machine; the drift and retraining scenario).

``sim`` may import every other part; no part imports ``sim`` except the
command line, which offers the demo (``docs/architecture.md``). Keep this
file free of imports: ``models/`` imports :mod:`roadside.sim.synthetic`.
"""
