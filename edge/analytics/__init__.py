"""Pure analytics of camera streams: no I/O, no clock of their own.

- ``stream``: :class:`~roadside.edge.analytics.stream.StreamAnalytics`, one stream's
  tracks → counts by class/direction/lane, speeds, zones, events, intervals.
- ``config``: what a view is told (lines, lanes, zones, speed traps, event
  rules, tracker), and the synthetic scene's matching geometry.
- ``bytetrack`` / ``tracker``: the tracker and the ``Tracker`` interface.
- ``lines``, ``geometry``, ``rules``, ``aggregate``: the pieces.
"""
