"""The soak: two instances under mixed traffic for minutes, Redis restarted
once in the middle; fails on any lost or duplicated acknowledged message,
unexpected error frames or close codes, ERROR log lines, memory that keeps
growing, and descriptors or connections that do not level off.

``python -m soak --minutes N`` (``make soak``); docs/reliability.md explains
what it does and why each criterion is what it is.
"""
