"""The load generator: a separate process the bench drives over a pipe.

    python -m bench.loadgen        (JSON commands on stdin, one reply per line)

It runs apart from the orchestrator so that only its own CPU competes with
the servers, on uvloop when available, and it owns every client connection.
Commands (see ``Generator.handle``): ``connect`` a group of connections,
``measure`` a schedule of ``send`` frames against them, ``count`` the open
ones, ``close`` a group, ``storm_begin`` and ``storm_finish`` (the clients of
a deploy, ``bench/storm.py``), ``quit``. Every command is bounded in time and count;
the process exits by itself when stdin closes.

Every message body is JSON ``{"s": step, "k": index, "t": send time, ...}``,
so the same subscriber code measures Switchboard (which echoes ``body``
verbatim in its ``message`` frame) and both baselines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
import traceback
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import probes
from bench.sseclient import open_sse_client
from bench.stats import latency_summary
from bench.storm import Storm
from bench.wsclient import HandshakeFailed, WsClient, open_client

SETTLE_QUIET_SECONDS = 0.5
# The body's first fields as they appear JSON-escaped in a server's frame.
BODY_FIELDS = re.compile(rb'\\"s\\": (\d+), \\"k\\": (\d+), \\"t\\": ([0-9.e+-]+)')
DRAIN_POLL_SECONDS = 0.05
# A stored message as the servers' json.dumps writes it (default separators);
# counted while a greeting that ends on a marker is still under way.
MESSAGE_MARKER = b'"type": "message"'
TEXTS = (
    "On my way, five minutes out. Save me a seat near the window, please!",
    "Deploy is green on both instances; closing the incident ticket now.",
    "Does anyone have the slides from Thursday's planning session handy?",
)


@dataclass
class ConnState:
    """What the generator knows about one connection."""

    room: int
    instance: int
    greeted: asyncio.Future[None]
    slug: str = ""  # the room of its path (watchers: not ``room``'s)
    # Greeted on the first text frame holding this, or on the first at all.
    greeting_marker: bytes | None = None
    greeting_messages: int = 0  # message frames before the marker
    seen: set[int] = field(default_factory=set)


@dataclass
class Recorder:
    """Counters for one measured step; ``t0``..``t1`` is the window."""

    step: int
    t0: float
    t1: float
    latencies: array = field(default_factory=lambda: array("d"))
    ack_latencies: array = field(default_factory=lambda: array("d"))
    pending_acks: dict[str, float] = field(default_factory=dict)
    # Watchers' activity frames name a message by (room, seq), which only
    # its ack tells: (key, send time) by client_id until the ack, then by
    # (slug, seq); activity that beats the ack waits in ``unmatched``.
    sent_of_client: dict[str, tuple[int, float]] = field(default_factory=dict)
    key_of_seq: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    unmatched: dict[tuple[str, int], list[tuple[ConnState, float]]] = field(
        default_factory=dict
    )
    window_deliveries: int = 0
    window_got_total: int = 0
    deliveries: int = 0
    duplicates: int = 0
    stale: int = 0
    other_frames: int = 0
    acks_window: int = 0  # acks of messages sent in the window
    acks_received_in_window: int = 0  # acks that arrived in it, any message
    # Which room each message of the step went to, and the window's keys by
    # room: loss is counted by (subscriber, message), and a message that
    # reaches a subscriber of another room is counted, never as a delivery.
    room_of_key: dict[int, int] = field(default_factory=dict)
    window_keys: dict[int, set[int]] = field(default_factory=dict)
    misrouted: int = 0
    expected: int | None = None  # known once sending is over
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    errors: Counter[str] = field(default_factory=Counter)


def lost_by_identity(rec: Recorder, subscribers: list[ConnState]) -> int:
    """(subscriber, message) pairs of the window that never arrived: each
    subscriber's room's window messages it has not seen."""
    return sum(
        len(rec.window_keys.get(state.room, set()) - state.seen)
        for state in subscribers
    )


class Generator:
    """Connection groups and the measurement in progress."""

    def __init__(self, seed: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(seed)
        self.groups: dict[str, list[WsClient]] = {}
        self.recorder: Recorder | None = None
        self.last_frame_at = 0.0
        self.storm: Storm | None = None

    # --- frames in ------------------------------------------------------------

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None:
        """Every text frame from every connection comes through here."""
        self.last_frame_at = now
        state: ConnState = client.tag
        if not state.greeted.done():
            marker = state.greeting_marker
            if marker is None or marker in payload:
                state.greeted.set_result(None)
            elif MESSAGE_MARKER in payload:
                state.greeting_messages += 1
        rec = self.recorder
        if rec is None:
            return
        # Fast path: our body's fields, JSON-escaped inside the server's frame
        # (a regex is 6x cheaper than two json.loads; generator CPU is the
        # servers' loss on 2 cores).
        meta = BODY_FIELDS.search(payload)
        if meta is not None:
            step, key, sent = int(meta[1]), int(meta[2]), float(meta[3])
            self._delivery(rec, state, step, key, sent, now)
            return
        try:
            frame = json.loads(payload)
            kind = frame["type"]
        except (ValueError, KeyError, TypeError):
            rec.errors["unparsable frame"] += 1
            return
        if kind == "message":
            try:
                body = json.loads(frame["body"])
                step, key, sent = body["s"], body["k"], body["t"]
            except (ValueError, KeyError, TypeError):
                rec.other_frames += 1
                return
            self._delivery(rec, state, step, key, sent, now)
        elif kind == "activity":
            self._activity(rec, state, frame, now)
        elif kind == "ack":
            self._match_ack(rec, state, frame)
            sent = rec.pending_acks.pop(frame.get("client_id"), None)
            if rec.t0 <= now < rec.t1:
                rec.acks_received_in_window += 1
            if sent is not None and rec.t0 <= sent < rec.t1:
                rec.acks_window += 1
                rec.ack_latencies.append(now - sent)
        elif kind == "error":
            rec.errors[f"error frame: {frame.get('code')}"] += 1
        else:
            rec.other_frames += 1

    def _activity(
        self, rec: Recorder, state: ConnState, frame: dict[str, Any], now: float
    ) -> None:
        """A watcher told of a message: its delivery, once the key is known."""
        try:
            where = (frame["room"], frame["seq"])
        except KeyError:
            rec.errors["activity without room or seq"] += 1
            return
        known = rec.key_of_seq.get(where)
        if known is None:
            rec.unmatched.setdefault(where, []).append((state, now))
        else:
            self._delivery(rec, state, rec.step, known[0], known[1], now)

    def _match_ack(
        self, rec: Recorder, state: ConnState, frame: dict[str, Any]
    ) -> None:
        sent = rec.sent_of_client.pop(frame.get("client_id"), None)
        seq = frame.get("seq")
        if sent is None or not isinstance(seq, int):
            return
        where = (state.slug, seq)
        rec.key_of_seq[where] = sent
        for watcher, at in rec.unmatched.pop(where, ()):
            self._delivery(rec, watcher, rec.step, sent[0], sent[1], at)

    def _delivery(
        self,
        rec: Recorder,
        state: ConnState,
        step: int,
        key: int,
        sent: float,
        now: float,
    ) -> None:
        if step != rec.step:
            # A straggler of an earlier step: work the servers did in the
            # window, so it counts as throughput, not for latency or loss.
            rec.stale += 1
            if rec.t0 <= now < rec.t1:
                rec.window_deliveries += 1
            return
        if rec.room_of_key.get(key) != state.room:
            rec.misrouted += 1
            return
        if key in state.seen:
            rec.duplicates += 1
            return
        state.seen.add(key)
        rec.deliveries += 1
        if rec.t0 <= now < rec.t1:
            rec.window_deliveries += 1
        if rec.t0 <= sent < rec.t1:
            rec.window_got_total += 1
            rec.latencies.append(now - sent)
            if rec.window_got_total == rec.expected:
                rec.complete.set()

    # --- commands ---------------------------------------------------------------

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one command; its reply is a JSON-able dict."""
        name = command.pop("cmd")
        handler = {
            "connect": self.connect,
            "measure": self.measure,
            "count": self.count,
            "close": self.close,
            "ping": self.ping,
            "storm_begin": self.storm_begin,
            "storm_finish": self.storm_finish,
        }.get(name)
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        return await handler(**command)

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def connect(
        self,
        *,
        group: str,
        instances: list[list[Any]],
        conns: list[list[int | str]],
        headers: list[dict[str, str]],
        concurrency: int,
        handshake_seconds: float,
        wait_greeting: bool,
        budget_seconds: float,
        deflate: bool = False,
        greeting_marker: str | None = None,
    ) -> dict[str, Any]:
        """Open ``conns`` (``[instance, room, path, header index]`` each).

        Connections are opened ``concurrency`` at a time; one that fails is
        counted by reason, never retried. None starts after
        ``budget_seconds``: the rest are counted as skipped. The group keeps
        the order of ``conns``, so its first members alternate over the
        instances; ``positions`` says which of ``conns`` joined.

        With ``wait_greeting`` a connection counts once its first text frame
        arrived; with ``greeting_marker``, once a text frame containing it
        did (the last frame of a longer greeting). ``greeting_messages``
        counts connections by the message frames they got before that.
        """
        marker = greeting_marker.encode() if greeting_marker else None
        unfinished = "no welcome" if marker is None else "greeting unfinished"
        members = self.groups.setdefault(group, [])
        opened: list[tuple[int, WsClient]] = []
        errors: Counter[str] = Counter()
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        deadline = started + budget_seconds

        async def open_one(position: int, spec: list[Any]) -> None:
            instance, room, path, header_index = spec
            host, port = instances[instance]
            async with gate:
                if time.monotonic() > deadline:
                    errors["skipped: connect budget spent"] += 1
                    return
                state = ConnState(
                    room=room,
                    instance=instance,
                    greeted=self.loop.create_future(),
                    greeting_marker=marker,
                    slug=path.split("/")[3],  # /ws/rooms/<slug>/, /sse/...
                )
                # A /sse/ path is a Server-Sent Events stream, read alike.
                opener = open_sse_client if path.startswith("/sse/") else open_client
                try:
                    client = await opener(
                        handshake_seconds,
                        tag=state,
                        host=host,
                        port=port,
                        path=path,
                        headers=headers[header_index],
                        on_text=self.on_text,
                        deflate=deflate,
                        rng=random.Random(self.rng.random()),
                    )
                except HandshakeFailed as exc:
                    errors[f"HTTP {exc.status}"] += 1
                    return
                except (OSError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    return
                if wait_greeting or marker is not None:
                    try:
                        async with asyncio.timeout(handshake_seconds):
                            await state.greeted
                    except TimeoutError:
                        errors[unfinished] += 1
                        client.abort()
                        return
            opened.append((position, client))

        await asyncio.gather(
            *(open_one(position, spec) for position, spec in enumerate(conns))
        )
        opened.sort(key=lambda item: item[0])
        members += [client for _, client in opened]
        skipped = errors.get("skipped: connect budget spent", 0)
        return {
            "connected": len(opened),
            "positions": [position for position, _ in opened],
            "skipped": skipped,
            "failed": sum(errors.values()) - skipped,
            "errors": dict(errors),
            "seconds": round(time.monotonic() - started, 2),
            "group_size": len(members),
            "compressed": sum(client.compressed for _, client in opened),
            "greeting_messages": dict(
                Counter(str(client.tag.greeting_messages) for _, client in opened)
            ),
        }

    async def storm_begin(self, *, step: int, **arguments: Any) -> dict[str, Any]:
        """Connect a storm's clients and start publishing (``Storm.begin``)."""
        if self.storm is not None:
            raise RuntimeError("a storm is already running")
        self.storm = Storm(rng=random.Random(self.rng.random()), step=step)
        return await self.storm.begin(**arguments)

    async def storm_finish(self, **arguments: Any) -> dict[str, Any]:
        """The storm's figures, once it is over (``Storm.finish``)."""
        if self.storm is None:
            raise RuntimeError("no storm is running")
        storm, self.storm = self.storm, None
        return await storm.finish(**arguments)

    async def count(self, *, group: str) -> dict[str, Any]:
        """How many of the group are still open, and the close codes seen."""
        members = self.groups.get(group, [])
        codes = Counter(str(c.close_code) for c in members if not c.is_open)
        return {
            "open": sum(c.is_open for c in members),
            "total": len(members),
            "close_codes": dict(codes),
        }

    async def close(self, *, group: str, wait_seconds: float) -> dict[str, Any]:
        """Close every connection of the group; abort those that linger."""
        members = self.groups.pop(group, [])
        for client in members:
            client.close()
        pending = [c.done for c in members if not c.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=wait_seconds)
        lingering = [c for c in members if not c.done.done()]
        for client in lingering:
            client.abort()
        return {"closed": len(members), "aborted": len(lingering)}

    async def measure(
        self,
        *,
        group: str,
        step: int,
        streams: list[list[Any]],
        warmup: float,
        window: float,
        tail: float,
        drain: float,
        settle: float,
        pids: list[int],
        redis_pid: int | None,
        client_ids: bool,
        db_pid: int | None = None,
    ) -> dict[str, Any]:
        """Send on a fixed schedule and measure deliveries in the window.

        ``streams``: ``[publisher position in group, rate per s, phase s]``;
        publisher ``i`` sends to its own room. Sending runs for warm-up,
        window and tail; then up to ``drain`` seconds wait for the window's
        messages, and up to ``settle`` seconds for the servers to fall quiet.
        """
        members = self.groups.get(group, [])
        start = time.monotonic() + 0.2
        t0, t1 = start + warmup, start + warmup + window
        rec = Recorder(step=step, t0=t0, t1=t1)
        for client in members:
            client.tag.seen.clear()
        schedule = probes.schedule(streams, warmup + window + tail)
        samples: dict[str, Any] = {}
        now = time.monotonic()
        for label, at in (("t0", t0), ("t1", t1)):
            self.loop.call_later(
                at - now, probes.sample_cpu, samples, label, pids, redis_pid, db_pid
            )
        self.recorder = rec
        try:
            sent_window, lag = await self._send(
                rec, members, schedule, start, step, client_ids
            )
            expected = sum(sent_window.get(c.tag.room, 0) for c in members)
            await self._drain(rec, expected, drain)
            lost = lost_by_identity(rec, [c.tag for c in members])
            unacked = sum(rec.t0 <= sent < rec.t1 for sent in rec.pending_acks.values())
            open_after = sum(c.is_open for c in members)
        finally:
            self.recorder = None
        settled = await self._settle(settle)
        for client in members:
            client.tag.seen.clear()
        return {
            "subscribers": len(members),
            "open_after": open_after,
            "sent": len(schedule),
            "sent_window": sum(sent_window.values()),
            "expected": expected,
            "received_window_messages": rec.window_got_total,
            "window_deliveries": rec.window_deliveries,
            "window_seconds": window,
            "lost": lost,
            "misrouted": rec.misrouted,
            "duplicates": rec.duplicates,
            "stale": rec.stale,
            "other_frames": rec.other_frames,
            "errors": dict(rec.errors),
            "acks_window": rec.acks_window,
            "unacked_window": unacked,
            "acks_received_in_window": rec.acks_received_in_window,
            "max_send_lag_ms": round(lag * 1e3, 1),
            "settled": settled,
            "cpu": samples,
            **latency_summary(rec.latencies),
            **latency_summary(rec.ack_latencies, prefix="ack_"),
        }

    async def _send(
        self,
        rec: Recorder,
        members: list[WsClient],
        schedule: list[tuple[float, int]],
        start: float,
        step: int,
        client_ids: bool,
    ) -> tuple[Counter[int], float]:
        sent_window: Counter[int] = Counter()
        worst_lag = 0.0
        texts = TEXTS
        for index, (offset, publisher) in enumerate(schedule):
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            worst_lag = max(worst_lag, now - due)
            client = members[publisher]
            body = json.dumps(
                {"s": step, "k": index, "t": now, "text": texts[index % len(texts)]}
            )
            frame: dict[str, Any] = {"type": "send", "body": body}
            if client_ids:
                client_id = f"b{step}-{index}"
                frame["client_id"] = client_id
                rec.pending_acks[client_id] = now
                rec.sent_of_client[client_id] = (index, now)
            rec.room_of_key[index] = client.tag.room
            client.send_text(json.dumps(frame))
            if rec.t0 <= now < rec.t1:
                sent_window[client.tag.room] += 1
                rec.window_keys.setdefault(client.tag.room, set()).add(index)
        return sent_window, worst_lag

    async def _drain(self, rec: Recorder, expected: int, limit: float) -> None:
        """Wait up to ``limit`` s for every window message to arrive."""
        rec.expected = expected
        if rec.window_got_total >= expected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await rec.complete.wait()

    async def _settle(self, limit: float) -> bool:
        """Wait until no frame has arrived for a moment; False at the limit."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_frame_at >= SETTLE_QUIET_SECONDS:
                return True
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return False


async def serve(seed: int) -> None:
    """Answer commands from stdin until it closes or says ``quit``."""
    generator = Generator(seed)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            command = json.loads(line)
            if command.get("cmd") == "quit":
                break
            reply = {"ok": True, **await generator.handle(command)}
        except Exception as exc:
            reply = {
                "ok": False,
                "error": f"{exc.__class__.__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for name in list(generator.groups):
        await generator.close(group=name, wait_seconds=2.0)


def main() -> None:
    seed = int(os.environ.get("BENCH_SEED", "20261125"))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(seed))
    else:
        uvloop.run(serve(seed))


if __name__ == "__main__":
    main()
