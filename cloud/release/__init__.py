"""Model release: the TUF-signed model repository the fleet updates from.

- :mod:`roadside.cloud.release.keys` — offline root keys and the hub's online role keys.
- :mod:`roadside.cloud.release.repository` — the repository on disk: create, publish
  a model, refresh the timestamp, rotate keys; ``release_model`` also records
  the model (and its lineage) in the registry.
- :mod:`roadside.cloud.release.server` — serves the repository read-only over HTTP(S).

Devices verify everything with python-tuf's ngclient (:mod:`roadside.edge.ota`).
"""
