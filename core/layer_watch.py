"""Hear every time the channel layer's subscription connection reconnects.

channels_redis' pub/sub layer lets redis-py reconnect its subscription
connection and subscribe again by itself, silently (the layer's own
on_disconnect/on_reconnect hooks are never called: channels_redis issue
406). Whatever was published while it was away is gone, however short the
outage: a revocation among it would be lost without anyone noticing.

redis-py calls a connection's connect callbacks on every (re)connect, after
its own callback has subscribed again, so one more callback on that
connection hears exactly the moments events may have been lost. The
connection belongs to channels_redis' internals (a shard's ``_pubsub``);
this module is the only place that reaches for them, and it says False
when their shape is not what it knows, so callers can fall back to their
probes (core.fanout).
"""

from collections.abc import Callable
from typing import Any


def on_reconnect(layer: Any, channel: str, callback: Callable[[Any], None]) -> bool:
    """Call ``callback(connection)`` whenever ``channel``'s subscription reconnects.

    ``callback`` must be a bound method (redis-py keeps a weak reference, so
    the watch ends with its object). Call after ``channel`` is subscribed.
    Returns False if the layer has no such connection (the in-memory layer,
    or a channels_redis whose internals changed).
    """
    try:
        shard = layer._get_layer()._get_shard(channel)
        register = shard._pubsub.connection.register_connect_callback
    except AttributeError:
        return False
    register(callback)
    return True


async def new_channel(layer: Any, prefix: str) -> str:
    """``layer.new_channel(prefix)``, leaving nothing behind if it fails.

    channels_redis' pub/sub layer registers a new channel's local queue
    before it subscribes in Redis, and keeps the queue when that fails: a
    process retrying through a long outage would pile them up.
    """
    channel: str  # the layer is untyped (its internals are reached for)
    try:
        local = layer._get_layer().channels
    except AttributeError:
        channel = await layer.new_channel(prefix)
        return channel
    before = set(local)
    try:
        channel = await layer.new_channel(prefix)
        return channel
    except BaseException:
        for name in set(local) - before:
            local.pop(name, None)
        raise
