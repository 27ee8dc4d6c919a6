"""The hub's HTTP API for city systems (FastAPI): devices, counts, events, health and metrics.

Build it with :func:`roadside.cloud.api.app.create_app` over a store and a registry
the hub process owns. Routers live in :mod:`roadside.cloud.api.routes`, one per
resource; errors are RFC 9457 problems (:mod:`roadside.cloud.api.problems`).
"""
