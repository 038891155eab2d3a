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

import uuid
from collections.abc import Callable
from typing import Any

from core import shards


def on_reconnect(layer: Any, callback: Callable[[Any], None]) -> bool:
    """Call ``callback(connection)`` whenever a subscription reconnects.

    The pub/sub layer holds one subscription connection per Redis server
    (shard), made when something is first subscribed there; ``callback``
    is registered on each of them (redis-py registers a callback once, so
    calling again is harmless). ``callback`` must be a bound method (redis-py
    keeps a weak reference, so the watch ends with its object). Returns
    True once every shard's subscription is watched; False while one has
    no connection yet, or if the layer has none at all (the in-memory and
    list layers, or a channels_redis whose internals changed).
    """
    try:
        shards = layer._get_layer()._shards
    except AttributeError:
        return False
    watched = 0
    for shard in shards:
        try:
            register = shard._pubsub.connection.register_connect_callback
        except AttributeError:
            continue  # nothing subscribed on this shard yet
        register(callback)
        watched += 1
    return bool(shards) and watched == len(shards)


async def new_channel(layer: Any, prefix: str) -> str:
    """``layer.new_channel(prefix)`` on the first shard, leaving nothing
    behind if it fails.

    With several Redis servers a channel's name decides its shard; the
    first one (where the cache and metrics live too) keeps it the same
    shard for every process. channels_redis' pub/sub layer registers a new
    channel's local queue before it subscribes in Redis, and keeps the
    queue when that fails: a process retrying through a long outage would
    pile them up.
    """
    channel: str  # the layer is untyped (its internals are reached for)
    try:
        inner = layer._get_layer()
        local = inner.channels
        subscribe = inner._subscribe_to_channel
        count = len(inner._shards)
        stem = f"{inner.prefix}{prefix}"
    except AttributeError:
        # The list layer (or the in-memory one): it names channels locally
        # and keeps all of a process's on the shard of their common
        # non-local part, which no name chosen here changes.
        channel = await layer.new_channel(prefix)
        return channel
    while True:  # RedisPubSubLoopLayer.new_channel's names, on shard 0
        channel = f"{stem}{uuid.uuid4().hex}"
        if shards.index(channel, count) == 0:
            break
    try:
        await subscribe(channel)
        return channel
    except BaseException:
        local.pop(channel, None)
        raise
