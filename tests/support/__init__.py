"""Helpers that start real services for tests, benchmarks and make stack."""
