"""``core.delivery``: what becomes of each event, decided without a socket.

A ``Delivery`` is given a write buffer that keeps its frames in a list; the
consumer and the server are not involved (the tests are async only because
an output gate samples on the running loop). The path through a real
WebSocket protocol is in test_delivery.py.
"""

import pytest

from core import delivery
from core.delivery import (
    ACCESS,
    DONE,
    SEND_FRAME,
    SEND_TEXT,
    TOO_SLOW,
    AccessRecheck,
    AccessRevoked,
    Delivery,
    Encoded,
    LiveMessage,
    Presence,
    Typing,
)
from core.output import OutputGate
from core.servers.backpressure import DECLINED, TOO_FULL, WRITTEN, Offer, WriteBuffer


class Socket:
    """A write buffer whose frames stay in a list; ``answer`` says what the
    server does with the next frame offered."""

    def __init__(self, answer: Offer = WRITTEN) -> None:
        self.answer = answer
        self.frames: list[bytes] = []
        self.queued_bytes = 0

    def offer(self, frame: bytes) -> Offer:
        if self.answer is WRITTEN:
            self.frames.append(frame)
        return self.answer

    def buffer(self) -> WriteBuffer:
        return WriteBuffer(self.offer, lambda: None, lambda: self.queued_bytes)


def message(seq: int, body: str = "hi") -> LiveMessage:
    frame = {"type": "message", "seq": seq, "body": body, "sent_at": "t"}
    return LiveMessage(seq, Encoded(frame), "t")


def started(socket: Socket | None = None, epoch: int = 0) -> Delivery:
    """A connection that has been welcomed and released its held events."""
    subject = Delivery("conn-1")
    subject.start(epoch)
    wire = socket.buffer() if socket is not None else None
    subject.accepted(wire, OutputGate(wire, lambda reason: None))
    assert subject.release() == []
    return subject


def written_seqs(socket: Socket) -> list[int]:
    return [int(frame.split(b'"seq": ')[1].split(b",")[0]) for frame in socket.frames]


# --- live messages ----------------------------------------------------------------


async def test_a_live_message_is_written_to_the_socket_once_and_counted_as_sent():
    socket = Socket()
    subject = started(socket)
    assert subject.decide(message(1), 0) is DONE
    assert subject.decide(message(2), 0) is DONE
    assert written_seqs(socket) == [1, 2]
    assert socket.frames[0] == message(1).encoded.frame
    assert subject.last_seq_sent == 2
    assert subject.told_through == 2


async def test_a_message_the_replay_sent_is_not_written_again():
    socket = Socket()
    subject = started(socket)
    subject.replayed_through = 3
    assert [subject.decide(message(seq), 0) for seq in (2, 3, 4)] == [DONE] * 3
    assert written_seqs(socket) == [4]


async def test_a_server_that_declines_gets_the_text_through_asgi_counted_as_sent():
    socket = Socket(DECLINED)
    subject = started(socket)
    assert subject.decide(message(5), 0) is SEND_TEXT
    assert subject.last_seq_sent == 5  # before anything else can be sent
    assert socket.frames == []


async def test_a_server_without_a_visible_buffer_gets_the_text_through_asgi():
    subject = started(None)
    assert subject.decide(message(1), 0) is SEND_TEXT
    assert subject.last_seq_sent == 1


async def test_a_client_past_its_buffer_is_too_slow_and_the_message_is_not_counted():
    socket = Socket(TOO_FULL)
    subject = started(socket)
    assert subject.decide(message(7), 0) is TOO_SLOW
    assert subject.last_seq_sent == 0  # its resume asks for it again


async def test_a_message_after_a_gap_waits_for_the_connections_catch_up():
    socket = Socket()
    subject = started(socket, epoch=1)
    assert subject.decide(message(1), 2) is DONE  # the hub's epoch moved on
    assert socket.frames == []
    assert subject.last_seq_sent == 0  # the catch-up reads it from here
    subject.checked_epoch = 2
    assert subject.decide(message(2), 2) is DONE
    assert written_seqs(socket) == [2]


async def test_last_seq_sent_never_goes_back():
    subject = started(Socket())
    subject.sent(9)
    subject.sent(4)
    assert subject.last_seq_sent == 9


async def test_told_through_is_the_welcome_until_more_is_sent():
    subject = started(Socket())
    subject.welcome_seq = 10
    assert subject.told_through == 10
    subject.sent(12)
    assert subject.told_through == 12


# --- while the connection starts --------------------------------------------------


async def test_events_during_the_handshake_are_held_then_released_in_order():
    socket = Socket()
    subject = Delivery("conn-1")
    subject.start(0)
    events = [message(1), Presence({"type": "presence"}), message(2)]
    assert [subject.decide(event, 0) for event in events] == [DONE] * 3
    assert socket.frames == []
    subject.accepted(socket.buffer(), OutputGate(socket.buffer(), lambda r: None))
    subject.replayed_through = 1  # the replay sent seq 1 meanwhile
    released = subject.release()
    assert released == events
    outcomes = [subject.decide(event, subject.checked_epoch) for event in released]
    assert outcomes == [DONE, SEND_FRAME, DONE]
    assert written_seqs(socket) == [2]
    assert subject.held is None


async def test_access_events_are_acted_on_at_once_even_while_starting():
    subject = Delivery("conn-1")
    subject.start(0)
    assert subject.decide(AccessRevoked("lobby", None), 0) is ACCESS
    assert subject.decide(AccessRecheck(), 0) is ACCESS
    assert subject.release() == []


# --- other frames and closing -----------------------------------------------------


async def test_a_connection_is_not_told_of_its_own_typing():
    subject = started(Socket())
    assert subject.decide(Typing("alice", "conn-1"), 0) is DONE
    assert subject.decide(Typing("alice", "conn-2"), 0) is SEND_FRAME


async def test_a_closed_connection_is_sent_nothing_and_acts_on_nothing():
    socket = Socket()
    subject = started(socket)
    subject.closed = True
    events = [message(1), Typing("bob", "x"), Presence({}), AccessRecheck()]
    assert [subject.decide(event, 0) for event in events] == [DONE] * 4
    assert subject.may_send() is DONE
    assert socket.frames == []


async def test_a_frame_past_the_output_budget_makes_the_client_too_slow(settings):
    settings.OUTPUT_BUFFER_BYTES = 100
    socket = Socket()
    subject = Delivery("conn-1")
    subject.accepted(socket.buffer(), OutputGate(socket.buffer(), lambda r: None))
    socket.queued_bytes = 100
    assert subject.may_send() is SEND_FRAME  # at the budget, not past it
    socket.queued_bytes = 101
    assert subject.may_send() is TOO_SLOW


# --- events from the channel layer ------------------------------------------------


def test_layer_events_become_typed_events():
    frame = {"type": "message", "seq": 3, "sent_at": "2026-12-06T00:00:00Z"}
    live = delivery.from_layer({"type": "room.message", "message": frame})
    assert isinstance(live, LiveMessage)
    assert (live.seq, live.sent_at) == (3, frame["sent_at"])
    assert (
        live.encoded.text
        == '{"type": "message", "seq": 3, "sent_at": "2026-12-06T00:00:00Z"}'
    )
    typing = {"type": "room.typing", "user": "alice", "sender": "c1"}
    presence = {"type": "room.presence", "frame": {"type": "presence"}}
    revoked = {"type": "access.revoked", "room": None, "credential": "k"}
    assert delivery.from_layer(typing) == Typing("alice", "c1")
    assert delivery.from_layer(presence) == Presence({"type": "presence"})
    assert delivery.from_layer(revoked) == AccessRevoked(None, "k")
    assert delivery.from_layer({"type": "access.recheck"}) == AccessRecheck()


@pytest.mark.parametrize("kind", ["room.unknown", None, "hub.probe"])
def test_an_unknown_layer_event_is_no_event(kind):
    assert delivery.from_layer({"type": kind}) is None
