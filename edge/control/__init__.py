"""Commands from the hub, from the wire inwards, one module per job.

- :mod:`~roadside.edge.control.verifier`: open a sealed command with whichever of the
  device's keys it is addressed to (the current one, and during a rotation the
  pending one); the hub's signature, freshness and replay, then the schema.
- :mod:`~roadside.edge.control.intake`: verified commands wait in a bounded queue for
  the one command thread; each is answered through the outbox.
- :mod:`~roadside.edge.control.handler`: run a verified command against the agent
  (:class:`~roadside.edge.control.handler.AgentSurface`) and return the ack;
  idempotent by command id.
- :mod:`~roadside.edge.control.journal`: the acks of recent commands, kept on disk.
- :mod:`~roadside.edge.control.keys`: keys made by ``rotate_keys``, kept beside the bundle.
- :mod:`~roadside.edge.control.reload`: the pure diff behind ``reload_config``.
- :mod:`~roadside.edge.control.streams`: which streams may run (names, how many).
- :mod:`~roadside.edge.control.redaction`: camera credentials kept out of acks and logs.
- :mod:`~roadside.edge.control.files`: atomic, owner-only writes of small state files.
"""
