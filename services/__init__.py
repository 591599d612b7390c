"""Mailplane's gRPC services, one package each, and the chassis they share."""
