"""Which Redis holds what (core.shards): the channel layer's own choice.

Presence must land on the shard that carries its room's group, for the
layer in use, in every process alike; limits spread their keys over the
shards; one Redis means shard 0 for everything.
"""

from collections import Counter

import pytest
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubLoopLayer
from channels_redis.utils import _consistent_hash

from core import presence, shards
from core.services import room_group

TWO = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"]
THREE = [*TWO, "redis://127.0.0.1:3/0"]


@pytest.fixture
def sharded(settings):
    settings.REDIS_URLS = TWO
    settings.REDIS_URL = TWO[0]
    settings.REDIS_SHARD_OPTIONS = [{}, {}]
    settings.CHANNEL_PREFIX = "sbshards"
    return settings


def test_the_hash_is_channels_redis_own():
    for count in (1, 2, 3, 5):
        for n in range(500):
            name = f"room.{n}"
            assert shards.index(name, count) == _consistent_hash(name, count)


def test_the_hash_is_stable_across_processes():
    """A CRC, never Python's hash() (salted per process): fixed answers."""
    assert [shards.index(f"room.{n}", 2) for n in range(8)] == [
        _consistent_hash(f"room.{n}", 2) for n in range(8)
    ]
    assert shards.index("switchboard__group__room.1", 2) == 1
    assert shards.index("switchboard__group__room.8", 2) == 0
    assert shards.index("room.7", 3) == 2


@pytest.mark.parametrize("urls", [TWO, THREE])
def test_rooms_spread_over_the_shards(settings, urls):
    settings.REDIS_URLS = urls
    counts = Counter(shards.of_group(room_group(n)) for n in range(3000))
    assert set(counts) == set(range(len(urls)))
    for count in counts.values():
        assert abs(count - 3000 / len(urls)) < 3000 * 0.1, counts


def test_limit_keys_spread_over_the_shards(sharded):
    counts = Counter(shards.of_key(f"sb:bucket:send:user:{n}") for n in range(2000))
    assert set(counts) == {0, 1}
    assert min(counts.values()) > 800, counts


def test_one_redis_is_shard_zero_for_everything(settings):
    settings.REDIS_URLS = ["redis://127.0.0.1:1/0"]
    assert {shards.of_group(room_group(n)) for n in range(100)} == {0}
    assert {shards.of_key(f"k{n}") for n in range(100)} == {0}


def test_a_room_group_is_where_the_pubsub_layer_puts_it(sharded):
    sharded.CHANNEL_LAYER_KIND = "pubsub"
    layer = RedisPubSubLoopLayer(hosts=TWO, prefix="sbshards")
    for n in range(300):
        group = room_group(n)
        shard = layer._get_shard(layer._get_group_channel_name(group))
        assert layer._shards.index(shard) == shards.of_group(group)


def test_a_room_group_is_where_the_list_layer_puts_it(sharded):
    sharded.CHANNEL_LAYER_KIND = "lists"
    layer = RedisChannelLayer(hosts=TWO, prefix="sbshards")
    for n in range(300):
        group = room_group(n)
        assert layer.consistent_hash(group) == shards.of_group(group)


@pytest.mark.parametrize("kind", ["pubsub", "lists"])
def test_group_on_names_a_group_on_each_shard(sharded, kind):
    sharded.CHANNEL_LAYER_KIND = kind
    sharded.REDIS_URLS = THREE
    names = [shards.group_on(shard, "hub-probe.abc") for shard in range(3)]
    assert [shards.of_group(name) for name in names] == [0, 1, 2]
    assert len(set(names)) == 3


def test_presence_of_a_room_is_kept_on_its_groups_shard(sharded):
    sharded.CHANNEL_LAYER_KIND = "pubsub"
    store = presence.RedisStore()
    seen = set()
    for n in range(1, 40):
        room = presence.RoomRef(n, f"r{n}")
        client = store.client(room)
        port = client.connection_pool.connection_kwargs["port"]
        expected = shards.of_group(room_group(n))
        assert port == expected + 1, n
        seen.add(port)
    assert seen == {1, 2}
