"""What one connection is sent, decided once per event, without a socket.

The hub (``core.fanout``) turns each channel-layer event into a typed event
once per process, then asks every local connection's ``Delivery`` what
becomes of it. The answer is final: a live message is written straight to
the socket here (through ``core.servers.backpressure``'s ``WriteBuffer``) or
dropped as a duplicate, or the consumer is told the one thing left to do
(send it through ASGI, send a frame, close a client that stopped reading,
act on an access change). The consumer adapts those answers to the ASGI
server and does nothing else with events.

A ``Delivery`` knows what its connection was sent (``last_seq_sent``,
``replayed_through``, the welcome's ``last_seq``), holds events that arrive
while the connection is still starting (so the welcome comes first and a
replay is never interleaved with live messages), and carries the output
budget (``core.output.OutputGate``). Outcomes are plain constants, not an
Enum: ``decide`` runs once per recipient of every message.
"""

import json
from dataclasses import dataclass
from typing import Any, Final

from core import mentions, protocol
from core.output import OutputGate
from core.servers import backpressure
from core.servers.backpressure import TOO_FULL, WRITTEN


class _Text:
    """A frame's JSON encoded once for every local connection that gets
    it; its WebSocket frame is built on first use."""

    __slots__ = ("_event", "_frame", "text")

    def __init__(self, frame: dict[str, Any]) -> None:
        self.text = json.dumps(frame, ensure_ascii=False)
        self._frame: bytes | None = None
        self._event: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The whole WebSocket text frame, built on first use."""
        if self._frame is None:
            self._frame = backpressure.text_frame(self.text.encode())
        return self._frame


class Encoded(_Text):
    """A message frame encoded once for every local connection."""

    __slots__ = ("seq",)

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(message)
        self.seq: int = message["seq"]

    @property
    def event(self) -> bytes:
        """The whole Server-Sent Event (id: seq, one data: line; JSON has
        no raw line breaks), built on first use."""
        if self._event is None:
            self._event = b"id: %d\ndata: %s\n\n" % (self.seq, self.text.encode())
        return self._event


class Shared(_Text):
    """A frame other than a message, encoded once for every local
    connection that gets it (``activity``, ``room``): no event id on a
    stream, which only a message of the connection's own room carries."""

    __slots__ = ("room", "seq")

    def __init__(self, frame: dict[str, Any], room: str, seq: int | None) -> None:
        super().__init__(frame)
        self.room = room
        self.seq = seq  # an activity's seq (None: a room frame)

    @property
    def event(self) -> bytes:
        if self._event is None:
            self._event = b"data: %s\n\n" % self.text.encode()
        return self._event


def activity(message: dict[str, Any]) -> Shared:
    """The ``activity`` frame of a published message, edit or deletion."""
    kind = message.get("kind", "message")
    return Shared(
        protocol.activity_frame(
            room=message["room"],
            seq=message["seq"],
            kind=kind,
            author=message["author"],
            # An edit's new text may name people too; a deletion has none.
            mentions=sorted(mentions.mentioned(message["body"])),
            target=message.get("target"),
        ),
        message["room"],
        message["seq"],
    )


# --- events, as the hub hands them out ----------------------------------------


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """A stored message, published after its commit."""

    seq: int
    encoded: Encoded
    sent_at: str


@dataclass(frozen=True, slots=True)
class Typing:
    user: str
    sender: str  # the connection that typed: it is not told of itself


@dataclass(frozen=True, slots=True)
class Presence:
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AccessRevoked:
    """Access ended for a room (None: every room) and a credential (None:
    every credential) of the user whose group this was sent to."""

    room: str | None
    credential: str | None


@dataclass(frozen=True, slots=True)
class AccessRecheck:
    """Something access depends on changed: read it again."""


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """A room's name or members changed: its ``room`` frame, encoded once."""

    shared: Shared


@dataclass(frozen=True, slots=True)
class RoomsChanged:
    """The rooms a user can see may have changed (their user group)."""


@dataclass(frozen=True, slots=True)
class ReadMoved:
    """A read position of the user moved (their user group)."""

    frame: dict[str, Any]


HubEvent = (
    LiveMessage
    | Typing
    | Presence
    | AccessRevoked
    | AccessRecheck
    | RoomChanged
    | RoomsChanged
    | ReadMoved
)
_RECHECK = AccessRecheck()
_ROOMS_CHANGED = RoomsChanged()


def from_layer(event: dict[str, Any]) -> HubEvent | None:
    """The typed event for a channel-layer event (``core.services`` publishes
    them), or None for a type this version does not know."""
    kind = event.get("type")
    if kind == "room.message":
        message = event["message"]
        return LiveMessage(message["seq"], Encoded(message), message["sent_at"])
    if kind == "room.typing":
        return Typing(event["user"], event["sender"])
    if kind == "room.presence":
        return Presence(event["frame"])
    if kind == "access.revoked":
        return AccessRevoked(event["room"], event["credential"])
    if kind == "access.recheck":
        return _RECHECK
    if kind == "room.changed":
        frame = protocol.room_frame(
            slug=event["slug"], name=event["name"], members=event.get("members")
        )
        return RoomChanged(Shared(frame, event["slug"], None))
    if kind == "rooms.changed":
        return _ROOMS_CHANGED
    if kind == "read.moved":
        return ReadMoved(
            protocol.read_frame(
                {key: event[key] for key in ("room", "read_seq", "unread", "mentions")}
            )
        )
    return None


# --- what becomes of an event ----------------------------------------------------

Outcome = str
# Nothing left to do: written to the socket, a duplicate, held, or skipped.
DONE: Final[Outcome] = "done"
# A live message the server takes through ASGI only: send ``encoded.text``.
SEND_TEXT: Final[Outcome] = "send text"
# A frame of another kind (typing, presence): send it through the gate.
SEND_FRAME: Final[Outcome] = "send frame"
# The client stopped reading: close it (4008) before it costs the room.
TOO_SLOW: Final[Outcome] = "too slow"
# An access event: the consumer reads or closes, even while starting.
ACCESS: Final[Outcome] = "access"


class Delivery:
    """One connection's output: what it was sent, what waits, its budget."""

    __slots__ = (
        "checked_epoch",
        "closed",
        "connection_id",
        "gate",
        "held",
        "last_seq_sent",
        "replayed_through",
        "welcome_seq",
        "wire",
    )

    def __init__(self, connection_id: str = "") -> None:
        self.connection_id = connection_id
        # The server's write buffer, once accepted (None: ASGI only).
        self.wire: backpressure.WriteBuffer | None = None
        self.gate: OutputGate | None = None
        # Events that arrive while the connection starts; None once started.
        self.held: list[HubEvent] | None = None
        # Live copies at or below the last replayed seq are duplicates.
        self.replayed_through = 0
        # Highest seq sent, and the welcome's last_seq: the client knows of
        # everything up to the larger (``told_through``) and fills its gaps.
        self.last_seq_sent = 0
        self.welcome_seq = 0
        # The hub's epoch when this connection's access was last read: live
        # messages go only to connections checked since the last gap.
        self.checked_epoch = 0
        self.closed = False

    @property
    def told_through(self) -> int:
        """The highest seq this client has been told of."""
        return max(self.last_seq_sent, self.welcome_seq)

    def start(self, epoch: int) -> None:
        """Hold events from now until ``release``; access read at ``epoch``."""
        self.held = []
        self.checked_epoch = epoch

    def accepted(self, wire: backpressure.WriteBuffer | None, gate: OutputGate) -> None:
        self.wire = wire
        self.gate = gate

    def release(self) -> list[HubEvent]:
        """Stop holding; the events held, to be decided again in order."""
        held, self.held = self.held or [], None
        return held

    def decide(self, event: HubEvent, epoch: int) -> Outcome:
        """What becomes of ``event``; a live message may be written here."""
        if self.closed:
            return DONE
        if type(event) is LiveMessage:
            if self.checked_epoch != epoch:
                return DONE  # its catch-up re-checks access, then sends this
            if self.held is not None:
                self.held.append(event)
                return DONE
            seq = event.seq
            if seq <= self.replayed_through:
                return DONE  # the replay sent it already
            wire = self.wire
            if wire is not None:
                offered = wire.offer(event.encoded.frame)
                if offered is TOO_FULL:
                    return TOO_SLOW
                if offered is WRITTEN:
                    self.sent(seq)
                    return DONE
            self.sent(seq)  # by the caller, through ASGI, before anything else
            return SEND_TEXT
        if isinstance(event, AccessRevoked | AccessRecheck):
            return ACCESS  # at once, even while starting
        if self.held is not None:
            self.held.append(event)
            return DONE
        if type(event) is Typing and event.sender == self.connection_id:
            return DONE
        return SEND_FRAME

    def sent(self, seq: int) -> None:
        """A message with ``seq`` went to the client (live or stored)."""
        if seq > self.last_seq_sent:
            self.last_seq_sent = seq

    def may_send(self) -> Outcome:
        """Whether a frame other than a live message may be sent now."""
        if self.closed:
            return DONE
        gate = self.gate
        if gate is not None and gate.over_budget():
            return TOO_SLOW
        return SEND_FRAME
