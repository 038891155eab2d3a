"""The WebSocket protocol: parse and validate client frames, build server frames.

Pure functions with no I/O, so every rule about a frame's shape lives here and
is tested on its own. Business rules (access, rates, dedup) live in services.
"""

import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import parse_qs

# Error codes, as documented in docs/protocol.md.
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
TOO_LONG = "too_long"
UNAUTHENTICATED = "unauthenticated"
FORBIDDEN = "forbidden"
# An edit or deletion names no message of the room: no such seq, a change
# rather than a message, or a message deleted already.
NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"
# A handshake refused by a limit (open connections per user, per address or
# per process, or handshakes per address); the connection is then closed
# with 4429. Retry after the hint.
TOO_MANY_CONNECTIONS = "too_many_connections"
# An addition to the contract: the server could not complete a valid frame
# (e.g. the database is down); the client may retry it as it was.
INTERNAL_ERROR = "internal_error"

MAX_BODY_CODE_POINTS = 4000
MAX_NESTING_DEPTH = 32
MAX_INT = 2**63 - 1
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DIGITS_RE = re.compile(r"[0-9]{1,19}")


class ProtocolError(Exception):
    """A client frame that breaks the protocol; becomes an ``error`` frame."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        client_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client_id = client_id
        self.retry_after_ms = retry_after_ms


# --- client frames ----------------------------------------------------------


@dataclass(frozen=True)
class SendFrame:
    body: str
    client_id: str | None
    type: Literal["send"] = "send"


@dataclass(frozen=True)
class EditFrame:
    seq: int
    body: str
    client_id: str | None
    type: Literal["edit"] = "edit"


@dataclass(frozen=True)
class DeleteFrame:
    seq: int
    client_id: str | None
    type: Literal["delete"] = "delete"


@dataclass(frozen=True)
class HistoryFrame:
    before: int | None
    after: int | None
    limit: int
    type: Literal["history"] = "history"


@dataclass(frozen=True)
class TypingFrame:
    type: Literal["typing"] = "typing"


@dataclass(frozen=True)
class PingFrame:
    type: Literal["ping"] = "ping"


@dataclass(frozen=True)
class ReadFrame:
    """The connection's own room is read through ``seq`` (section 18)."""

    seq: int
    type: Literal["read"] = "read"


ClientFrame = (
    SendFrame
    | EditFrame
    | DeleteFrame
    | HistoryFrame
    | TypingFrame
    | PingFrame
    | ReadFrame
)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    """``int(text)``, or for more digits than Python converts (4300 by
    default, a guard against quadratic parsing) the largest number it does,
    of the same sign: valid JSON, past every bound the protocol has, so an
    unused field is ignored and a used one gets its range error."""
    try:
        return int(text)
    except ValueError:
        largest: int = 10 ** sys.get_int_max_str_digits() - 1
        return -largest if text.startswith("-") else largest


def _depth_exceeds(value: object, limit: int) -> bool:
    """True if ``value`` nests arrays/objects deeper than ``limit``."""
    stack = [(value, 1)]
    children: Iterable[object]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def decode_json_object(text: str) -> dict[str, object]:
    """Decode ``text`` as a JSON object or raise ``ProtocolError(bad_json)``."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"Not valid JSON: {_short(exc)}") from None
    # Counting brackets first keeps the walk off the common, shallow path.
    if text.count("[") + text.count("{") > MAX_NESTING_DEPTH and _depth_exceeds(
        value, MAX_NESTING_DEPTH
    ):
        raise ProtocolError(
            BAD_JSON, f"JSON nested deeper than {MAX_NESTING_DEPTH} levels."
        )
    if not isinstance(value, dict):
        raise ProtocolError(BAD_JSON, "A frame must be a JSON object.")
    return value


def _short(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0][:200]


def parse_client_frame(text: str) -> ClientFrame:
    """Parse one text frame from a client.

    Raises ``ProtocolError`` for anything that is not a valid frame; the error
    carries the frame's ``client_id`` when the frame had a valid one.
    """
    data = decode_json_object(text)
    client_id = _valid_client_id_or_none(data.get("client_id"))
    frame_type = data.get("type")
    if not isinstance(frame_type, str):
        raise ProtocolError(
            BAD_FRAME, "Field 'type' must be a string.", client_id=client_id
        )
    parser = _PARSERS.get(frame_type)
    if parser is None:
        raise ProtocolError(
            UNKNOWN_TYPE,
            f"Unknown frame type {frame_type[:40]!r}.",
            client_id=client_id,
        )
    try:
        return parser(data)
    except ProtocolError as exc:
        exc.client_id = client_id
        raise


def _valid_client_id_or_none(value: object) -> str | None:
    if isinstance(value, str) and CLIENT_ID_RE.fullmatch(value):
        return value
    return None


def validate_body(body: object) -> str:
    """Return ``body`` if it is a valid message body, else raise.

    Shared by the WebSocket ``send`` frame and the HTTP API, so both store the
    same text for the same input. The body is stored verbatim (not trimmed).
    """
    if not isinstance(body, str):
        raise ProtocolError(BAD_FRAME, "Field 'body' must be a string.")
    if len(body) > MAX_BODY_CODE_POINTS:
        raise ProtocolError(
            TOO_LONG, f"Field 'body' exceeds {MAX_BODY_CODE_POINTS} characters."
        )
    if not body.strip():
        raise ProtocolError(BAD_FRAME, "Field 'body' must not be blank.")
    if "\x00" in body:
        raise ProtocolError(BAD_FRAME, "Field 'body' must not contain U+0000.")
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            BAD_FRAME, "Field 'body' must not contain lone surrogates."
        ) from None
    return body


def validate_client_id(value: object) -> str | None:
    """Return a valid optional ``client_id`` (absent or null: None), else raise."""
    if value is None:
        return None
    if not isinstance(value, str) or not CLIENT_ID_RE.fullmatch(value):
        raise ProtocolError(
            BAD_FRAME, "Field 'client_id' must be 1-64 of [A-Za-z0-9_-]."
        )
    return value


def validate_seq(name: str, value: object) -> int | None:
    """Return an optional integer in 0..2**63-1; booleans and floats are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(BAD_FRAME, f"Field {name!r} must be an integer.")
    if not 0 <= value <= MAX_INT:
        raise ProtocolError(BAD_FRAME, f"Field {name!r} must be in 0..2^63-1.")
    return value


def validate_target(value: object) -> int:
    """Return the required ``seq`` of the message an edit or deletion names."""
    if value is None:
        raise ProtocolError(BAD_FRAME, "Field 'seq' is required.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(BAD_FRAME, "Field 'seq' must be an integer.")
    if not 1 <= value <= MAX_INT:
        raise ProtocolError(BAD_FRAME, "Field 'seq' must be in 1..2^63-1.")
    return value


def validate_limit(value: object) -> int:
    """Return a history page size in 1..100 (absent or null: 50)."""
    limit = validate_seq("limit", value)
    if limit is None:
        return HISTORY_DEFAULT_LIMIT
    if not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise ProtocolError(
            BAD_FRAME, f"Field 'limit' must be in 1..{HISTORY_MAX_LIMIT}."
        )
    return limit


def _parse_send(data: dict[str, object]) -> SendFrame:
    if "body" not in data:
        raise ProtocolError(BAD_FRAME, "Field 'body' is required.")
    return SendFrame(
        body=validate_body(data["body"]),
        client_id=validate_client_id(data.get("client_id")),
    )


def _parse_edit(data: dict[str, object]) -> EditFrame:
    seq = validate_target(data.get("seq"))
    if "body" not in data:
        raise ProtocolError(BAD_FRAME, "Field 'body' is required.")
    return EditFrame(
        seq=seq,
        body=validate_body(data["body"]),
        client_id=validate_client_id(data.get("client_id")),
    )


def _parse_delete(data: dict[str, object]) -> DeleteFrame:
    return DeleteFrame(
        seq=validate_target(data.get("seq")),
        client_id=validate_client_id(data.get("client_id")),
    )


def _parse_history(data: dict[str, object]) -> HistoryFrame:
    return HistoryFrame(
        before=validate_seq("before", data.get("before")),
        after=validate_seq("after", data.get("after")),
        limit=validate_limit(data.get("limit")),
    )


def _parse_read(data: dict[str, object]) -> ReadFrame:
    seq = validate_seq("seq", data.get("seq"))
    if seq is None:
        raise ProtocolError(BAD_FRAME, "Field 'seq' is required.")
    return ReadFrame(seq=seq)


_PARSERS: dict[str, Callable[[dict[str, object]], ClientFrame]] = {
    "send": _parse_send,
    "edit": _parse_edit,
    "delete": _parse_delete,
    "history": _parse_history,
    "typing": lambda data: TypingFrame(),
    "ping": lambda data: PingFrame(),
    "read": _parse_read,
}


def parse_seq_text(name: str, text: str) -> int:
    """Parse a non-negative integer given as text (query strings)."""
    if not DIGITS_RE.fullmatch(text) or int(text) > MAX_INT:
        raise ProtocolError(BAD_FRAME, f"{name!r} must be a whole number in 0..2^63-1.")
    return int(text)


def parse_resume_after(query_string: bytes) -> int | None:
    """Return the ``after`` of a handshake's query string (absent: None)."""
    # Without strict parsing, parse_qs takes any text (Latin-1 decodes any
    # bytes): what is not a pair is no "after".
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    values = query.get("after")
    if values is None:
        return None
    if len(values) != 1:
        raise ProtocolError(BAD_FRAME, "'after' may be given once.")
    return parse_seq_text("after", values[0])


def parse_watch(query_string: bytes) -> bool:
    """Whether a handshake asks to watch the user's rooms (``watch=1``);
    any other value is refused like a bad ``after``."""
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    values = query.get("watch")
    if values is None:
        return False
    if values != ["1"]:
        raise ProtocolError(BAD_FRAME, "'watch' must be 1, given once, or absent.")
    return True


# --- server frames ----------------------------------------------------------


class MessageFrame(TypedDict):
    type: Literal["message"]
    room: str
    seq: int
    author: str | None
    body: str
    sent_at: str
    client_id: str | None
    # Only on changed messages and on changes (docs/protocol.md, 9.7).
    edited_at: NotRequired[str]
    deleted: NotRequired[bool]
    kind: NotRequired[Literal["edit", "delete"]]
    target: NotRequired[int]


class ErrorFrame(TypedDict):
    type: Literal["error"]
    code: str
    detail: str
    client_id: str | None
    retry_after_ms: NotRequired[int]


def format_timestamp(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_frame(
    *,
    room: str,
    seq: int,
    author: str | None,
    body: str,
    sent_at: datetime,
    client_id: str | None,
    kind: str = "message",
    target: int | None = None,
    edited_at: datetime | None = None,
    deleted: bool = False,
) -> MessageFrame:
    """The ``message`` frame; JSON types only, so it crosses Redis as is.

    A plain message has the original seven keys; the others appear only
    where they say something, so older clients see what they always saw.
    A deletion's author stays with the audit (owners and staff), and a
    tombstone has no body.
    """
    frame: MessageFrame = {
        "type": "message",
        "room": room,
        "seq": seq,
        "author": author,
        "body": body,
        "sent_at": format_timestamp(sent_at),
        "client_id": client_id,
    }
    if kind != "message":
        frame["kind"] = kind  # type: ignore[typeddict-item]
        frame["target"] = target  # type: ignore[typeddict-item]
        if kind == "delete":
            frame["author"] = None
            frame["client_id"] = None
    if edited_at is not None:
        frame["edited_at"] = format_timestamp(edited_at)
    if deleted:
        frame["body"] = ""
        frame["deleted"] = True
    return frame


def welcome_frame(*, room: str, user: str | None, last_seq: int) -> dict[str, object]:
    return {"type": "welcome", "room": room, "user": user, "last_seq": last_seq}


def replayed_frame(*, after: int, count: int, complete: bool) -> dict[str, object]:
    return {"type": "replayed", "after": after, "count": count, "complete": complete}


def ack_frame(*, client_id: str | None, seq: int) -> dict[str, object]:
    return {"type": "ack", "client_id": client_id, "seq": seq}


def history_frame(*, messages: list[MessageFrame], has_more: bool) -> dict[str, object]:
    return {"type": "history", "messages": messages, "has_more": has_more}


def typing_frame(*, user: str) -> dict[str, object]:
    return {"type": "typing", "user": user}


def fit_page(
    messages: list[MessageFrame], has_more: bool, *, max_bytes: int, keep_newest: bool
) -> tuple[list[MessageFrame], bool]:
    """Trim a page so its frame stays near ``max_bytes``.

    ``keep_newest``: the page was read newest first (no ``after``), so the
    oldest messages go; else the newest go. At least one message stays. A
    trimmed page has more in its direction, so ``has_more`` becomes True.
    """
    total = 0
    kept = 0
    ordered = reversed(messages) if keep_newest else iter(messages)
    for message in ordered:
        # Bytes, as the output budget counts them: UTF-8, up to 4 a character.
        total += len(json.dumps(message, ensure_ascii=False).encode()) + 1
        if kept and total > max_bytes:
            break
        kept += 1
    if kept == len(messages):
        return messages, has_more
    page = messages[len(messages) - kept :] if keep_newest else messages[:kept]
    return page, True


def pong_frame() -> dict[str, object]:
    return {"type": "pong"}


def error_frame(error: ProtocolError) -> ErrorFrame:
    frame: ErrorFrame = {
        "type": "error",
        "code": error.code,
        "detail": error.detail,
        "client_id": error.client_id,
    }
    if error.retry_after_ms is not None:
        frame["retry_after_ms"] = error.retry_after_ms
    return frame


PRESENCE_MAX_USERS = 100


def presence_frame(
    *, room: str, users: set[str], anonymous: int, available: bool = True
) -> dict[str, object]:
    """At most 100 sorted usernames, plus the totals. ``available=False``:
    shared presence is unreachable, and this is one instance's view."""
    ordered = sorted(users)
    frame: dict[str, object] = {
        "type": "presence",
        "room": room,
        "users": ordered[:PRESENCE_MAX_USERS],
        "total_users": len(ordered),
        "anonymous": anonymous,
    }
    if not available:
        frame["available"] = False
    return frame


# --- the rooms sidebar (section 18) -----------------------------------------------


def rooms_frame(*, rooms: list[Any], more: bool) -> dict[str, object]:
    """Every room a watching user can see, with counts; ``more``: cut."""
    frame: dict[str, object] = {"type": "rooms", "rooms": rooms}
    if more:
        frame["more"] = True
    return frame


def activity_frame(
    *, room: str, seq: int, kind: str, author: str | None,
    mentions: list[str], target: int | None,
) -> dict[str, object]:  # fmt: skip
    """A message, edit or deletion in a watched room (not the body)."""
    return {
        "type": "activity",
        "room": room,
        "seq": seq,
        "kind": kind,
        "author": author,
        "mentions": mentions,
        "target": target,
    }


def read_frame(state: dict[str, Any]) -> dict[str, object]:
    """A read position moved (or, answering ``read``, where it stands)."""
    return {"type": "read", **state}


def room_frame(*, slug: str, name: str, members: list[str] | None) -> dict[str, object]:
    """A room's name or members changed; ``members`` for private rooms only."""
    frame: dict[str, object] = {"type": "room", "slug": slug, "name": name}
    if members is not None:
        frame["members"] = sorted(members)
    return frame
