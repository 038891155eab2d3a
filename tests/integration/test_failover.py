"""An instance dies (SIGKILL) or is stopped (SIGTERM): its users move on.

Each test starts its own instances, because it kills one of them. Clients do
what docs/protocol.md §9.3 asks of them: keep the highest contiguous seq, reconnect to
another instance with ``?after=`` and fetch with ``history`` what the replay
did not include.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from harness.deployment import Deployment, Launcher
from harness.http import create_room
from harness.ws import Clients, WsClient, is_type, timeline
from tests.integration.common import report, unique_slug

pytestmark = pytest.mark.integration

USERS = 8

# Short presence timings keep the presence test fast (defaults: 60 s, 20 s).
PRESENCE_TTL_SECONDS = 6
PRESENCE_REFRESH_SECONDS = 2
# Fixed in core.presence: how often an instance sweeps expired entries.
PRESENCE_SWEEP_SECONDS = 5
PRESENCE_BROADCAST_SECONDS = 1

FAST_SENDERS = {
    "SWITCHBOARD_SEND_BURST": "1000",
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "1000",
}

# The crash and the deploy run on both channel layers: the default pub/sub
# one and the Channels tutorial's list-based one (SWITCHBOARD_CHANNEL_LAYER).
LAYERS = pytest.mark.parametrize("layer", ["pubsub", "lists"])


def presence_users(frame: dict) -> set[str]:
    return set(frame["users"])


def first_presence(client: WsClient) -> dict:
    """The presence frame a connection gets when it joins."""
    return next(filter(is_type("presence"), client.frames))


async def test_presence_on_b_shows_users_of_a_until_a_is_killed(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    """Presence entries live PRESENCE_TTL_SECONDS unless refreshed.

    The instances run with SWITCHBOARD_PRESENCE_TTL_SECONDS=6 and
    SWITCHBOARD_PRESENCE_REFRESH_SECONDS=2 so a killed instance's entries
    expire in seconds instead of a minute. Expired entries are swept (every
    5 s, fixed in core.presence) and the change broadcast (at most once a
    second), so the update reaches B at most TTL + 5 + 1 s after the kill.
    """
    a, b = launcher.launch(
        "a",
        "b",
        env={
            "SWITCHBOARD_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL_SECONDS),
            "SWITCHBOARD_PRESENCE_REFRESH_SECONDS": str(PRESENCE_REFRESH_SECONDS),
        },
    )
    tokens = deployment.fetch_tokens(a, b)
    alice, bob, carol = deployment.usernames[:3]
    slug = unique_slug("presence")
    create_room(b, tokens[carol], slug)
    await clients.open(a, slug, token=tokens[alice], name="alice@A")
    await clients.open(a, slug, token=tokens[bob], name="bob@A")

    watcher = await clients.open(b, slug, token=tokens[carol], name="carol@B")
    assert presence_users(first_presence(watcher)) == {alice, bob, carol}

    since = len(watcher.frames)
    killed_at = time.monotonic()
    await asyncio.to_thread(a.kill)
    bound = (
        PRESENCE_TTL_SECONDS + PRESENCE_SWEEP_SECONDS + PRESENCE_BROADCAST_SECONDS + 2
    )
    await watcher.wait_for_frame(
        lambda f: f["type"] == "presence" and presence_users(f) == {carol},
        timeout=bound,
        since=since,
        what="presence without A's users",
    )
    gone_after = time.monotonic() - killed_at
    report(
        "presence after SIGKILL",
        {"ttl_s": PRESENCE_TTL_SECONDS, "users_gone_after_s": f"{gone_after:.1f}"},
    )
    # A newcomer on B sees the same at once.
    newcomer = await clients.open(b, slug, name="anonymous@B")
    assert presence_users(first_presence(newcomer)) == {carol}

    since = len(watcher.frames)
    await asyncio.to_thread(a.start)  # same port, as a replacement would
    await clients.open(a, slug, token=tokens[alice], name="alice@A-again")
    await watcher.wait_for_frame(
        lambda f: f["type"] == "presence" and presence_users(f) == {alice, carol},
        timeout=5,
        since=since,
        what="alice back in presence",
    )


@LAYERS
async def test_killing_an_instance_mid_stream_loses_nothing(
    launcher: Launcher, deployment: Deployment, clients: Clients, layer: str
) -> None:
    """Zero loss across a crash.

    Four publishers on B send 100 messages each (send limits raised for the
    test, window of 10 unacknowledged). When about a third are acknowledged,
    A is SIGKILLed. A's clients reconnect to B from their highest contiguous
    seq. B replays at most 10 messages (SWITCHBOARD_REPLAY_LIMIT=10), so a
    resuming client usually gets ``complete: false`` and fetches the rest
    with ``history``. Everyone must end with every acknowledged message
    exactly once: no gap, no seq delivered twice on one connection.
    """
    a, b = launcher.launch(
        "a",
        "b",
        env={
            **FAST_SENDERS,
            "SWITCHBOARD_REPLAY_LIMIT": "10",
            "SWITCHBOARD_CHANNEL_LAYER": layer,
        },
    )
    tokens = deployment.fetch_tokens(a, b)
    names = deployment.usernames
    slug = unique_slug("zero-loss")
    create_room(b, tokens[names[0]], slug)
    on_a = [
        await clients.open(a, slug, token=tokens[names[n]], name=f"{names[n]}@A")
        for n in range(1, 4)
    ] + [await clients.open(a, slug, name=f"anonymous{n}@A") for n in range(3)]
    control = await clients.open(b, slug, name="anonymous@B")
    publishers = [
        await clients.open(b, slug, token=tokens[names[n]], name=f"publisher{n}@B")
        for n in range(4, 8)
    ]
    per_publisher = 100
    total = per_publisher * len(publishers)

    publishing = asyncio.gather(
        *(
            publisher.publish(
                [f"{publisher.name} #{k}" for k in range(per_publisher)], window=10
            )
            for publisher in publishers
        )
    )

    def acked() -> list[int]:
        return [seq for p in publishers for seq in p.acks.values()]

    try:
        await control.wait_for(
            lambda: len(acked()) >= total // 3, timeout=30, what="a third acked"
        )
        killed_at = time.monotonic()
        await asyncio.to_thread(a.kill)
        acked_at_kill = max(acked())
        unacked_at_kill = sum(len(p.sent) - len(p.acks) for p in publishers)
        held_at_kill = {c.name: c.contiguous_seq() for c in on_a}

        resumed = await clients.move_all(b, on_a)
        resume_seconds = [c.caught_up_at - killed_at for c in resumed]
        replays = [next(filter(is_type("replayed"), c.frames)) for c in resumed]
        await publishing
    finally:
        publishing.cancel()

    final_seq = max(acked())
    assert sorted(acked()) == list(range(1, total + 1))
    for old, new in zip(on_a, resumed, strict=True):
        await new.wait_for_seqs(range(1, final_seq + 1), timeout=15, earlier=(old,))
    caught_up_after = time.monotonic() - killed_at

    sent_bodies = {
        p.acks[cid]: body for p in publishers for cid, body in p.sent.items()
    }
    duplicates_dropped = 0
    for old, new in zip(on_a, resumed, strict=True):
        held = timeline(old, new)
        assert sorted(held) == list(range(1, final_seq + 1)), f"{new.name}: gaps"
        assert {seq: m["body"] for seq, m in held.items()} == sent_bodies
        assert not old.duplicate_seqs()
        assert not new.duplicate_seqs()
        duplicates_dropped += len(old.held_seqs() & new.held_seqs())
    await control.wait_for_seqs(range(1, final_seq + 1))

    figures = report(
        "zero loss on SIGKILL",
        {
            "messages": total,
            "acked_at_kill": acked_at_kill,
            "sent_unacked_at_kill": unacked_at_kill,
            "committed_not_yet_delivered_on_A_at_kill": acked_at_kill
            - min(held_at_kill.values()),
            "held_at_kill": sorted(held_at_kill.values()),
            "resume_s_min/median/max": "/".join(
                f"{s:.3f}"
                for s in (
                    min(resume_seconds),
                    statistics.median(resume_seconds),
                    max(resume_seconds),
                )
            ),
            "replays_incomplete": sum(not r["complete"] for r in replays),
            "duplicates_dropped_by_seq": duplicates_dropped,
            "all_caught_up_after_s": f"{caught_up_after:.2f}",
        },
    )
    assert caught_up_after < 30, figures


@LAYERS
async def test_sigterm_closes_with_4012_and_clients_resume_elsewhere(
    launcher: Launcher, deployment: Deployment, clients: Clients, layer: str
) -> None:
    """App Platform's SIGTERM: Daphne cancels every consumer, which closes
    with 4012; the process exits; its clients resume on B with nothing lost
    while a publisher on B keeps sending.
    """
    a, b = launcher.launch(
        "a", "b", env={**FAST_SENDERS, "SWITCHBOARD_CHANNEL_LAYER": layer}
    )
    tokens = deployment.fetch_tokens(a, b)
    names = deployment.usernames
    slug = unique_slug("sigterm")
    create_room(b, tokens[names[0]], slug)
    on_a = [
        await clients.open(a, slug, token=tokens[names[n]], name=f"{names[n]}@A")
        for n in range(1, 4)
    ] + [await clients.open(a, slug, name=f"anonymous{n}@A") for n in range(2)]
    publisher = await clients.open(b, slug, token=tokens[names[4]], name="pub@B")

    await publisher.publish([f"before #{k}" for k in range(20)])
    for client in on_a:
        await client.wait_for_seqs(range(1, 21))

    publishing = asyncio.ensure_future(
        publisher.publish([f"across #{k}" for k in range(200)], window=2)
    )
    try:
        await publisher.wait_for(lambda: len(publisher.acks) >= 40, 10, "40 acks")
        terminated_at = time.monotonic()
        status, exit_seconds = await asyncio.to_thread(a.terminate, 30)
        codes = {c.name: await c.wait_closed(timeout=5) for c in on_a}
        closed_after = [c.closed_at - terminated_at for c in on_a]
        resumed = await clients.move_all(b, on_a)
        resume_seconds = [c.caught_up_at - terminated_at for c in resumed]
        await publishing
    finally:
        publishing.cancel()

    figures = report(
        "SIGTERM",
        {
            "close_codes": sorted({int(code) for code in codes.values()}),
            "closed_after_s_max": f"{max(closed_after):.3f}",
            "exit_status": status,
            "exit_s": f"{exit_seconds:.2f}",
            "resume_s_max": f"{max(resume_seconds):.3f}",
        },
    )
    assert set(codes.values()) == {4012}, figures
    assert max(closed_after) < 2.0, figures
    assert status == 0, figures
    assert exit_seconds < 10, figures
    final_seq = max(publisher.acks.values())
    assert final_seq == 220
    for old, new in zip(on_a, resumed, strict=True):
        await new.wait_for_seqs(range(1, final_seq + 1), timeout=10, earlier=(old,))
        assert sorted(timeline(old, new)) == list(range(1, final_seq + 1))
        assert not old.duplicate_seqs()
        assert not new.duplicate_seqs()


async def test_uvicorns_shutdown_close_names_the_reconnect_window(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    """uvicorn closes every socket itself with 1012 on SIGTERM, before the
    application hears of it; the close still names the window its clients
    should spread their reconnects over (core/servers/uvicorn.py): 4 connections
    at 2 reconnects/s make 2 s."""
    (app,) = launcher.launch_each(
        {"uvicorn": {"SWITCHBOARD_SHUTDOWN_RECONNECTS_PER_SECOND": "2"}},
        server="uvicorn",
    )
    tokens = deployment.fetch_tokens(app)
    names = deployment.usernames
    slug = unique_slug("uvicorn-sigterm")
    create_room(app, tokens[names[0]], slug)
    opened = [
        await clients.open(app, slug, token=tokens[names[n]], name=names[n])
        for n in range(3)
    ] + [await clients.open(app, slug, name="anonymous")]

    # uvicorn exits by its signal once shut down (status -15): not checked.
    await asyncio.to_thread(app.terminate, 30)

    codes = [await client.wait_closed(timeout=5) for client in opened]
    reasons = {client.ws.close_reason for client in opened}
    assert codes == [1012] * 4
    assert reasons == {"retry_window_ms=2000"}


async def test_sigterm_right_after_an_upgrade_still_loses_nothing(
    launcher: Launcher, deployment: Deployment, clients: Clients
) -> None:
    """SIGTERM within a second of a WebSocket upgrade (Daphne 4.2.3).

    What Daphne does: for about a second after an upgrade, the HTTP request
    that carried it stays in Daphne's connection table without an
    application (its periodic checker removes it once a second). SIGTERM
    runs ``Server.kill_all_applications``, which reads
    ``details["application_instance"]`` for every entry and so raises
    ``KeyError`` on that request: no "Killed N pending application
    instances" line is logged, the consumers behind it are never cancelled
    and Twisted does not wait for the others. The process exits at once and
    clients see 1006 (no close frame) instead of 4012 — the established
    client too, not only the new one. The new client may get nothing at all,
    not even ``welcome``.

    Switchboard patches that method under Daphne (``core/servers/daphne.py``),
    so the established client now gets 4012; the new one gets 4012 or, if
    its application had not started yet, 1006. Either way resuming on B with
    ``?after=`` delivers everything.
    """
    a, b = launcher.launch("a", "b")
    tokens = deployment.fetch_tokens(a, b)
    names = deployment.usernames
    slug = unique_slug("late-upgrade")
    create_room(b, tokens[names[0]], slug)
    established = await clients.open(a, slug, token=tokens[names[1]], name="old@A")
    publisher = await clients.open(b, slug, token=tokens[names[2]], name="pub@B")
    for k in range(5):
        await publisher.send_message(f"before #{k}")
    await established.wait_for_seqs(range(1, 6))

    late = WsClient(a, slug, token=tokens[names[3]], after=0, name="late@A")
    clients.all.append(late)
    await late.connect()  # the 101 is in: the upgrade has just happened
    status, exit_seconds = await asyncio.to_thread(a.terminate, 30)
    codes = {
        "established": await established.wait_closed(timeout=10),
        "late": await late.wait_closed(timeout=10),
    }
    after_sigterm = await publisher.send_message("after SIGTERM")

    resumed = await clients.move_all(b, [established, late])
    for old, new in zip((established, late), resumed, strict=True):
        await new.wait_for_seqs(range(1, after_sigterm + 1), earlier=(old,))
        assert sorted(timeline(old, new)) == list(range(1, after_sigterm + 1))
    figures = report(
        "SIGTERM right after an upgrade",
        {
            "close_codes": {who: int(code) for who, code in codes.items()},
            "late_client_frames_before_close": [f["type"] for f in late.frames],
            "killed_line_logged": "pending application instances" in a.log_text(),
            "exit_status": status,
            "exit_s": f"{exit_seconds:.2f}",
        },
    )
    assert codes["established"] == 4012, figures
    assert codes["late"] in {4012, 1006}, figures
    assert "pending application instances" in a.log_text(), figures
    assert status == 0, figures
    assert exit_seconds < 10, figures
