"""Hypothesis over WebSocket frames against the protocol's promises.

Any JSON, any unicode, any size up to the frame cap, binary frames and text
that is not JSON: each frame gets exactly the answer docs/protocol.md
documents (sections 4-7 and 13), or the documented close (4009) for an
oversized frame; after every frame the connection still answers a ``ping``;
and the room's stored messages change by exactly what the ``ack``s say.

The expected answer comes from a small model of the documented rules written
here (``Model.expect``), not from ``core.protocol``, so a rule broken there is
caught here. The model also tracks what the room must hold: every ``ack`` is
one stored message (or, for a repeated ``client_id``, the original one), and
a frame answered with ``error`` stores nothing.
"""

import json
import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from hypothesis import HealthCheck, currently_in_test_context, event, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core import limits, services
from core.models import Message, ReadPosition, Room
from tests.unit.conftest import connected, receive_until, send_json, token_for

pytestmark = pytest.mark.django_db(transaction=True)

# --- the documented rules (docs/protocol.md), written out independently ------

MAX_BODY = 4000  # code points (section 6, send)
MAX_DEPTH = 32  # nesting levels (section 4)
MAX_INT = 2**63 - 1  # before/after/limit range (section 4)
DEFAULT_LIMIT, MAX_LIMIT = 50, 100  # history (section 6)
CLIENT_ID_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
CLOSE_TOO_BIG = 4009  # section 8
ERROR_CODES = {
    "bad_json",
    "bad_frame",
    "unknown_type",
    "too_long",
    "unauthenticated",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_many_connections",
    "internal_error",
}
SENT_AT_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
PING = '{"type":"ping"}'


def fuzz_settings(max_examples: int) -> Any:
    """Bounded and reproducible: the same examples on every run and in CI."""
    return hypothesis_settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@dataclass(frozen=True)
class Wire:
    """One WebSocket message from the client: text or binary."""

    text: str | None = None
    data: bytes | None = None

    def __repr__(self) -> str:  # shrunk failures stay readable
        value = self.text if self.text is not None else self.data
        shown = repr(value)
        return f"Wire({shown[:300]}{'...' if len(shown) > 300 else ''})"


@dataclass(frozen=True)
class Row:
    seq: int
    author: str
    body: str
    client_id: str | None


# Expected answers.
@dataclass(frozen=True)
class Close:
    code: int


@dataclass(frozen=True)
class Error:
    code: str
    client_id: str | None


@dataclass(frozen=True)
class Ack:
    client_id: str | None
    seq: int


@dataclass(frozen=True)
class History:
    seqs: tuple[int, ...]
    has_more: bool
    keep_newest: bool


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Read:
    read_seq: int


@dataclass(frozen=True)
class Nothing:
    pass


class _Rejected(ValueError):
    pass


def _any_int(text: str) -> int:
    """An integer of any length: past Python's digit limit, one that large
    and of its sign (protocol.md, section 4), never bad JSON."""
    try:
        return int(text)
    except ValueError:
        return -(10**4300) if text.startswith("-") else 10**4300


def _reject_constant(name: str) -> None:
    raise _Rejected(name)


def _depth(value: object) -> int:
    """Nesting depth of arrays and objects (a scalar: 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def valid_client_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 64
        and all(c in CLIENT_ID_CHARS for c in value)
    )


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_seq(value: object) -> bool:
    return value is None or (is_integer(value) and 0 <= value <= MAX_INT)


def body_problem(body: object) -> str | None:
    """The error code a send's body earns, or None (section 6, send)."""
    if not isinstance(body, str):
        return "bad_frame"
    if len(body) > MAX_BODY:  # before blankness: 4001 spaces are too_long
        return "too_long"
    if not body.strip():
        return "bad_frame"
    if "\x00" in body:
        return "bad_frame"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in body):
        return "bad_frame"
    return None


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class Model:
    """What the room holds and what each frame must get, per the docs."""

    signed_in: bool
    rows: dict[int, Row]
    send_tokens: float = math.inf
    history_tokens: float = math.inf
    acked_new: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    # Edits and deletions (section 9.7): each change's kind and target,
    # the tombstones, and every body a row has had (a live frame may carry
    # one that a later change has replaced).
    changes: dict[int, tuple[str, int]] = field(default_factory=dict)
    tombstones: set[int] = field(default_factory=set)
    bodies_had: dict[int, set[str]] = field(default_factory=dict)
    # alice's read position in the room (section 18): forward only.
    read_seq: int = 0

    def alice_seq(self, client_id: str) -> int | None:
        for row in self.rows.values():
            if row.author == "alice" and row.client_id == client_id:
                return row.seq
        return None

    def expect(self, wire: Wire) -> Any:
        if wire.text is None:
            return Error("bad_frame", None)  # binary (section 4)
        text = wire.text
        if utf8_size(text) > django_settings.MAX_FRAME_BYTES:
            return Close(CLOSE_TOO_BIG)
        try:
            data = json.loads(text, parse_constant=_reject_constant, parse_int=_any_int)
        except (ValueError, RecursionError):
            return Error("bad_json", None)
        if _depth(data) > MAX_DEPTH or not isinstance(data, dict):
            return Error("bad_json", None)
        echo = data.get("client_id") if valid_client_id(data.get("client_id")) else None
        kind = data.get("type")
        if not isinstance(kind, str):
            return Error("bad_frame", echo)
        if kind == "send":
            return self._send(data, echo)
        if kind == "history":
            return self._history(data, echo)
        if kind in ("edit", "delete"):
            return self._change(kind, data, echo)
        if kind == "typing":
            return Nothing() if self.signed_in else Error("unauthenticated", None)
        if kind == "ping":
            return Pong()
        if kind == "read":
            return self._read(data, echo)
        return Error("unknown_type", echo)

    def _read(self, data: dict, echo: str | None) -> Any:
        seq = data.get("seq")
        if seq is None or not valid_seq(seq):
            return Error("bad_frame", echo)  # absent and null too
        if not self.signed_in:
            return Error("unauthenticated", None)
        # Clamped to the room's last seq; it never moves back.
        last_seq = max([*self.rows, *self.changes], default=0)
        self.read_seq = max(self.read_seq, min(seq, last_seq))
        return Read(self.read_seq)

    def _send(self, data: dict, echo: str | None) -> Any:
        if "body" not in data:
            return Error("bad_frame", echo)
        problem = body_problem(data["body"])
        if problem is not None:
            return Error(problem, echo)
        client_id = data.get("client_id")
        if client_id is not None and not valid_client_id(client_id):
            return Error("bad_frame", None)
        if not self.signed_in:
            return Error("unauthenticated", client_id)
        if self.send_tokens < 1:
            return Error("rate_limited", client_id)
        self.send_tokens -= 1  # a resend of a client_id takes a token too
        if client_id is not None and (seq := self.alice_seq(client_id)) is not None:
            return Ack(client_id, seq)
        seq = max(self.rows, default=0) + 1
        self.rows[seq] = Row(seq, "alice", data["body"], client_id)
        self.acked_new.append(seq)
        return Ack(client_id, seq)

    def _change(self, kind: str, data: dict, echo: str | None) -> Any:
        target = data.get("seq")
        if not is_integer(target) or not 1 <= target <= MAX_INT:
            return Error("bad_frame", echo)  # absent and null too
        body = data.get("body")
        if kind == "edit":
            if "body" not in data:
                return Error("bad_frame", echo)
            problem = body_problem(body)
            if problem is not None:
                return Error(problem, echo)
        client_id = data.get("client_id")
        if client_id is not None and not valid_client_id(client_id):
            return Error("bad_frame", None)
        if not self.signed_in:
            return Error("unauthenticated", client_id)
        if self.send_tokens < 1:
            return Error("rate_limited", client_id)
        self.send_tokens -= 1
        if client_id is not None and (seq := self.alice_seq(client_id)) is not None:
            return Ack(client_id, seq)
        row = self.rows.get(target)
        if row is None or target in self.changes or target in self.tombstones:
            return Error("not_found", client_id)
        if row.author != "alice":  # alice owns no room and is not staff
            return Error("forbidden", client_id)
        seq = max(self.rows, default=0) + 1
        earlier = [s for s, (_, of) in self.changes.items() if of == target]
        if kind == "edit":
            for changed in [target, *earlier]:  # earlier edits take it too
                self._set_body(changed, body)
            self.rows[seq] = Row(seq, "alice", body, client_id)
        else:
            for changed in [target, *earlier]:
                self._set_body(changed, "")
                self.tombstones.add(changed)
            self.rows[seq] = Row(seq, "alice", "", client_id)
        self.changes[seq] = (kind, target)
        self.acked_new.append(seq)
        return Ack(client_id, seq)

    def _set_body(self, seq: int, body: str) -> None:
        row = self.rows[seq]
        self.bodies_had.setdefault(seq, {row.body}).add(body)
        self.rows[seq] = Row(seq, row.author, body, row.client_id)

    def _history(self, data: dict, echo: str | None) -> Any:
        before, after = data.get("before"), data.get("after")
        limit = data.get("limit")
        if not valid_seq(before) or not valid_seq(after) or not valid_seq(limit):
            return Error("bad_frame", echo)
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            return Error("bad_frame", echo)
        if self.history_tokens < 1:
            return Error("rate_limited", None)
        self.history_tokens -= 1
        seqs = sorted(self.rows)
        low = -1 if after is None else after
        high = math.inf if before is None else before
        between = [s for s in seqs if low < s < high]
        # Without `after`, the newest `limit`; with it, the first above it.
        page = between[-limit:] if after is None else between[:limit]
        return History(tuple(page), len(between) > limit, after is None)


# --- talking to the consumer ---------------------------------------------------


@database_sync_to_async
def stored_read_seq(user: Any) -> int:
    """alice's read position in the lobby (earlier examples may move it)."""
    position = ReadPosition.objects.filter(user=user, room__slug="lobby").first()
    return position.seq if position is not None else 0


@database_sync_to_async
def stored_rows() -> dict[int, Row]:
    return {
        seq: Row(seq, author, body, client_id)
        for seq, author, body, client_id in Message.objects.filter(
            room__slug="lobby"
        ).values_list("seq", "author_name", "body", "client_id")
    }


@database_sync_to_async
def stored_changes() -> tuple[dict[int, tuple[str, int]], set[int]]:
    """The room's changes (kind, target) and its tombstones, by seq."""
    rows = Message.objects.filter(room__slug="lobby")
    changes = {
        seq: (kind, target)
        for seq, kind, target in rows.exclude(kind="message").values_list(
            "seq", "kind", "target_seq"
        )
    }
    return changes, set(rows.filter(deleted=True).values_list("seq", flat=True))


class Dead(AssertionError):
    pass


async def deliver(ws: WebsocketCommunicator, wire: Wire) -> None:
    # send_input, not send_to: send_to refuses "" and b"".
    if wire.text is not None:
        await ws.send_input({"type": "websocket.receive", "text": wire.text})
    else:
        await ws.send_input({"type": "websocket.receive", "bytes": wire.data})


async def next_output(
    ws: WebsocketCommunicator, live: dict[int, dict], model: Model
) -> dict | None:
    """One output of the consumer: a close or an answering frame, or None
    for a live ``message`` (the sender's own copy, checked and set aside)
    or a ``presence`` update."""
    try:
        output = await ws.receive_output(timeout=5)
    except TimeoutError:
        raise Dead("nothing within 5 s: the consumer is stuck") from None
    if output["type"] == "websocket.close":
        return output
    assert output["type"] == "websocket.send", output
    text = output.get("text")
    assert isinstance(text, str), f"not a text frame: {output!r}"
    text.encode("utf-8")  # output is UTF-8 JSON: no lone surrogates
    frame = json.loads(text)
    assert isinstance(frame, dict)
    assert isinstance(frame.get("type"), str), frame
    if frame["type"] == "message":
        check_message(frame, model)
        assert frame["seq"] not in live, f"message {frame['seq']} twice"
        live[frame["seq"]] = frame
        return None
    if frame["type"] == "presence":
        return None
    return frame


async def next_answer(
    ws: WebsocketCommunicator, live: dict[int, dict], model: Model
) -> dict:
    """The next frame that answers the client, or a close."""
    while (output := await next_output(ws, live, model)) is None:
        pass
    return output


MESSAGE_KEYS = {"type", "room", "seq", "author", "body", "sent_at", "client_id"}


def check_message(frame: dict, model: Model) -> None:
    seq = frame["seq"]
    row = model.rows.get(seq)
    assert row is not None, f"a message the model did not expect: {frame}"
    assert frame["room"] == "lobby"
    assert SENT_AT_RE.fullmatch(frame["sent_at"]), frame["sent_at"]
    # A change's frame names it; a deletion's keeps its author and
    # client_id to itself (the audit has them).
    extra = set(frame) - MESSAGE_KEYS
    kind, target = model.changes.get(seq, (None, None))
    if kind is not None:
        assert (frame["kind"], frame["target"]) == (kind, target), frame
        assert extra <= {"kind", "target", "deleted"}, frame
    else:
        assert extra <= {"edited_at", "deleted"}, frame
    if kind == "delete":
        assert (frame["author"], frame["client_id"]) == (None, None), frame
    else:
        assert (frame["author"] or "", frame["client_id"]) == (
            row.author,
            row.client_id,
        ), frame
    assert frame["body"] in model.bodies_had.get(seq, {row.body}), frame
    if frame.get("deleted"):
        assert frame["body"] == "", frame


def check_answer(answer: dict, expected: Any, model: Model, wire: Wire) -> None:
    where = f"for {wire!r}"
    if isinstance(expected, Close):
        assert answer.get("type") == "websocket.close", f"{answer} {where}"
        assert answer.get("code") == expected.code, f"{answer} {where}"
        return
    assert answer.get("type") != "websocket.close", f"closed {where}: {answer}"
    if isinstance(expected, Error):
        assert answer["type"] == "error", f"{answer} {where}, expected {expected}"
        assert (answer["code"], answer["client_id"]) == (
            expected.code,
            expected.client_id,
        ), f"{answer} {where}, expected {expected}"
        assert answer["code"] in ERROR_CODES
        keys = {"type", "code", "detail", "client_id"}
        if expected.code == "rate_limited":
            keys.add("retry_after_ms")
            retry = answer.get("retry_after_ms")
            assert is_integer(retry), answer
            assert retry > 0, answer
        assert set(answer) == keys, f"{answer} {where}"
        detail = answer["detail"]
        assert isinstance(detail, str), answer
        assert detail.strip(), answer
        assert len(detail) <= 300, answer
        assert "Traceback" not in detail, answer
        return
    if isinstance(expected, Ack):
        assert answer == {
            "type": "ack",
            "client_id": expected.client_id,
            "seq": expected.seq,
        }, f"{answer} {where}, expected {expected}"
        return
    if isinstance(expected, Pong):
        assert answer == {"type": "pong"}, f"{answer} {where}"
        return
    if isinstance(expected, Read):
        assert set(answer) == {"type", "room", "read_seq", "unread", "mentions"}
        assert (answer["type"], answer["room"], answer["read_seq"]) == (
            "read",
            "lobby",
            expected.read_seq,
        ), f"{answer} {where}, expected {expected}"
        for count in (answer["unread"], answer["mentions"]):
            assert is_integer(count), answer
            assert 0 <= count <= 999, answer
        return
    assert isinstance(expected, History), f"{answer} {where}, expected {expected}"
    assert answer["type"] == "history", f"{answer} {where}"
    assert set(answer) == {"type", "messages", "has_more"}, answer
    for message in answer["messages"]:
        check_message(message, model)
    seqs = tuple(m["seq"] for m in answer["messages"])
    if seqs != expected.seqs or answer["has_more"] != expected.has_more:
        # Only a page too big for a quarter of the output budget may be
        # trimmed: it keeps the end nearest its start, and has_more is true.
        page = expected.seqs
        kept = len(seqs)
        assert 0 < kept < len(page), f"{seqs} {where}, expected {expected}"
        part = page[-kept:] if expected.keep_newest else page[:kept]
        assert seqs == part, f"{seqs} {where}, expected {expected}"
        assert answer["has_more"] is True
        size = sum(len(json.dumps(model.rows[s].body)) for s in page)
        assert size > django_settings.OUTPUT_BUFFER_BYTES // 8, "trimmed a small page"


async def exchange(
    sessions: list[list[Wire]],
    user: Any,
    *,
    signed_in: bool = True,
    send_burst: float = math.inf,
    history_burst: float = math.inf,
    pipelined: bool = False,
) -> Model:
    """Send each session's frames over a connection of its own, checking
    every answer and the connection's life after it, then the room.

    ``pipelined``: send all of a session's frames at once, then read the
    answers, which come in the order of the frames."""
    changes, tombstones = await stored_changes()
    model = Model(
        signed_in=signed_in,
        rows=await stored_rows(),
        send_tokens=send_burst,
        history_tokens=history_burst,
        changes=changes,
        tombstones=tombstones,
        read_seq=await stored_read_seq(user),
    )
    before = dict(model.rows)
    token = await token_for(user) if signed_in else None
    for wires in sessions:
        live: dict[int, dict] = {}
        acked_before = len(model.acked_new)
        closed = False
        async with connected("lobby", token=token) as ws:
            if pipelined:
                closed = await pipeline(ws, wires, model, live)
            for wire in [] if pipelined else wires:
                expected = model.expect(wire)
                model.outcomes.append(describe(expected))
                await deliver(ws, wire)
                if not isinstance(expected, Nothing):
                    answer = await next_answer(ws, live, model)
                    check_answer(answer, expected, model, wire)
                if isinstance(expected, Close):
                    closed = True
                    # Not parsed, and nothing after it is handled either.
                    await ws.send_input({"type": "websocket.receive", "text": PING})
                    assert await ws.receive_nothing(timeout=0.05)
                    break
                # Still alive: a ping gets its pong (and typing got nothing).
                await deliver(ws, Wire(PING))
                pong = await next_answer(ws, live, model)
                assert pong == {"type": "pong"}, f"{pong} after {wire!r}"
            new = model.acked_new[acked_before:]
            if not closed:
                # Every stored message reaches its sender's room, once.
                while not set(new) <= set(live):
                    frame = await next_output(ws, live, model)
                    assert frame is None, f"unexpected {frame} at the end"
            # (A message stored by an earlier connection may still come live.)
            assert set(live) <= set(model.acked_new)
    after = await stored_rows()
    # Nothing stored that should not be, and every new ack is one message.
    assert after == model.rows
    assert set(after) - set(before) == set(model.acked_new)
    for seq in model.acked_new:
        assert after[seq].author == "alice"
    return model


async def pipeline(
    ws: WebsocketCommunicator, wires: list[Wire], model: Model, live: dict
) -> bool:
    """All frames at once, then a ping; True if the connection was closed."""
    expectations = []
    for wire in wires:
        expected = model.expect(wire)
        model.outcomes.append(describe(expected))
        expectations.append((wire, expected))
        if isinstance(expected, Close):
            break  # nothing after it is parsed, handled or stored
    for wire in [*wires, Wire(PING)]:
        await deliver(ws, wire)
    for wire, expected in expectations:
        if not isinstance(expected, Nothing):
            answer = await next_answer(ws, live, model)
            check_answer(answer, expected, model, wire)
        if isinstance(expected, Close):
            assert await ws.receive_nothing(timeout=0.05)
            return True
    pong = await next_answer(ws, live, model)
    assert pong == {"type": "pong"}, f"{pong} after the pipelined frames"
    return False


def describe(expected: Any) -> str:
    if isinstance(expected, Error):
        return f"error {expected.code}"
    if isinstance(expected, Close):
        return f"close {expected.code}"
    return type(expected).__name__.lower()


def run(sessions: list[list[Wire]], user: Any, **kwargs: Any) -> Model:
    """``exchange`` for a synchronous (Hypothesis) test; ``user`` is alice.
    The answers are Hypothesis events (see --hypothesis-show-statistics)."""
    model = async_to_sync(exchange)(sessions, user, **kwargs)
    if currently_in_test_context():
        for outcome in sorted(set(model.outcomes)):
            event(outcome)
    return model


@pytest.fixture(autouse=True)
def _generous_limits(settings):
    """Rate limits out of the way, so a 429 does not mask what a frame gets;
    the rate-limit test sets its own."""
    settings.SEND_BURST = 10**9
    settings.SEND_RATE_PER_SECOND = 10**6
    settings.HISTORY_BURST = 10**9
    settings.HISTORY_RATE_PER_SECOND = 10**6
    settings.READ_BURST = 10**9
    settings.READ_RATE_PER_SECOND = 10**6
    settings.HANDSHAKE_BURST_PER_ADDRESS = 10**9
    settings.HANDSHAKE_RATE_PER_ADDRESS = 10**6


@pytest.fixture
def room(lobby, alice, bob):
    """The lobby, with one message of bob's under the client_id "shared"
    (the same client_id from another author is a new message)."""

    services.store_message(
        room=Room.objects.get(slug="lobby"),
        author=bob,
        body="bob's",
        client_id="shared",
    )
    return lobby


# --- strategies ------------------------------------------------------------------

ABSENT = object()


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Pick a strategy by weight (``one_of`` would flatten nested ``one_of``s
    into equal branches, drowning the valid values among the invalid)."""
    return st.sampled_from(
        [strategy for weight, strategy in choices for _ in range(weight)]
    ).flatmap(lambda strategy: strategy)


ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
WIRE_CHAR = st.characters(codec="utf-8")  # what a WebSocket text can carry
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CONTROL = st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\x85\u2028\ufeff")
# Whitespace to Python's str.strip(), which the blank rule uses.
WHITESPACE = st.sampled_from(
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
BOUNDARY_INTS = [
    0,
    1,
    -1,
    99,
    100,
    101,
    MAX_INT,
    MAX_INT + 1,
    2**64,
    -(2**63),
    10**30,
    -(10**30),
]
# 4300 digits: the longest integer Python's int() reads from text (a built
# value, so that its repr stays short in Hypothesis' reports).
LONGEST_INT = st.builds(pow, st.just(10), st.just(4299))

integers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.sampled_from(BOUNDARY_INTS),
    LONGEST_INT,
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e3, 1e308, 5e-324, 2.0**63]),
)
any_text = st.text(ANY_CHAR, max_size=24)
keys = st.text(ANY_CHAR, max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | integers | floats | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=16,
)

ODD_TYPES = st.one_of(
    st.just(ABSENT),
    st.sampled_from(
        [
            "",
            "Send",
            "PING",
            " ping",
            "ping\n",
            "send\x00",
            "shout",
            "message",
            "ack",
            "error",
            "welcome",
            "pong",
        ]
    ),
    st.text(ANY_CHAR, max_size=60),
    st.none(),
    st.booleans(),
    integers,
    floats,
    st.lists(st.sampled_from(["send", "ping"]), max_size=2),
    st.dictionaries(st.just("type"), st.just("ping")),
)


def _cid(n: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(sorted(CLIENT_ID_CHARS)), min_size=n, max_size=n)


CLIENT_ID_POOL = ["c1", "c2", "dup", "shared", "x" * 64, "-", "_"]
valid_client_ids = st.one_of(
    st.just(ABSENT),
    st.none(),
    st.sampled_from(CLIENT_ID_POOL),  # repeats, and bob's "shared"
    st.sampled_from([1, 2, 63, 64]).flatmap(_cid),
)
invalid_client_ids = st.one_of(
    st.sampled_from([0, 65, 66, 200]).flatmap(_cid),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        _cid(2),
        st.sampled_from(
            [" ", ".", "é", "\u0663", "\uff21", "\n", "\x00", "😀", "\u0131"]
        ),
        st.sampled_from(["", "a", "x" * 62]),
    ),
    st.sampled_from(["abc\n", "\nabc", "abc ", "a\ud800"]),
    st.booleans(),
    integers,
    floats,
    st.lists(st.just("c1"), max_size=2),
    st.dictionaries(st.just("id"), st.just("c1"), max_size=1),
)
client_ids = weighted((2, valid_client_ids), (1, invalid_client_ids))


# Valid bodies: any character a wire can carry but NUL, not all blank, with
# blanks around it (kept: bodies are stored verbatim).
valid_bodies = st.builds(
    lambda pad, core, pad2: pad + core + pad2,
    st.text(WHITESPACE, max_size=2),
    st.text(WIRE_CHAR.filter(lambda c: c != "\x00"), min_size=1, max_size=40).filter(
        str.strip
    ),
    st.text(WHITESPACE, max_size=2),
)
# Around the 4000 code-point limit, in characters of every UTF-8 width, and
# ending in a character that may spoil it.
long_bodies = st.builds(
    lambda unit, count, tail: unit * (count - len(tail)) + tail,
    st.sampled_from(["x", "é", "€", "😀", " ", "\t"]),
    st.sampled_from([1, 3999, 4000, 4001, 4002]),
    st.sampled_from(["", "", "\x00", "😀", " ", "\ud800"]),
)
odd_bodies = st.one_of(
    st.just(ABSENT),
    st.text(WHITESPACE, max_size=12),  # empty or blank
    st.builds(  # control characters and NULs, maybe blank around them
        lambda pad, core, pad2: pad + core + pad2,
        st.text(WHITESPACE, max_size=3),
        st.text(CONTROL | WIRE_CHAR, min_size=1, max_size=12),
        st.text(WHITESPACE, max_size=3),
    ),
    st.builds(  # lone surrogates (a pair of them may join into one character)
        lambda a, s, b: a + s + b,
        st.text(max_size=5),
        st.text(SURROGATE, min_size=1, max_size=2),
        st.text(max_size=5),
    ),
)
non_string_bodies = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    floats,
    st.lists(st.just("x"), max_size=2),
    st.dictionaries(st.just("text"), st.just("x"), max_size=1),
)
bodies = weighted(
    (4, valid_bodies), (2, long_bodies), (2, odd_bodies), (1, non_string_bodies)
)

odd_seq_fields = st.one_of(
    st.integers(-3, 130),
    st.sampled_from(BOUNDARY_INTS),
    LONGEST_INT,
    floats,
    st.booleans(),
    st.sampled_from(["5", "", "0x10"]),
    st.lists(st.just(1), max_size=2),
)
seq_fields = weighted(
    (3, st.one_of(st.just(ABSENT), st.none(), st.integers(0, 40))),
    (1, odd_seq_fields),
)

PROTOCOL_KEYS = {"type", "body", "client_id", "before", "after", "limit", "seq"}
extra_fields = st.dictionaries(
    keys.filter(lambda k: k not in PROTOCOL_KEYS), json_values, max_size=3
)


@st.composite
def protocol_frames(draw: st.DrawFn) -> dict:
    """A frame shaped like a client frame, with right and wrong fields."""
    kind = draw(
        st.sampled_from(
            ["send"] * 4
            + ["history"] * 2
            + ["edit", "delete", "typing", "ping", "read", "odd"]
        )
    )
    frame: dict[str, Any] = {}
    kind_value = draw(ODD_TYPES) if kind == "odd" else kind
    if kind_value is not ABSENT:
        frame["type"] = kind_value
    if kind in ("send", "edit") or draw(st.integers(0, 3)) == 0:
        body = draw(bodies)
        if body is not ABSENT:
            frame["body"] = body
    client_id = draw(client_ids)
    if client_id is not ABSENT:
        frame["client_id"] = client_id
    if kind in ("edit", "delete", "read") or draw(st.integers(0, 5)) == 0:
        # Mostly a seq of the room (bob's message is 1, changes follow).
        value = draw(weighted((3, st.integers(1, 8)), (1, seq_fields)))
        if value is not ABSENT:
            frame["seq"] = value
    if kind == "history" or draw(st.integers(0, 3)) == 0:
        for name in ("before", "after", "limit"):
            value = draw(seq_fields)
            if value is not ABSENT:
                frame[name] = value
    if draw(st.integers(0, 2)) == 0:
        frame.update(draw(extra_fields))
    return dict(draw(st.permutations(list(frame.items()))))


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> Wire:
    """JSON text as a client could send it: escaped or raw UTF-8, compact or
    spaced. Lone surrogates can cross a WebSocket only as \\u escapes."""
    value = draw(values)
    ascii_only = draw(st.booleans())
    style = draw(st.sampled_from([None, (",", ":"), (" , ", " : ")]))
    text = json.dumps(value, ensure_ascii=ascii_only, separators=style)
    if not ascii_only:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, separators=style)
    return Wire(text)


def _nest(depth: int, braces: bool) -> str:
    if braces:
        return '{"a":' * depth + "0" + "}" * depth
    return "[" * depth + "]" * depth


nested = st.builds(
    lambda depth, braces: Wire(f'{{"type":"ping","x":{_nest(depth, braces)}}}'),
    st.integers(1, 40) | st.sampled_from([100, 1000, 5000, 20000]),
    st.booleans(),
)

NOT_JSON = [
    "",
    " ",
    "null",
    "true",
    "1",
    '"ping"',
    "[]",
    '[{"type":"ping"}]',
    "{}",
    "NaN",
    '{"type":"ping"',
    '{"type":"ping"}}',
    '{"type":"ping",}',
    "{'type':'ping'}",
    '{"type":"ping"} x',
    '{"type":"ping"}{"type":"ping"}',
    '\ufeff{"type":"ping"}',
    ' \t\r\n{"type":"ping"} \n',
    '{"type":"ping","n":NaN}',
    '{"type":"ping","n":Infinity}',
    '{"type":"ping","n":-Infinity}',
    '{"type":NaN}',
    '{"type":"ping","s":"a\x01b"}',
    '{"type":"ping","n":01}',
    '{"type":"ping","n":1.}',
    '{"type":"ping","n":.5}',
    '{"type":"ping","n":+1}',
    '{"type":"ping","n":0x10}',
    '{"type":"ping","n":1e400}',
    '{"type":"ping","s":"\\x41"}',
    '{"type":"ping","s":"\\u12"}',
    '{"type":"ping","s":"\\ud800"}',
    '{"type":"send","body":"\\ud83d\\ude00","client_id":"pair"}',
    '{"type":"send","body":"\\ude00\\ud83d"}',
    '{"type":"ping","type":"send","body":"last key wins"}',
    '/* comment */ {"type":"ping"}',
    '{"type":"history","after":1e3}',
    '{"type":"history","after":-0}',
    '{"type":"history","limit":1.0}',
    "{\x00}",
]


@st.composite
def mutated(draw: st.DrawFn) -> Wire:
    """A protocol frame's JSON with a cut, a dropped or an inserted character."""
    text = json.dumps(draw(protocol_frames()), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(draw(protocol_frames()))
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "drop", "insert"]))
    if how == "cut":
        return Wire(text[:at])
    if how == "drop":
        return Wire(text[:at] + text[at + 1 :])
    char = draw(st.sampled_from('{}[]",:\\ \x00') | WIRE_CHAR)
    return Wire(text[:at] + char + text[at:])


raw_texts = st.one_of(
    st.sampled_from(NOT_JSON).map(Wire),
    st.text(WIRE_CHAR, max_size=60).map(Wire),
    mutated(),
    nested,
)


@st.composite
def near_cap(draw: st.DrawFn) -> Wire:
    """A frame of exactly (cap + delta) UTF-8 bytes, padded in an unused
    field with ASCII and multi-byte characters, so that a character may
    straddle the cap."""
    cap = django_settings.MAX_FRAME_BYTES
    kind = draw(st.sampled_from(["ping", "send", "send", "history", "typing", "shout"]))
    frame: dict[str, Any] = {"type": kind}
    if kind == "send":
        frame["body"] = draw(
            st.sampled_from(["at the cap", "é" * 4000, "😀" * 4000, "x" * 4001, " "])
        )
        frame["client_id"] = draw(st.sampled_from(["cap", "c1", None]))
    delta = draw(st.sampled_from([-4, -3, -2, -1, 0, 0, 0, 1, 1, 2, 3, 4, cap]))
    wide = draw(st.sampled_from(["é", "€", "😀", "x"]))
    n_wide = draw(st.integers(0, 3))
    wide_first = draw(st.booleans())
    head = json.dumps(frame, ensure_ascii=False)[:-1] + ',"pad":"'
    tail = '"}'
    ascii_count = cap + delta - utf8_size(head + tail) - n_wide * utf8_size(wide)
    wides = wide * n_wide
    pad = wides + "x" * ascii_count if wide_first else "x" * ascii_count + wides
    text = head + pad + tail
    assert utf8_size(text) == cap + delta
    return Wire(text)


binary_frames = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b'{"type":"ping"}', b'{"type":"send","body":"hi"}']),
    protocol_frames().map(lambda f: json.dumps(f).encode()),
    st.just(b"x" * (64 * 1024 + 1)),  # over the text cap: still bad_frame
).map(lambda data: Wire(data=data))


# --- the tests ------------------------------------------------------------------


@fuzz_settings(max_examples=100)
@given(
    frames=st.lists(encoded(protocol_frames()), min_size=1, max_size=6),
    signed_in=st.sampled_from([True, True, True, False]),
    pipelined=st.booleans(),
)
@example(
    frames=[
        Wire('{"type":"send","body":"first","client_id":"dup"}'),
        Wire('{"type":"send","body":"second","client_id":"dup"}'),
        Wire('{"type":"send","body":"   ","client_id":"dup"}'),
        Wire('{"type":"send","body":"mine","client_id":"shared"}'),
    ],
    signed_in=True,
    pipelined=False,
)
@example(
    frames=[
        Wire('{"type":"send","body":"' + " " * 4001 + '","client_id":"c1"}'),
        Wire('{"type":"send","body":"\\u0000x"}'),
        Wire('{"type":"send","body":" \\u00a0\\u3000\\u2028"}'),
        Wire('{"type":"send","body":"  kept  \\n"}'),
        Wire('{"type":"send","body":"ok","client_id":"' + "a" * 65 + '"}'),
        Wire('{"type":"send","body":"ok","client_id":"' + "a" * 64 + '"}'),
    ],
    signed_in=True,
    pipelined=False,
)
@example(
    frames=[
        Wire('{"type":"history","before":9223372036854775808}'),
        Wire('{"type":"history","after":9223372036854775807,"limit":100}'),
        Wire('{"type":"history","limit":0,"client_id":"h"}'),
        Wire('{"type":"history","limit":true}'),
        Wire('{"type":"history","after":3,"before":2}'),
        Wire('{"type":"typing","body":7}'),
    ],
    signed_in=False,
    pipelined=True,
)
def test_protocol_shaped_frames_get_their_documented_answer(
    room, alice, frames, signed_in, pipelined
):
    run([frames], alice, signed_in=signed_in, pipelined=pipelined)


@fuzz_settings(max_examples=60)
@given(
    frames=st.lists(
        encoded(
            json_values
            | st.dictionaries(keys, json_values, max_size=4)
            | st.builds(lambda t, rest: {**rest, "type": t}, json_values, extra_fields)
            | st.builds(
                lambda t, rest: {**rest, "type": t},
                st.sampled_from(["ping", "typing", "history", "send"]),
                st.dictionaries(keys, json_values, max_size=4),
            )
        ),
        min_size=1,
        max_size=4,
    ),
    signed_in=st.booleans(),
)
def test_any_json_value_gets_its_documented_answer(room, alice, frames, signed_in):
    run([frames], alice, signed_in=signed_in)


@fuzz_settings(max_examples=60)
@given(frames=st.lists(raw_texts, min_size=1, max_size=6), pipelined=st.booleans())
@example(frames=[Wire(w) for w in NOT_JSON[:20]], pipelined=False)
@example(frames=[Wire(w) for w in NOT_JSON[20:]], pipelined=True)
def test_text_that_is_not_a_good_frame_gets_bad_json_or_its_error(
    room, alice, frames, pipelined
):
    run([frames], alice, pipelined=pipelined)


def test_nesting_at_and_past_the_limit(room, alice):
    """32 levels of arrays and objects parse; 33 and far deeper are bad_json."""
    wires = [
        Wire('{"type":"ping","x":' + _nest(depth, braces) + "}")
        for depth, braces in [
            (31, False),
            (31, True),
            (32, False),
            (32, True),
            (100, True),
            (30_000, False),  # past the parser's recursion limit
            (9_000, True),
        ]
    ]
    model = run([wires], alice)
    assert not model.acked_new


@fuzz_settings(max_examples=50)
@given(frames=st.lists(near_cap(), min_size=1, max_size=3))
def test_frames_near_the_cap_are_answered_or_closed_with_4009(room, alice, frames):
    run([frames], alice)


def test_a_valid_send_of_4000_escaped_code_points_fits_the_cap(room, alice):
    """Section 4: even a 4000-code-point body written entirely as \\u escapes
    (astral characters: 12 bytes each) fits in the default frame cap."""
    frame = {"type": "send", "body": "😀" * 4000, "client_id": "z" * 64}
    wire = Wire(json.dumps(frame))  # ensure_ascii: \ud83d\ude00 per character
    assert 48_000 < utf8_size(wire.text) <= django_settings.MAX_FRAME_BYTES
    model = run([[wire]], alice)
    assert len(model.acked_new) == 1


@fuzz_settings(max_examples=40)
@given(
    frames=st.lists(binary_frames | encoded(protocol_frames()), min_size=1, max_size=5),
    signed_in=st.booleans(),
)
def test_binary_frames_get_bad_frame_and_the_connection_lives(
    room, alice, frames, signed_in
):
    run([frames], alice, signed_in=signed_in)


@fuzz_settings(max_examples=40)
@given(
    sessions=st.lists(
        st.lists(
            st.builds(
                lambda body, client_id: Wire(
                    json.dumps({"type": "send", "body": body, "client_id": client_id})
                ),
                st.sampled_from(["one", "two", " ", "", "x" * 4001, "\x00", 5]),
                st.sampled_from(["dup", "shared", "other", None]),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=2,
        max_size=3,
    )
)
def test_a_repeated_client_id_stores_once_across_connections(room, alice, sessions):
    model = run(sessions, alice)
    mine = [row.client_id for row in model.rows.values() if row.author == "alice"]
    ids = [client_id for client_id in mine if client_id is not None]
    assert len(ids) == len(set(ids))


@fuzz_settings(max_examples=30)
@given(
    frames=st.lists(
        st.sampled_from(
            [
                '{"type":"send","body":"s","client_id":"r1"}',
                '{"type":"send","body":"s","client_id":"r2"}',
                '{"type":"send","body":"no id"}',
                '{"type":"send","body":" ","client_id":"blank"}',
                '{"type":"history","limit":1}',
                '{"type":"history","limit":0}',
                '{"type":"ping"}',
                '{"type":"typing"}',
                '{"type":"shout"}',
            ]
        ).map(Wire),
        min_size=1,
        max_size=10,
    ),
    send_burst=st.integers(1, 4),
    history_burst=st.integers(1, 3),
)
def test_rate_limited_frames_carry_retry_after_ms_and_store_nothing(
    room, alice, settings, frames, send_burst, history_burst
):
    """With buckets that do not refill within a test, exactly the frames past
    the burst that reach the rate check are refused, each with a positive
    integer retry_after_ms; bad frames, pings, typing and unknown types take
    no tokens (section 13)."""
    settings.SEND_BURST = send_burst
    settings.SEND_RATE_PER_SECOND = 0.001
    settings.HISTORY_BURST = history_burst
    settings.HISTORY_RATE_PER_SECOND = 0.001
    limits.reset_for_tests()  # full buckets for each example
    run([frames], alice, send_burst=send_burst, history_burst=history_burst)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ('{"type":"ping","n":' + "1" * 4301 + "}", {"type": "pong"}),
        ('{"type":"history","after":' + "9" * 5000 + "}", "bad_frame"),
        ('{"type":"history","after":-' + "9" * 5000 + "}", "bad_frame"),
    ],
    ids=[
        "ping-with-a-huge-unused-int",
        "history-after-too-big",
        "history-after-negative",
    ],
)
async def test_an_integer_of_more_than_4300_digits(room, alice, text, answer):
    """Valid JSON that Python's int() refuses: an unused field is ignored
    (section 4), a used one is out of range; never bad_json."""
    async with connected("lobby", token=await token_for(alice)) as ws:
        await ws.send_to(text_data=text)
        frame, _ = await receive_until(ws, lambda f: f["type"] != "presence")
        if isinstance(answer, dict):
            assert frame == answer
        else:
            assert (frame["type"], frame.get("code")) == ("error", answer)


@pytest.mark.parametrize(
    "unit",
    ["x", "😀"],
    ids=["ascii", "astral"],
)
async def test_a_history_page_is_trimmed_to_a_quarter_of_the_output_budget(
    room, alice, unit
):
    """Section 9.5: a history page is trimmed to a quarter of the output
    budget (OUTPUT_BUFFER_BYTES, in bytes), keeping the newest messages when
    no `after` is given, and has_more is then true."""

    def fill() -> None:
        lobby = Room.objects.get(slug="lobby")
        for _ in range(100):
            services.store_message(
                room=lobby, author=None, body=unit * MAX_BODY, client_id=None
            )

    await database_sync_to_async(fill)()
    async with connected("lobby", token=await token_for(alice)) as ws:
        await send_json(ws, {"type": "history", "limit": 100})
        page, _ = await receive_until(ws, lambda f: f["type"] == "history")
    seqs = [m["seq"] for m in page["messages"]]
    assert page["has_more"] is True
    assert 0 < len(seqs) < 100
    assert seqs == list(range(102 - len(seqs), 102))  # the newest, ascending
    sizes = [len(json.dumps(m, ensure_ascii=False).encode()) for m in page["messages"]]
    size = len(json.dumps(page, ensure_ascii=False).encode())
    assert size <= django_settings.OUTPUT_BUFFER_BYTES // 4 + max(sizes)


# --- edits and deletions (section 9.7) ---------------------------------------------

change_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("send"), "body": valid_bodies},
        optional={"client_id": st.sampled_from(CLIENT_ID_POOL)},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("edit"),
            "seq": st.integers(1, 14),
            "body": weighted((5, valid_bodies), (1, bodies)),
        },
        optional={"client_id": st.sampled_from(CLIENT_ID_POOL)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("delete"), "seq": st.integers(1, 14)},
        optional={"client_id": st.sampled_from(CLIENT_ID_POOL)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("history"), "after": st.integers(0, 14)},
    ),
)


@fuzz_settings(max_examples=80)
@given(
    sessions=st.lists(
        st.lists(encoded(change_frames), min_size=1, max_size=8),
        min_size=1,
        max_size=3,
    ),
    pipelined=st.booleans(),
)
def test_edits_and_deletes_get_their_documented_answers(
    room, alice, sessions, pipelined
):
    """Edits and deletes of alice's messages, of bob's (forbidden), of
    changes and tombstones (not_found), repeated client_ids, mixed with
    sends and history: each gets its answer, and the room holds exactly
    the bodies the changes leave (a deletion erases its edits too)."""
    run(sessions, alice, pipelined=pipelined)
