"""core.protocol: client frames in, server frames out, no I/O."""

import json
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import protocol
from core.protocol import (
    HistoryFrame,
    PingFrame,
    ProtocolError,
    SendFrame,
    TypingFrame,
    parse_client_frame,
)

MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"send","body":"hi"}', SendFrame(body="hi", client_id=None)),
        (
            '{"type":"send","body":" hi\\n","client_id":"a-Z_9"}',
            SendFrame(body=" hi\n", client_id="a-Z_9"),
        ),
        ('{"type":"send","body":"x","client_id":null}', SendFrame("x", None)),
        ('{"type":"send","body":"x","extra":[1,2]}', SendFrame("x", None)),
        ('{"type":"typing"}', TypingFrame()),
        ('{"type":"ping","whatever":true}', PingFrame()),
        ('{"type":"history"}', HistoryFrame(before=None, after=None, limit=50)),
        (
            '{"type":"history","before":10,"after":2,"limit":100}',
            HistoryFrame(before=10, after=2, limit=100),
        ),
        (f'{{"type":"history","after":{MAX}}}', HistoryFrame(None, MAX, 50)),
        ('{"type":"history","after":0,"limit":1}', HistoryFrame(None, 0, 1)),
    ],
)
def test_valid_frames_parse(text, expected):
    assert parse_client_frame(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ("", "bad_json"),
        ("[1,2]", "bad_json"),
        ('"send"', "bad_json"),
        ("null", "bad_json"),
        ('{"type":"history","after":NaN}', "bad_json"),
        ('{"type":"history","after":Infinity}', "bad_json"),
        ('{"type":"history","after":-Infinity}', "bad_json"),
        ('{"type":"ping","x":' + "[" * 40 + "]" * 40 + "}", "bad_json"),
        ("[" * 100000 + "]" * 100000, "bad_json"),
        ("{}", "bad_frame"),
        ('{"type":null}', "bad_frame"),
        ('{"type":7}', "bad_frame"),
        ('{"type":["send"]}', "bad_frame"),
        ('{"type":"shout"}', "unknown_type"),
        ('{"type":"SEND","body":"x"}', "unknown_type"),
        ('{"type":"send"}', "bad_frame"),
        ('{"type":"send","body":null}', "bad_frame"),
        ('{"type":"send","body":5}', "bad_frame"),
        ('{"type":"send","body":["x"]}', "bad_frame"),
        ('{"type":"send","body":""}', "bad_frame"),
        ('{"type":"send","body":" \\n\\t "}', "bad_frame"),
        ('{"type":"send","body":"a\\u0000b"}', "bad_frame"),
        ('{"type":"send","body":"a\\ud800b"}', "bad_frame"),
        ('{"type":"send","body":"\\udfff"}', "bad_frame"),
        ('{"type":"send","body":"x","client_id":""}', "bad_frame"),
        ('{"type":"send","body":"x","client_id":"has space"}', "bad_frame"),
        ('{"type":"send","body":"x","client_id":"' + "a" * 65 + '"}', "bad_frame"),
        ('{"type":"send","body":"x","client_id":12}', "bad_frame"),
        ('{"type":"send","body":"' + "x" * 4001 + '"}', "too_long"),
        ('{"type":"history","after":true}', "bad_frame"),
        ('{"type":"history","after":1.0}', "bad_frame"),
        ('{"type":"history","after":1.5}', "bad_frame"),
        ('{"type":"history","after":"1"}', "bad_frame"),
        ('{"type":"history","after":-1}', "bad_frame"),
        (f'{{"type":"history","before":{MAX + 1}}}', "bad_frame"),
        ('{"type":"history","limit":0}', "bad_frame"),
        ('{"type":"history","limit":101}', "bad_frame"),
        ('{"type":"history","limit":false}', "bad_frame"),
    ],
)
def test_invalid_frames_are_refused_with_their_code(text, code):
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(text)
    assert caught.value.code == code
    assert caught.value.detail


def test_body_limit_counts_code_points_not_bytes():
    body = "😀" * 4000  # 16,000 UTF-8 bytes, 4000 code points
    frame = parse_client_frame(json.dumps({"type": "send", "body": body}))
    assert frame.body == body


def test_error_echoes_a_valid_client_id():
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame('{"type":"send","body":"","client_id":"c-1"}')
    assert protocol.error_frame(caught.value) == {
        "type": "error",
        "code": "bad_frame",
        "detail": caught.value.detail,
        "client_id": "c-1",
    }


def test_error_does_not_echo_an_invalid_client_id():
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame('{"type":"send","body":"x","client_id":"bad id"}')
    assert caught.value.client_id is None


def test_unknown_type_echoes_client_id():
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame('{"type":"nope","client_id":"abc"}')
    assert (caught.value.code, caught.value.client_id) == ("unknown_type", "abc")


def test_rate_limited_error_carries_retry_after():
    error = ProtocolError("rate_limited", "slow", client_id="x", retry_after_ms=120)
    assert protocol.error_frame(error)["retry_after_ms"] == 120


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", None),
        (b"other=1", None),
        (b"after=0", 0),
        (b"after=17", 17),
        (f"after={MAX}".encode(), MAX),
    ],
)
def test_resume_after_parses(query, expected):
    assert protocol.parse_resume_after(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        b"after=",
        b"after=-1",
        b"after=1.5",
        b"after=abc",
        b"after=%201",
        f"after={MAX + 1}".encode(),
        b"after=1&after=2",
        b"after=true",
        b"after=" + b"9" * 30,
    ],
)
def test_malformed_resume_after_is_bad_frame(query):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_resume_after(query)
    assert caught.value.code == "bad_frame"


def test_timestamps_are_utc_with_microseconds_and_z():
    moment = datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=timezone(timedelta(hours=2)))
    assert protocol.format_timestamp(moment) == "2026-01-02T01:04:05.000060Z"


def test_message_frame_is_plain_json():
    frame = protocol.message_frame(
        room="lobby",
        seq=3,
        author=None,
        body="hi",
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
        client_id=None,
    )
    assert json.loads(json.dumps(frame)) == frame
    assert frame["sent_at"] == "2026-01-01T00:00:00.000000Z"


def test_presence_frame_caps_users_at_100_sorted():
    users = {f"user{n:03d}" for n in range(150)}
    frame = protocol.presence_frame(room="r", users=users, anonymous=2)
    assert frame["users"] == sorted(users)[:100]
    assert (frame["total_users"], frame["anonymous"]) == (150, 2)


@given(st.text(max_size=300))
def test_any_text_yields_a_frame_or_a_protocol_error(text):
    try:
        frame = parse_client_frame(text)
    except ProtocolError as exc:
        assert exc.code in {"bad_json", "bad_frame", "unknown_type", "too_long"}  # noqa: PT017
        json.dumps(protocol.error_frame(exc))
    else:
        assert isinstance(frame, SendFrame | HistoryFrame | TypingFrame | PingFrame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["send", "history", "typing", "ping", "x"])},
        optional={
            "body": json_values,
            "client_id": json_values,
            "before": json_values,
            "after": json_values,
            "limit": json_values,
        },
    )
)
def test_any_json_object_yields_a_frame_or_a_protocol_error(data):
    text = json.dumps(data, allow_nan=True)
    try:
        parse_client_frame(text)
    except ProtocolError as exc:
        json.dumps(protocol.error_frame(exc))


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"a": NaN}', "Not valid JSON: NaN is not valid JSON"),
        ('{"a": -Infinity}', "Not valid JSON: -Infinity is not valid JSON"),
        (
            "{",
            "Not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        ("[]", "A frame must be a JSON object."),
        ('{"type": 1}', "Field 'type' must be a string."),
        ('{"type":"' + "t" * 50 + '"}', f"Unknown frame type {'t' * 40!r}."),
        ('{"type":"send"}', "Field 'body' is required."),
        ('{"type":"send","body":7}', "Field 'body' must be a string."),
        ('{"type":"send","body":"a\\u0000b"}', "Field 'body' must not contain U+0000."),
        (
            '{"type":"send","body":"\\ud800"}',
            "Field 'body' must not contain lone surrogates.",
        ),
        ('{"type":"history","limit":"9"}', "Field 'limit' must be an integer."),
        ('{"type":"history","before":-1}', "Field 'before' must be in 0..2^63-1."),
        ('{"type":"history","after":1.5}', "Field 'after' must be an integer."),
        ('{"type":"edit","seq":0,"body":"x"}', "Field 'seq' must be in 1..2^63-1."),
        (
            f'{{"type":"delete","seq":{MAX + 1}}}',
            "Field 'seq' must be in 1..2^63-1.",
        ),
    ],
)
def test_refusals_say_what_was_wrong(text, detail):
    """The ``detail`` a client is shown, word for word."""
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(text)
    assert caught.value.detail == detail


def test_the_largest_seq_is_a_valid_target():
    edit = parse_client_frame(f'{{"type":"edit","seq":{MAX},"body":"x"}}')
    assert edit.seq == MAX


def test_a_bad_after_in_the_query_string_says_the_range():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_resume_after(b"after=-1")
    assert caught.value.detail == "'after' must be a whole number in 0..2^63-1."


def test_integers_too_long_to_convert_become_the_largest_of_their_sign():
    """Past Python's digit limit the value is still decoded, as the largest
    number Python converts, keeping its sign: past every bound the protocol
    has, so a field that is used gets its range error."""
    digits = sys.get_int_max_str_digits() + 10
    largest = 10 ** sys.get_int_max_str_digits() - 1
    decoded = protocol.decode_json_object(
        f'{{"up": {"9" * digits}, "down": -{"9" * digits}}}'
    )
    assert (decoded["up"], decoded["down"]) == (largest, -largest)
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(f'{{"type":"delete","seq":-{"9" * digits}}}')
    assert caught.value.detail == "Field 'seq' must be in 1..2^63-1."


def nested(depth: int) -> str:
    """A JSON array nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["first", "last"])
def test_nesting_is_refused_one_level_past_the_limit_wherever_it_is(where):
    """Depth counts the frame itself as level 1; scalars and shallow
    siblings (enough brackets to make the walk happen) change nothing."""
    limit = protocol.MAX_NESTING_DEPTH
    shallow = ", ".join(["[]"] * (limit + 5) + ["1", '"s"', "null"])

    def frame(depth_of_deep: int) -> str:
        parts = [f'"pad": [{shallow}]', f'"deep": {nested(depth_of_deep)}']
        if where == "last":
            parts.reverse()
        return '{"type": "ping", ' + ", ".join(parts) + "}"

    assert parse_client_frame(frame(limit - 1)) == PingFrame()  # depth: limit
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame(limit))
    assert caught.value.detail == f"JSON nested deeper than {limit} levels."


def test_after_given_twice_is_refused_by_name():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_resume_after(b"after=1&after=1")
    assert caught.value.detail == "'after' may be given once."
