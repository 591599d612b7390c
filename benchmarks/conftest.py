"""Benchmarks run on the same real suite as the tests (real PostgreSQL, gRPC, HTTP)."""

from tests.conftest import *  # noqa: F403
