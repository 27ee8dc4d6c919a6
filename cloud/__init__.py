"""The Roadside hub: ingest, storage, API, training and model release.

Also the fleet's X.509 identity (``cloud.pki``) and the reference broker
adapter (``cloud.broker``), which the hub, the demo and the tests share.
"""
