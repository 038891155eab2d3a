"""Test-only tooling: a fake transport, fault and stall wrappers, tiers, mutation.

The services the tests start are in the top-level ``harness`` package.
"""
