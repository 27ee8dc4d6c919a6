"""The SUMO world: Eclipse SUMO moves the traffic, virtual cameras see it.

- :mod:`roadside.sim.sumo.tools`: the SUMO binaries that come with the ``eclipse-sumo``
  wheel (``sumo``, ``netconvert``, ``duarouter``), run with clear errors.
- :mod:`roadside.sim.sumo.scenarios`: our own scenarios (a four-leg signalised
  intersection with pedestrians, a three-leg junction on an arterial), generated
  into a folder from a seed.
- :mod:`roadside.sim.sumo.poses`: camera pose files, and poses that cover every
  approach of any junction of any network, or the whole junction from one mast.
- :mod:`roadside.sim.sumo.world`: a SUMO simulation over TraCI (started here, or
  attached to as one of several clients), stepped at 0.1 s, giving every road user.
- :mod:`roadside.sim.sumo.render`: the road and its users drawn in perspective
  through a calibrated camera (:mod:`roadside.vision.calibration`), with ground truth.
- :mod:`roadside.sim.sumo.source`: the ``sumo`` camera of the edge agent, registered
  through the ``roadside.sources`` entry point.
- :mod:`roadside.sim.sumo.tmc`: turning-movement counts from a junction camera through
  the agent's tracker and movement counter, against SUMO's route-based truth.
- :mod:`roadside.sim.sumo.air`: SUMO's emissions dispersed to the poles
  (:mod:`roadside.sim.dispersion`) and compared with the hub's estimate from the counts.

Needs the ``[sim]`` extra. See ``docs/sumo.md``.
"""
