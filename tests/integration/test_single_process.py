"""The laptop default, end to end: ``make run`` without make.

One Daphne process, SQLite (a temporary ``DATABASE_URL=sqlite:///...``), the
in-memory channel layer (no ``REDIS_URL``) and ``DJANGO_DEBUG=1`` with no
secret key, started with exactly the documented command line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.app import AppProcess
from harness.http import ahttp_json, http_json
from harness.process import LOOPBACK
from harness.ws import Clients
from tests.integration.common import PASSWORD, provision_laptop

pytestmark = pytest.mark.integration


class DocumentedDaphne(AppProcess):
    """``daphne -b 127.0.0.1 -p <port> backend.asgi:application``, verbatim
    (the venv's ``daphne`` script, as ``make run`` calls it).
    """

    def argv(self) -> list[str]:
        daphne = Path(sys.executable).with_name("daphne")
        return [str(daphne), "-b", LOOPBACK, "-p", str(self.port),
                "backend.asgi:application"]  # fmt: skip


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[AppProcess]:
    env = provision_laptop(tmp_path, ["laptop-user"])
    with DocumentedDaphne(env, name="make-run") as app:
        yield app


async def test_make_run_serves_the_lobby_end_to_end(
    laptop: AppProcess, clients: Clients
) -> None:
    status, body = http_json(
        laptop,
        "POST",
        "/api/auth/token/",
        body={"username": "laptop-user", "password": PASSWORD},
    )
    assert status == 200, body
    token = body["token"]
    member = await clients.open(laptop, "lobby", token=token, name="member")
    visitor = await clients.open(laptop, "lobby", name="visitor")
    assert member.frames[0] == {
        "type": "welcome",
        "room": "lobby",
        "user": "laptop-user",
        "last_seq": 0,
    }

    status, posted = await ahttp_json(
        laptop,
        "POST",
        "/api/rooms/lobby/messages/",
        token=token,
        body={"body": "hello from the API"},
    )
    assert status == 201, posted
    seq = await member.send_message("hello from the socket")

    for client in (member, visitor):
        await client.wait_for_seqs({posted["seq"], seq})
        assert [m["body"] for m in client.messages] == [
            "hello from the API",
            "hello from the socket",
        ]
        assert {m["author"] for m in client.messages} == {"laptop-user"}
    assert laptop.argv()[1:] == [
        "-b", "127.0.0.1", "-p", str(laptop.port), "backend.asgi:application"
    ]  # fmt: skip
