"""Fixtures every test gets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Put the root logger back as the test found it.

    A command run in-process (``CliRunner``, a demo, ``roadside signal run``) calls
    ``setup_logging``, which points the root logger at the ``sys.stderr`` of that moment: under
    ``CliRunner`` a stream closed when the command returns. Left in place, every later log line
    from any test's background thread fails with "I/O operation on closed file", and the
    failure report lands in the next command's captured output.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
