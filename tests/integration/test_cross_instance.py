"""Two Daphne instances sharing Redis and PostgreSQL act as one service.

Every test uses a room of its own on the module's instances A and B. Their
send limits are raised (SWITCHBOARD_SEND_BURST, _RATE_PER_SECOND) so that
pipelined senders are not rate limited; nothing else differs from defaults.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from harness.app import AppProcess, manage
from harness.deployment import Deployment, Launcher
from harness.http import ahttp_json, create_room, http_json
from harness.postgres import connect_url
from harness.ws import Clients, WsClient, handshake_status
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration

USERS = 7

MODULE_ENV = {
    "SWITCHBOARD_SEND_BURST": "500",
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "500",
    # Only the events a change publishes may cut a connection off here: the
    # periodic re-check, whose first pass falls anywhere in its interval, would
    # race the tests that check what the store refuses on its own.
    "SWITCHBOARD_ACCESS_RECHECK_SECONDS": "3600",
}


@pytest.fixture(scope="module")
def pair(
    module_launcher: Launcher, deployment: Deployment
) -> tuple[AppProcess, AppProcess]:
    a, b = module_launcher.launch("a", "b", env=MODULE_ENV)
    deployment.fetch_tokens(a, b)
    return a, b


@pytest.fixture(scope="module")
def tokens(pair: tuple[AppProcess, AppProcess], deployment: Deployment) -> list[str]:
    """One API token per module user, in the order of ``deployment.usernames``."""
    return [deployment.tokens[name] for name in deployment.usernames]


async def test_messages_sent_on_one_instance_reach_both_once_in_seq_order(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    a, b = pair
    slug = unique_slug("fanout")
    create_room(a, tokens[0], slug)
    sender = await clients.open(a, slug, token=tokens[1], name="sender@A")
    watchers = [
        await clients.open(a, slug, name="anonymous@A"),
        await clients.open(a, slug, token=tokens[2], name="user@A"),
        await clients.open(b, slug, name="anonymous@B"),
        await clients.open(b, slug, token=tokens[3], name="user@B"),
    ]

    bodies = [f"message {n} from A" for n in range(1, 11)]
    await sender.publish(bodies)
    acked = sorted(sender.acks.values())
    assert acked == list(range(1, 11))
    # A last message fences the stream: anything duplicated would come before it.
    fence = await sender.send_message("fence")

    for client in [sender, *watchers]:
        await client.wait_for_seqs(range(1, fence + 1))
        assert client.seqs() == list(range(1, fence + 1)), client.name
        assert [m["body"] for m in client.messages] == [*bodies, "fence"]
        assert {m["author"] for m in client.messages} == {sender.frames[0]["user"]}


async def test_http_post_on_b_reaches_websocket_clients_on_a(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    a, b = pair
    slug = unique_slug("http-post")
    create_room(a, tokens[0], slug)
    on_a = [
        await clients.open(a, slug, name="anonymous@A"),
        await clients.open(a, slug, token=tokens[2], name="user@A"),
    ]

    status, posted = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[1],
        body={"body": "posted over HTTP on B", "client_id": "http-1"},
    )

    assert status == 201, posted
    assert posted["seq"] == 1
    for client in on_a:
        await client.wait_for_seqs({1})
        assert client.messages == [posted]


async def test_announce_reaches_both_instances_without_an_author(
    pair: tuple[AppProcess, AppProcess],
    tokens: list[str],
    clients: Clients,
    deployment: Deployment,
) -> None:
    a, b = pair
    slug = unique_slug("announce")
    create_room(a, tokens[0], slug)
    listeners = [
        await clients.open(a, slug, token=tokens[1], name="user@A"),
        await clients.open(b, slug, name="anonymous@B"),
    ]

    result = await asyncio.to_thread(
        manage,
        "announce",
        slug,
        "Maintenance at 22:00 UTC",
        env=deployment.instance_env(),
    )

    assert f"Posted to {slug} as seq 1." in result.stdout
    for client in listeners:
        await client.wait_for_seqs({1})
        (message,) = client.messages
        assert message["author"] is None
        assert message["body"] == "Maintenance at 22:00 UTC"
        assert message["client_id"] is None


async def test_concurrent_senders_on_both_instances_get_one_gap_free_order(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    """Seqs come from Room.last_seq under a PostgreSQL row lock."""
    a, b = pair
    slug = unique_slug("concurrent")
    create_room(a, tokens[0], slug)
    per_sender = 30
    senders = [
        await clients.open(app, slug, token=tokens[n], name=f"sender{n}@{app.name}")
        for n, app in enumerate([a, b, a, b, a, b], start=1)
    ]
    watchers = [
        await clients.open(a, slug, name="watcher@A"),
        await clients.open(b, slug, name="watcher@B"),
    ]

    await asyncio.gather(
        *(
            sender.publish([f"{sender.name} #{k}" for k in range(per_sender)])
            for sender in senders
        )
    )

    total = per_sender * len(senders)
    acked = [seq for sender in senders for seq in sender.acks.values()]
    assert sorted(acked) == list(range(1, total + 1)), "seq is not gap-free and unique"
    for sender in senders:
        own = [sender.acks[cid] for cid in sender.sent]
        assert own == sorted(own), f"{sender.name}: acks out of send order"

    orders = []
    for client in [*watchers, *senders]:
        await client.wait_for_seqs(range(1, total + 1), timeout=15)
        assert not client.duplicate_seqs(), client.name
        by_seq = sorted(client.messages, key=lambda m: m["seq"])
        orders.append([(m["seq"], m["author"], m["body"]) for m in by_seq])
    assert all(order == orders[0] for order in orders)

    expected = {
        seq: sender.sent[cid] for sender in senders for cid, seq in sender.acks.items()
    }
    assert {seq: body for seq, _, body in orders[0]} == expected


async def test_member_removed_on_a_is_cut_off_on_b_and_refused(
    pair: tuple[AppProcess, AppProcess],
    tokens: list[str],
    clients: Clients,
    deployment: Deployment,
) -> None:
    a, b = pair
    owner_token, member_token = tokens[4], tokens[5]
    member = deployment.usernames[5]
    slug = unique_slug("private")
    create_room(a, owner_token, slug, private=True)
    status, _ = await ahttp_json(
        a,
        "POST",
        f"/api/rooms/{slug}/members/",
        token=owner_token,
        body={"username": member},
    )
    assert status == 201
    member_on_b = await clients.open(b, slug, token=member_token, name="member@B")
    owner_on_b = await clients.open(b, slug, token=owner_token, name="owner@B")

    removed_at = time.monotonic()
    status, _ = await ahttp_json(
        a, "DELETE", f"/api/rooms/{slug}/members/{member}/", token=owner_token
    )
    assert status == 204

    assert await member_on_b.wait_closed(timeout=5) == 4403
    cut_off_after = member_on_b.closed_at - removed_at
    figures = report("member removed", {"cut_off_after_s": f"{cut_off_after:.3f}"})
    assert cut_off_after < 2.0, figures
    assert await handshake_status(b, slug, member_token) == 403
    assert await handshake_status(a, slug, member_token) == 403
    # The owner's connection is not affected and still gets messages.
    seq = await owner_on_b.send_message("still here")
    await owner_on_b.wait_for_seqs({seq})
    assert not owner_on_b.closed


async def test_readyz_is_ok_while_an_instance_serves_websockets(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    a, _ = pair
    slug = unique_slug("ready")
    create_room(a, tokens[0], slug)
    await clients.open(a, slug, name="anonymous@A")

    answers = [await ahttp_json(a, "GET", "/readyz") for _ in range(2)]

    assert answers == [(200, {"status": "ok"})] * 2


async def test_a_repeated_client_id_on_either_instance_is_stored_once(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    """On PostgreSQL a repeat hits the unique constraint inside the statement
    that takes the seq, so the seq is undone with it: no gap follows."""
    a, b = pair
    slug = unique_slug("repeat")
    create_room(a, tokens[0], slug)
    on_a = await clients.open(a, slug, token=tokens[1], name="author@A")
    on_b = await clients.open(b, slug, token=tokens[1], name="author@B")

    frame = {"type": "send", "body": "once", "client_id": "same-id"}
    await asyncio.gather(on_a.send(frame), on_b.send(frame))  # racing repeats
    for client in (on_a, on_b):
        await client.wait_for(lambda c=client: "same-id" in c.acks, 10, "the ack")
    assert on_a.acks["same-id"] == on_b.acks["same-id"] == 1
    status, repeat = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[1],
        body={"body": "different body", "client_id": "same-id"},
    )
    assert (status, repeat["seq"], repeat["body"]) == (200, 1, "once")

    assert await on_a.send_message("next") == 2
    status, page = await ahttp_json(a, "GET", f"/api/rooms/{slug}/messages/")
    assert status == 200
    assert [(m["seq"], m["body"]) for m in page["messages"]] == [
        (1, "once"),
        (2, "next"),
    ]
    assert not on_a.errors()
    assert not on_b.errors()


async def test_a_non_member_cannot_post_to_a_private_room(
    pair: tuple[AppProcess, AppProcess], tokens: list[str]
) -> None:
    a, b = pair
    slug = unique_slug("private")
    create_room(a, tokens[0], slug, private=True)
    status, _ = await ahttp_json(
        b,
        "POST",
        f"/api/rooms/{slug}/messages/",
        token=tokens[2],
        body={"body": "let me in"},
    )
    assert status == 404
    status, page = await ahttp_json(
        a, "GET", f"/api/rooms/{slug}/messages/", token=tokens[0]
    )
    assert (status, page["messages"]) == (200, [])
    status, posted = await ahttp_json(
        a, "POST", f"/api/rooms/{slug}/messages/", token=tokens[0], body={"body": "hi"}
    )
    assert (status, posted["seq"]) == (201, 1)


async def test_a_room_made_private_refuses_a_connected_non_members_next_send(
    pair: tuple[AppProcess, AppProcess],
    tokens: list[str],
    clients: Clients,
    deployment: Deployment,
) -> None:
    """The store checks access on the room the connection read at its
    handshake, and its statement matches only while the room's privacy is
    still what the check saw: a stale copy is read again, never trusted."""
    a, b = pair
    slug = unique_slug("turned")
    create_room(a, tokens[0], slug)
    outsider = await clients.open(b, slug, token=tokens[3], name="outsider@B")
    assert await outsider.send_message("while public") == 1

    # Behind the instances' backs, as an admin's edit in another process
    # would: no signal, no cache invalidation, only the row changes.
    with connect_url(deployment.env["DATABASE_URL"]) as db:
        changed = db.execute(
            "UPDATE core_room SET is_private = true WHERE slug = %s", [slug]
        ).rowcount
    assert changed == 1

    client_id = await outsider.post("after it turned private")
    await outsider.wait_for(
        lambda: client_id in outsider.acks or outsider.error_for(client_id),
        10,
        "the answer to the send",
    )
    assert client_id not in outsider.acks
    assert outsider.error_for(client_id)["code"] == "forbidden"
    owner = await clients.open(a, slug, token=tokens[0], name="owner@A")
    assert await owner.send_message("members only now") == 2  # no gap
    status, page = await ahttp_json(
        a, "GET", f"/api/rooms/{slug}/messages/", token=tokens[0]
    )
    assert status == 200
    assert [(m["seq"], m["body"]) for m in page["messages"]] == [
        (1, "while public"),
        (2, "members only now"),
    ]


def test_a_repeat_inside_a_callers_transaction_leaves_that_transaction_usable(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], deployment: Deployment
) -> None:
    """On PostgreSQL the repeat's failed insert runs in a savepoint when the
    caller holds a transaction, so the caller's later work still commits."""
    a, _ = pair
    slug = unique_slug("savepoint")
    create_room(a, tokens[0], slug)
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from django.db import transaction\n"
        "from core import services\n"
        "from core.models import Room\n"
        f"room = Room.objects.get(slug={slug!r})\n"
        f"user = get_user_model().objects.get(username={deployment.usernames[1]!r})\n"
        "with transaction.atomic():\n"
        "    first = services.store_message(room=room, author=user,"
        " body='once', client_id='in-txn')\n"
        "    again = services.store_message(room=room, author=user,"
        " body='twice', client_id='in-txn')\n"
        "    after = services.store_message(room=room, author=user,"
        " body='after', client_id=None)\n"
        "print(first.created, again.created, again.message['seq'],"
        " after.message['seq'])\n"
    )
    result = manage("shell", "-c", code, env=deployment.instance_env())
    assert result.stdout.split()[-4:] == ["True", "False", "1", "2"], result.stdout
    status, page = http_json(a, "GET", f"/api/rooms/{slug}/messages/")
    assert status == 200
    assert [(m["seq"], m["body"]) for m in page["messages"]] == [
        (1, "once"),
        (2, "after"),
    ]


# --- edits and deletions: room events in the order ----------------------------------


async def change(client: WsClient, frame: dict) -> int:
    """Send an edit or delete frame; the seq of its ack (an error fails)."""
    client_id = secrets.token_hex(8)
    await client.send({**frame, "client_id": client_id})
    await client.wait_for(
        lambda: client_id in client.acks or client.error_for(client_id),
        10,
        f"the answer to {frame['type']}",
    )
    assert not client.error_for(client_id), client.error_for(client_id)
    return client.acks[client_id]


def applied(frames: list[dict]) -> dict[int, tuple[str, str | None, bool]]:
    """A client's view after applying ``frames`` in seq order
    (docs/protocol.md, 9.7): seq -> (body, edited_at, deleted)."""
    view: dict[int, tuple[str, str | None, bool]] = {}
    for frame in sorted(frames, key=lambda f: f["seq"]):
        kind = frame.get("kind")
        if kind is None:
            view[frame["seq"]] = (
                frame["body"],
                frame.get("edited_at"),
                frame.get("deleted", False),
            )
        elif frame["target"] in view and not view[frame["target"]][2]:
            if kind == "delete" or frame.get("deleted"):
                view[frame["target"]] = ("", None, True)  # no edit marker
            elif kind == "edit":
                view[frame["target"]] = (frame["body"], frame["sent_at"], False)
    return view


async def stored_view(app: AppProcess, slug: str, token: str) -> dict:
    status, page = await ahttp_json(
        app, "GET", f"/api/rooms/{slug}/messages/?limit=100", token=token
    )
    assert status == 200, page
    assert not page["has_more"]
    return applied([m for m in page["messages"] if "kind" not in m])


async def test_an_edit_on_a_and_a_delete_over_http_on_b_reach_both_instances(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    a, b = pair
    slug = unique_slug("changes")
    create_room(a, tokens[0], slug)
    author = await clients.open(a, slug, token=tokens[1], name="author@A")
    watchers = [
        await clients.open(a, slug, name="anonymous@A"),
        await clients.open(b, slug, token=tokens[2], name="user@B"),
    ]
    first = await author.send_message("teh first")
    second = await author.send_message("second")
    edited = await change(author, {"type": "edit", "seq": first, "body": "the first"})
    status, deleted = await ahttp_json(
        b, "DELETE", f"/api/rooms/{slug}/messages/{second}/", token=tokens[0]
    )
    assert status == 200, deleted
    assert (deleted["kind"], deleted["target"]) == ("delete", second)

    for client in [author, *watchers]:
        await client.wait_for_seqs(range(1, deleted["seq"] + 1))
        assert client.seqs() == [1, 2, 3, 4], client.name
        edit_event = client.messages[edited - 1]
        assert (edit_event["kind"], edit_event["target"]) == ("edit", first)
        assert applied(client.messages) == {
            first: ("the first", edit_event["sent_at"], False),
            second: ("", None, True),
        }
        assert applied(client.messages) == await stored_view(a, slug, tokens[1])


async def test_a_client_offline_during_changes_resumes_on_the_other_instance(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    """It resumes with ?after= on B and ends with the database's view,
    including edits and a deletion of messages it already held."""
    a, b = pair
    slug = unique_slug("offline-changes")
    create_room(a, tokens[0], slug)
    author = await clients.open(a, slug, token=tokens[6], name="author@A")
    sleeper = await clients.open(a, slug, token=tokens[2], name="sleeper@A")
    seqs = [await author.send_message(f"draft {n}") for n in range(1, 4)]
    await sleeper.wait_for_seqs(set(seqs))
    await sleeper.close()

    await change(author, {"type": "edit", "seq": seqs[0], "body": "final 1"})
    await change(author, {"type": "edit", "seq": seqs[1], "body": "final 2"})
    await change(author, {"type": "delete", "seq": seqs[1]})
    await change(author, {"type": "edit", "seq": seqs[0], "body": "final 1, again"})
    later = await author.send_message("after the changes")

    resumed = await clients.resume(b, sleeper)
    await resumed.wait_for_seqs(range(seqs[-1] + 1, later + 1))
    held = sleeper.messages + resumed.messages + resumed.history_messages
    view = applied(held)
    assert view == await stored_view(b, slug, tokens[2])
    assert view[seqs[0]][0] == "final 1, again"
    assert view[seqs[1]] == ("", None, True)
    assert view[seqs[2]] == ("draft 3", None, False)
    assert "final 2" not in str(await stored_view(b, slug, tokens[2]))


async def test_an_edit_racing_a_delete_on_the_other_instance_ends_one_way(
    pair: tuple[AppProcess, AppProcess], tokens: list[str], clients: Clients
) -> None:
    """Both take the room row's lock; whichever comes second sees the first.
    Every listener ends with the database's view, whatever the order."""
    a, b = pair
    slug = unique_slug("race")
    create_room(a, tokens[0], slug)
    author = await clients.open(a, slug, token=tokens[1], name="author@A")
    owner = await clients.open(b, slug, token=tokens[0], name="owner@B")
    listener = await clients.open(b, slug, name="anonymous@B")
    targets = [await author.send_message(f"m{n}") for n in range(10)]

    async def answer(client: WsClient, frame: dict) -> dict:
        client_id = secrets.token_hex(8)
        await client.send({**frame, "client_id": client_id})
        await client.wait_for(
            lambda: client_id in client.acks or client.error_for(client_id), 10
        )
        return client.error_for(client_id) or {"seq": client.acks[client_id]}

    outcomes = await asyncio.gather(
        *(
            answer(author, {"type": "edit", "seq": seq, "body": f"edited {seq}"})
            for seq in targets
        ),
        *(answer(owner, {"type": "delete", "seq": seq}) for seq in targets),
    )
    # Every delete lands (a message can always be deleted once); an edit
    # lands if it came first, else it is refused as not_found.
    assert all("seq" in outcome for outcome in outcomes[10:]), outcomes
    refused = [o for o in outcomes[:10] if "seq" not in o]
    assert all(o["code"] == "not_found" for o in refused), refused
    last = len(targets) + 10 + 10 - len(refused)
    await listener.wait_for_seqs(range(1, last + 1))
    assert applied(listener.messages) == await stored_view(a, slug, tokens[0])
    assert all(deleted for _, _, deleted in applied(listener.messages).values())
