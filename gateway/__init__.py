"""The REST gateway: one FastAPI app that composes the gRPC services."""
