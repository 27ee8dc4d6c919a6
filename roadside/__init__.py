"""The ``roadside`` command's entry point (:mod:`roadside.cli`): the one module that assembles the parts.

The parts keep their own top-level folders for now (``shared``, ``vision``,
``mqttlink``, ``edge``, ``cloud``, ``models``, ``sim``); ``docs/architecture.md``
says which may import which.
"""
