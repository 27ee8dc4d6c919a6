"""Over-the-air model updates: verified with python-tuf, decided by a pure policy, installed atomically.

- :mod:`roadside.edge.ota.policy` — pure decisions: is a signed target safe and right for this agent?
- :mod:`roadside.edge.ota.updater` — :class:`~roadside.edge.ota.updater.ModelUpdater`: check and stage, activate,
  roll back, and choose the model to boot (always one that verifies).

When to activate (shadow tests, rollout waves) is the rollout's decision, not this package's.
"""
