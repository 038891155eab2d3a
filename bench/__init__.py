"""Switchboard's benchmark: ``python -m bench`` (or ``make bench``).

Starts Redis, PostgreSQL and two instances of each target itself, drives them
from a separate load-generator process over loopback, and reports
deliveries/s, latency percentiles, losses, server CPU per delivery and memory
per connection against two baselines measured in the same run. See
docs/performance.md for the method and the latest figures.
"""
