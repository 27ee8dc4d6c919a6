"""Roadside protocol code shared by the edge agent and the cloud hub.

Pure: no network, database or inference library is imported here.
"""

PROTOCOL_VERSION = 1
