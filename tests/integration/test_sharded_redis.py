"""Two Redis servers (``REDIS_URLS``) under two instances.

The channel layer shards rooms' groups over both servers; a room's presence
lives on the server of its group; each hub keeps its channel on the first
server and probes (and watches) both. Rooms on either server cross
instances, resume, show presence and cut off a removed member; when the
second server restarts, the hubs notice and its rooms' clients still get
what was sent meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from core import presence, shards
from core.services import room_group
from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room
from harness.redis_server import RedisServer
from harness.waiting import async_wait_until
from harness.ws import Clients, WsClient, handshake_status, wait_for_readyz
from tests.integration.common import throwaway_redis, unique_slug

pytestmark = pytest.mark.integration

USERS = 8
LOST = "live events may have been lost"


@pytest.fixture(scope="module")
def second_redis() -> Iterator[RedisServer]:
    yield from throwaway_redis()


@pytest.fixture(scope="module")
def servers(
    own_redis: RedisServer, second_redis: RedisServer
) -> tuple[RedisServer, RedisServer]:
    return own_redis, second_redis


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher,
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
) -> tuple[AppProcess, AppProcess]:
    env = {"REDIS_URL": "", "REDIS_URLS": ",".join(s.url for s in servers)}
    a, b = module_launcher.launch("a", "b", env=env)
    deployment.fetch_tokens(a, b)
    return a, b


@dataclass
class Room:
    slug: str
    id: int
    shard: int


def _presence_ids(server: RedisServer, prefix: str) -> set[int]:
    # <prefix>:presence:<room id> (and :published, :throttle beside it)
    tails = (key.decode().rsplit(":", 1)[1] for key in
             server.client().scan_iter(f"{prefix}:presence:*"))  # fmt: skip
    return {int(tail) for tail in tails if tail.isdigit()}


async def room_on(
    shard: int,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
    clients: Clients,
    *,
    owner: str,
    private: bool = False,
) -> Room:
    """A new room whose group the layer puts on ``shard``, found by trying:
    each room's id shows in the presence key its first connection makes."""
    a, _ = pair
    prefix = deployment.env["SWITCHBOARD_CHANNEL_PREFIX"]
    for attempt in range(40):
        slug = unique_slug(f"shard{shard}-{attempt}")
        create_room(a, deployment.tokens[owner], slug, private=private)
        before = set().union(*(_presence_ids(s, prefix) for s in servers))
        probe = await clients.open(a, slug, token=deployment.tokens[owner])
        found = {
            index: _presence_ids(server, prefix) - before
            for index, server in enumerate(servers)
        }
        await probe.close()
        [(on, [room_id])] = [(i, sorted(ids)) for i, ids in found.items() if ids]
        group = f"{prefix}__group__room.{room_id}"
        # Presence is on the server that carries the room's group.
        assert on == shards.index(group, 2)
        if on == shard:
            return Room(slug, room_id, on)
    raise AssertionError(f"no room on shard {shard} in 40 tries")


def users_in(client: WsClient) -> set[str]:
    frames = [f for f in client.frames if f.get("type") == "presence"]
    return set(frames[-1]["users"]) if frames else set()


@pytest.mark.parametrize("shard", [0, 1])
async def test_a_room_on_either_shard_crosses_instances_with_presence(
    shard: int,
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
    clients: Clients,
) -> None:
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    room = await room_on(shard, pair, deployment, servers, clients, owner=names[0])
    # The group is subscribed on that server only (both instances).
    channel = f"{deployment.env['SWITCHBOARD_CHANNEL_PREFIX']}__group__room.{room.id}"
    on_a = await clients.open(a, room.slug, token=tokens[names[1]], name="1@A")
    on_b = await clients.open(b, room.slug, token=tokens[names[2]], name="2@B")
    subscribers = [dict(s.client().pubsub_numsub(channel))[channel.encode()]
                   for s in servers]  # fmt: skip
    assert subscribers[room.shard] == 2
    assert subscribers[1 - room.shard] == 0

    both = {names[1], names[2]}
    for client in (on_a, on_b):
        await async_wait_until(
            lambda c=client: users_in(c) == both or None,
            10,
            message=f"{client.name} seeing both users present",
        )
    first = await on_a.send_message("from A")
    second = await on_b.send_message("from B")
    for client in (on_a, on_b):
        await client.wait_for_seqs({first, second})
        assert [m["body"] for m in client.messages] == ["from A", "from B"]


async def test_a_client_resumes_on_the_other_instance(
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
    clients: Clients,
) -> None:
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    room = await room_on(1, pair, deployment, servers, clients, owner=names[3])
    author = await clients.open(a, room.slug, token=tokens[names[3]], name="author")
    sleeper = await clients.open(a, room.slug, token=tokens[names[4]], name="sleeper")
    seen = await author.send_message("seen")
    await sleeper.wait_for_seqs({seen})
    await sleeper.close()
    missed = [await author.send_message(f"missed {n}") for n in range(3)]
    resumed = await clients.resume(b, sleeper)
    await resumed.wait_for_seqs(set(missed))
    assert seen not in resumed.seqs()  # ?after= skipped what it had


async def test_a_member_removed_on_a_is_cut_off_on_b(
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
    clients: Clients,
) -> None:
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    owner, member = names[5], names[6]
    room = await room_on(
        1, pair, deployment, servers, clients, owner=owner, private=True
    )
    status, _ = await ahttp_json(
        a,
        "POST",
        f"/api/rooms/{room.slug}/members/",
        token=tokens[owner],
        body={"username": member},
    )
    assert status == 201
    member_on_b = await clients.open(b, room.slug, token=tokens[member], name="m@B")
    status, _ = await ahttp_json(
        a, "DELETE", f"/api/rooms/{room.slug}/members/{member}/", token=tokens[owner]
    )
    assert status == 204
    assert await member_on_b.wait_closed(timeout=5) == 4403
    assert await handshake_status(b, room.slug, tokens[member]) == 403


async def test_after_the_second_redis_restarts_its_rooms_get_what_was_sent(
    pair: tuple[AppProcess, AppProcess],
    deployment: Deployment,
    servers: tuple[RedisServer, RedisServer],
    clients: Clients,
) -> None:
    """The hubs' channels live on the first server; the room's group on the
    second. Only probing (and watching) every shard notices its outage:
    both hubs say so, and the reader gets what was sent meanwhile."""
    a, b = pair
    tokens, names = deployment.tokens, deployment.usernames
    sender = names[7]
    room = await room_on(1, pair, deployment, servers, clients, owner=sender)
    reader = await clients.open(a, room.slug, name="reader@A")
    writer = await clients.open(b, room.slug, token=tokens[sender], name="writer@B")
    before = await writer.send_message("before the restart")
    await reader.wait_for_seqs({before})
    logged = {app.name: app.log_text().count(LOST) for app in pair}

    second = servers[1]
    await asyncio.to_thread(second.stop)
    status, during = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{room.slug}/messages/",
        token=tokens[sender],
        body={"body": "while the second Redis is down"},
    )
    assert status == 201, during
    await asyncio.to_thread(second.start)
    for app in pair:
        await wait_for_readyz(app, 200)
        await async_wait_until(
            lambda app=app: app.log_text().count(LOST) > logged[app.name] or None,
            15,
            message=f"{app.name}'s hub noticing the second Redis' outage",
        )
    after = await writer.send_message("after the restart")
    if reader.closed:  # allowed: a client resumes after any close
        reader = await clients.resume(a, reader)
    await reader.wait_for_seqs({during["seq"], after}, timeout=10)
    assert [m["body"] for m in reader.messages][-2:] == [
        "while the second Redis is down",
        "after the restart",
    ]


async def test_sweeps_and_refreshes_reach_each_room_on_its_shard(
    servers: tuple[RedisServer, RedisServer], settings
) -> None:
    """Every room a process serves is refreshed and swept in pipelines per
    shard (ROOMS_PER_PIPELINE rooms each), not a round trip per room: each
    room's entries still land on its own shard, and a sweep names exactly
    the rooms that had expired entries."""
    settings.REDIS_URLS = [server.url for server in servers]
    settings.REDIS_SHARD_OPTIONS = [{}, {}]
    settings.CHANNEL_LAYER_KIND = "pubsub"
    settings.CHANNEL_PREFIX = prefix = unique_slug("sweeps")
    store = presence.RedisStore()
    rooms = [presence.RoomRef(n, f"r{n}") for n in range(1, 251)]
    assert len(rooms) > 2 * presence.ROOMS_PER_PIPELINE  # several per shard
    now = time.time()
    try:
        await store.put_many({room: ["u|alice"] for room in rooms}, now + 60)
        await store.put_many({room: ["u|bob"] for room in rooms[::3]}, now - 1)
        await store.put_many({room: [] for room in rooms}, now + 60)  # no-op
        for shard, server in enumerate(servers):
            assert _presence_ids(server, prefix) == {
                room.id for room in rooms
                if shards.of_group(room_group(room.id)) == shard
            }  # fmt: skip
        swept = await store.sweep_many(rooms, now)
        assert sorted(swept) == rooms[::3]
        assert await store.sweep_many(rooms, now) == []
        for room in rooms:
            assert await store.members(room, now) == ["u|alice"]
    finally:
        for client in store.clients.values():
            await client.aclose()
