"""Loopback ports for the tests that start servers or training clusters of their own: bench's finder."""
from bench.serve_load import free_ports

__all__ = ["free_ports"]
