"""Benchmarks run on the same real suite as the tests (real PostgreSQL, gRPC, HTTP)."""

import pytest

from services.chassis import logs
from services.chassis.config import Settings
from tests.conftest import *  # noqa: F403


@pytest.fixture(scope="session", autouse=True)
def quiet_logs(settings: Settings) -> None:
    """Logs warnings only: the tests log every line, which would be measured too."""
    logs.configure("warning", "json")
