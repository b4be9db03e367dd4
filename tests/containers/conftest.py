"""Opt-in container tests (`make test-containers`): never collected by a plain `make test`."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("FRACTURE_CONTAINER_TESTS") == "1"
# Heavy (images of several GB, minutes): only when asked for by name through the variable.
collect_ignore_glob = [] if ENABLED else ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: builds images and runs the compose stack")
