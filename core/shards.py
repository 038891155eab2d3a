"""Which of several Redis servers (``REDIS_URLS``) holds what.

The channel layer shards by itself: channels_redis sends every channel and
group name to ``hosts[crc32(name) & 0xFFF * len(hosts) // 4096]`` (its
``_consistent_hash``). Everything else that Switchboard keeps in Redis
follows the same function, so that it is the same in every process,
whatever the Python hash seed:

- a room's presence lives on the shard of the room's group, as the
  configured layer hashes it (the pub/sub layer hashes the group's channel
  name ``<prefix>__group__<group>``, the list layer the group name), so a
  room's events and its presence fail and recover together;
- a limit's key (a bucket or a slot set) lives on the shard of the key;
- the cache and the metrics snapshots live on the first shard.

With one Redis every answer is 0. Reordering REDIS_URLS, or adding a
server, moves names between shards: what moves is transient (presence
expires within a TTL, buckets refill, slots' leases run out) and the hub
re-joins its groups after any gap, but deploy such a change to every
instance at once (docs/deploy.md).
"""

import binascii

from django.conf import settings

RING = 4096


def index(name: str, count: int) -> int:
    """The shard of ``name`` among ``count``: channels_redis' own function."""
    if count <= 1:
        return 0
    return int((binascii.crc32(name.encode()) & (RING - 1)) / (RING / count))


def count() -> int:
    """How many Redis servers there are (0 without Redis)."""
    return len(settings.REDIS_URLS)


def of_key(key: str) -> int:
    """The shard of a Redis key that Switchboard keeps itself."""
    return index(key, count())


def of_group(group: str) -> int:
    """The shard that carries channel-layer group ``group``."""
    if settings.CHANNEL_LAYER_KIND == "pubsub":
        # RedisPubSubLoopLayer._get_group_channel_name
        return index(f"{settings.CHANNEL_PREFIX}__group__{group}", count())
    return index(group, count())


def group_on(shard: int, stem: str) -> str:
    """A group name starting with ``stem`` that the layer puts on ``shard``
    (one per shard, e.g. for probing each of them)."""
    attempt = 0
    while True:
        name = f"{stem}.{shard}.{attempt}"
        if of_group(name) == shard:
            return name
        attempt += 1
