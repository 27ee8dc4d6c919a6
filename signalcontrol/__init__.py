"""A NEMA-style actuated signal controller that Roadside's detector calls drive.

::

    calls (hub's call stream, or SUMO's own detectors)  ─► CallTable (pure)
        ─► ActuatedController (pure: ring-and-barrier, min/passage/max, yellow, all-red, peds)
        ─► ConflictMonitor (pure: the safety invariants, checked on every output)
        ─► SignalHeads adapter (SUMO over TraCI; NTCIP 1202 or contact closures would be others)
        ─► phase events (ATSPM codes 1, 8, 10, 11, 21, 22, ...) back to the hub

Everything that decides is pure and clocked in tenths of a second (the ATSPM
log's resolution and SUMO's step); the adapters only move calls in and
indications out. See ``docs/signals.md`` (controller section) and
``docs/adr/0014-signal-controller-package.md``.
"""
