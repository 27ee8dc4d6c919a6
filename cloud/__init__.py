"""The Roadside hub: ingest, storage, API, training and model release.

Also the fleet's X.509 identity (``roadside.cloud.broker.pki``) and the reference broker
adapter (``roadside.cloud.broker.mosquitto``), which the hub, the demo and the tests share.
"""
