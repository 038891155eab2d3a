"""Baselines the benchmark runs beside Switchboard, in the same invocation.

``tutorial_*``: the Channels tutorial's pattern (every connection joins the
room's layer group; every message is a ``group_send``), on Daphne with the
project's channels_redis settings. ``raw_server``: a minimal ``websockets`` +
Redis pub/sub broadcaster, the practical limit of Python here. Both speak just
enough of the protocol (docs/protocol.md) for the same load generator:
``send`` frames in, ``message`` frames (with the ``body`` verbatim) out.
"""
