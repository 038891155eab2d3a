"""Throttles on the HTTP side (core.throttling) and rate-limited log lines.

Sign-in attempts (token endpoint, login page, admin login, signup), the
bound on concurrent password hashing, room creations and member adds, as a
client sees them: status, ``Retry-After``, the JSON or the page. Buckets are
the process-memory ones of ``core.limits`` (no REDIS_URL here), emptied
before each test; a test that needs time to pass moves ``clock``. Client
addresses are given as ``REMOTE_ADDR`` (no proxy in front: DJANGO_HTTPS=0).
"""

import logging
import threading
from html.parser import HTMLParser

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.http import HttpResponse
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backend.asgi import application
from core import logs, metrics, throttling
from core.logs import LogLimiter
from core.models import Membership, Room
from tests.factories import PASSWORD, UserFactory, private_room

pytestmark = pytest.mark.django_db

ADDRESS = "203.0.113.10"
OTHER_ADDRESS = "198.51.100.20"
THIRD_ADDRESS = "192.0.2.30"
FOURTH_ADDRESS = "192.0.2.40"
# Slow enough that no token comes back during a test unless ``clock`` moves.
NO_REFILL = 0.001
GENEROUS = 1000


@pytest.fixture(autouse=True)
def _fresh_gates():
    throttling.reset_for_tests()
    logs.reset_for_tests()
    yield
    throttling.reset_for_tests()
    logs.reset_for_tests()


@pytest.fixture
def limits_of(settings):
    """Set credential limits: every bucket generous unless named."""

    def configure(**bursts: int) -> None:
        for name in (
            "CREDENTIAL_ADDRESS",
            "CREDENTIAL_USER_ADDRESS",
            "CREDENTIAL_USER",
            "SIGNUP_ADDRESS",
            "ROOM_CREATE",
            "MEMBER_ADD",
        ):
            setattr(settings, f"{name}_BURST", bursts.get(name, GENEROUS))
            setattr(settings, f"{name}_RATE_PER_SECOND", NO_REFILL)

    return configure


@pytest.fixture
def failures():
    """Usernames whose password check ran and failed, in order."""
    seen: list[str] = []

    def record(sender, credentials, **kwargs):
        seen.append(credentials.get("username"))

    user_login_failed.connect(record)
    yield seen
    user_login_failed.disconnect(record)


def ask_token(username: str, password: str, address: str = ADDRESS) -> object:
    return APIClient().post(
        "/api/auth/token/",
        {"username": username, "password": password},
        format="json",
        REMOTE_ADDR=address,
    )


def assert_refused_json(response: object, status: int = 429) -> dict:
    """A JSON refusal whose ``Retry-After`` and ``retry_after_ms`` agree."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "retry_after_ms"}
    seconds = int(response["Retry-After"])
    assert seconds >= 1
    assert seconds - 1 < body["retry_after_ms"] / 1000 <= seconds
    return body


# --- the token endpoint -----------------------------------------------------------


def test_token_attempts_per_address_allow_the_burst_then_429(limits_of, failures):
    """The third attempt of a burst of 2 is refused before any password check,
    with Retry-After in seconds and retry_after_ms in the JSON."""
    limits_of(CREDENTIAL_ADDRESS=2)
    UserFactory(username="ada")

    allowed = [ask_token("ada", "wrong").status_code for _ in range(2)]
    refused = ask_token("ada", PASSWORD)

    assert allowed == [400, 400]
    body = assert_refused_json(refused)
    assert "Too many sign-in attempts" in body["detail"]
    # 1 / NO_REFILL seconds until the next token.
    assert int(refused["Retry-After"]) == 1000
    assert failures == ["ada", "ada"], "the refused attempt was not checked"
    assert ask_token("ada", PASSWORD, OTHER_ADDRESS).status_code == 200


def test_token_requests_without_a_password_still_count_per_address(limits_of):
    """Every submission is an attempt, even one the serializer refuses."""
    limits_of(CREDENTIAL_ADDRESS=2)
    UserFactory(username="ada")
    for _ in range(2):
        empty = APIClient().post("/api/auth/token/", {}, format="json")
        assert empty.status_code == 400
    assert_refused_json(ask_token("ada", PASSWORD, "127.0.0.1"))


def test_password_checks_per_username_and_address(limits_of, failures):
    """Guesses at ada from one address lock ada out at that address only:
    her own address, and other usernames from the guesser's, are unaffected."""
    limits_of(CREDENTIAL_USER_ADDRESS=2)
    UserFactory(username="ada")
    UserFactory(username="bob")

    guesses = [ask_token("ada", f"guess{n}").status_code for n in range(2)]
    wrong_guess = ask_token("ada", "guess2")
    correct_guess = ask_token("ada", PASSWORD)

    assert guesses == [400, 400]
    assert_refused_json(wrong_guess)
    assert_refused_json(correct_guess)
    assert failures == ["ada", "ada"], "refused guesses were checked"
    assert ask_token("ada", PASSWORD, OTHER_ADDRESS).status_code == 200
    assert ask_token("bob", PASSWORD).status_code == 200


def test_password_checks_per_username_span_every_address(limits_of):
    """Guessing spread over addresses meets the per-username limit."""
    limits_of(CREDENTIAL_USER=3)
    UserFactory(username="ada")
    spread = [
        ask_token("ada", "wrong", address).status_code
        for address in (ADDRESS, OTHER_ADDRESS, THIRD_ADDRESS)
    ]
    assert spread == [400, 400, 400]
    assert_refused_json(ask_token("ada", PASSWORD, FOURTH_ADDRESS))
    assert ask_token("bob", "wrong", FOURTH_ADDRESS).status_code == 400


def test_case_variants_of_a_username_share_its_limit(limits_of):
    """ "Ada" and "ADA" are guesses at the same account for the limit."""
    limits_of(CREDENTIAL_USER_ADDRESS=2)
    UserFactory(username="ada")
    assert ask_token("Ada", "wrong").status_code == 400
    assert ask_token("ADA", "wrong").status_code == 400
    assert_refused_json(ask_token("ada", PASSWORD))


def test_a_refused_username_is_admitted_again_once_a_token_refills(
    settings, limits_of, clock
):
    """Not blocked forever: one token a minute comes back."""
    limits_of(CREDENTIAL_USER_ADDRESS=1)
    settings.CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND = 1 / 60
    UserFactory(username="ada")
    assert ask_token("ada", "wrong").status_code == 400
    refused = ask_token("ada", PASSWORD)
    assert_refused_json(refused)
    assert refused["Retry-After"] == "60"

    clock.advance(59)
    assert_refused_json(ask_token("ada", PASSWORD))
    clock.advance(1)
    assert ask_token("ada", PASSWORD).status_code == 200


def test_refusals_are_logged_without_flooding(settings, limits_of, caplog):
    """Refused attempts log the bucket and address, at most LOG_LIMIT_LINES."""
    limits_of(CREDENTIAL_ADDRESS=2)
    settings.LOG_LIMIT_LINES = 2
    logs.reset_for_tests()
    UserFactory(username="ada")
    with caplog.at_level(logging.INFO, logger="core.throttling"):
        statuses = [ask_token("ada", "wrong").status_code for _ in range(7)]
    assert statuses == [400, 400] + [429] * 5
    lines = [r.getMessage() for r in caplog.records if r.name == "core.throttling"]
    assert lines == [
        f"credentials.address limit refused {ADDRESS}",
        f"credentials.address limit refused {ADDRESS}",
        "http.credentials.address: over 2 lines in 60 s; suppressing similar lines",
    ]
    assert all("ada" not in line for line in lines)


def refused_total(bucket: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "switchboard_rate_limited_total", {"limit": bucket}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("bucket", "setting", "attempt"),
    [
        ("credentials.address", "CREDENTIAL_ADDRESS", lambda n: ask_token("ada", "x")),
        (
            "credentials.user_address",
            "CREDENTIAL_USER_ADDRESS",
            lambda n: ask_token("ada", "x"),
        ),
        # Guesses at one account from many addresses: the address logged is
        # the one refused.
        (
            "credentials.user",
            "CREDENTIAL_USER",
            lambda n: ask_token("ada", "x", (OTHER_ADDRESS, ADDRESS)[n]),
        ),
        (
            "signup.address",
            "SIGNUP_ADDRESS",
            lambda n: sign_up(Client(), f"new{n}"),
        ),
    ],
)
def test_each_refusal_names_its_limit_and_address_never_the_username(
    limits_of, caplog, bucket, setting, attempt
):
    """Operators see which limit refused whom: the log line's event and
    text, and the metric's label, name the bucket; the address stands for
    the client, and the username never appears."""
    limits_of(**{setting: 1})
    UserFactory(username="ada")
    before = refused_total(bucket)
    with caplog.at_level(logging.INFO, logger="core.throttling"):
        assert attempt(0).status_code in (302, 400)
        assert attempt(1).status_code == 429
    lines = [
        (record.event, record.getMessage())
        for record in caplog.records
        if record.name == "core.throttling"
    ]
    assert lines == [(f"http.{bucket}", f"{bucket} limit refused {ADDRESS}")]
    assert refused_total(bucket) == before + 1


def test_a_refused_write_names_its_limit_and_the_user(limits_of, caplog):
    """Room creations and member adds are counted per user: the log names
    the limit and the user's id (never a username), and so does the metric."""
    limits_of(ROOM_CREATE=1)
    ada = UserFactory(username="ada")
    before = refused_total("rooms.create")
    with caplog.at_level(logging.INFO, logger="core.throttling"):
        assert throttling.check_write("rooms.create", ada) is None
        refusal = throttling.check_write("rooms.create", ada)
    assert (refusal.status, refusal.detail) == (
        429,
        "Too many new rooms. Try again in 1000 s.",
    )
    lines = [
        (record.event, record.getMessage())
        for record in caplog.records
        if record.name == "core.throttling"
    ]
    assert lines == [("http.rooms.create", f"rooms.create limit refused user {ada.pk}")]
    assert refused_total("rooms.create") == before + 1


def test_a_refusal_tells_the_wait_in_whole_seconds_never_zero(limits_of, settings):
    """A tenth of a second to wait is told as 1 s, as Retry-After says."""
    limits_of(ROOM_CREATE=1)
    settings.ROOM_CREATE_RATE_PER_SECOND = 10.0
    ada = UserFactory(username="ada")
    assert throttling.check_write("rooms.create", ada) is None
    refusal = throttling.check_write("rooms.create", ada)
    assert refusal.detail == "Too many new rooms. Try again in 1 s."
    assert refusal.retry_after_seconds == 1


def test_a_new_hashing_concurrency_applies_at_once(settings):
    """The bound is read on every sign-in: raised while the slot is held,
    a second sign-in hashes instead of waiting."""
    settings.PASSWORD_HASH_CONCURRENCY = 1
    settings.PASSWORD_HASH_WAIT_SECONDS = 0
    with throttling.password_hashing():
        with pytest.raises(throttling.Busy), throttling.password_hashing():
            pass
        settings.PASSWORD_HASH_CONCURRENCY = 2
        with throttling.password_hashing():
            pass


def test_a_refusal_sets_status_and_retry_after_in_whole_seconds():
    """Rounded up, never 0: a client told 0 would retry at once."""
    for wait, header in ((0.001, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")):
        response = throttling.Refusal(429, wait, "no").apply(HttpResponse())
        assert (response.status_code, response.headers["Retry-After"]) == (
            429,
            header,
        )


# --- the bound on password hashing ---------------------------------------------------


def test_a_sign_in_waits_for_a_hashing_slot_then_gets_503(settings):
    """With every slot held, the request waits PASSWORD_HASH_WAIT_SECONDS and
    is answered 503 with Retry-After; a free slot serves it."""
    settings.PASSWORD_HASH_CONCURRENCY = 1
    settings.PASSWORD_HASH_WAIT_SECONDS = 0
    UserFactory(username="ada")
    with throttling.password_hashing():
        busy = ask_token("ada", PASSWORD)
    body = assert_refused_json(busy, status=503)
    assert "busy" in body["detail"]
    assert ask_token("ada", PASSWORD).status_code == 200


def test_no_more_than_the_concurrency_hash_at_once(settings, monkeypatch):
    """Two requests hash at once; the third is turned away while they do."""
    settings.PASSWORD_HASH_CONCURRENCY = 2
    settings.PASSWORD_HASH_WAIT_SECONDS = 0
    inside = threading.Semaphore(0)
    release = threading.Event()

    def slow_authenticate(request, **credentials):
        inside.release()
        assert release.wait(timeout=10)

    monkeypatch.setattr("core.api.authenticate", slow_authenticate)
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(ask_token("x", "y").status_code)
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert inside.acquire(timeout=10), "a request never reached hashing"
        third = ask_token("x", "y")
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=10)
    assert_refused_json(third, status=503)
    assert statuses == [400, 400]


# --- the login page and the admin login --------------------------------------------


class _Fields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "input" and dict(attrs).get("name"):
            self.names.add(dict(attrs)["name"])


def form_fields(response: object) -> set[str]:
    parser = _Fields()
    parser.feed(response.content.decode())
    return parser.names


def post_login(client: object, path: str, username: str, password: str, **extra):
    return client.post(
        path, {"username": username, "password": password}, REMOTE_ADDR=ADDRESS, **extra
    )


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_sign_in_pages_answer_429_with_the_form_still_there(client, limits_of, path):
    """The third guess of a burst of 2 gets 429, Retry-After and the page with
    its form and the reason; the owner still signs in from elsewhere."""
    limits_of(CREDENTIAL_USER_ADDRESS=2)
    UserFactory(username="ada", is_staff=True)
    guesses = [post_login(client, path, "ada", "wrong").status_code for _ in range(2)]

    refused = post_login(client, path, "ada", PASSWORD)

    assert guesses == [200, 200]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "1000"
    assert refused["Content-Type"].startswith("text/html")
    assert {"username", "password", "csrfmiddlewaretoken"} <= form_fields(refused)
    assert "Too many sign-in attempts" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    elsewhere = client.post(
        path,
        {"username": "ada", "password": PASSWORD},
        REMOTE_ADDR=OTHER_ADDRESS,
    )
    assert elsewhere.status_code == 302
    assert client.session["_auth_user_id"]


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_sign_in_pages_answer_503_when_hashing_is_busy(client, settings, path):
    settings.PASSWORD_HASH_CONCURRENCY = 1
    settings.PASSWORD_HASH_WAIT_SECONDS = 0
    UserFactory(username="ada", is_staff=True)
    with throttling.password_hashing():
        busy = post_login(client, path, "ada", PASSWORD)
    assert busy.status_code == 503
    assert busy["Retry-After"] == "1"
    assert "password" in form_fields(busy)
    assert "_auth_user_id" not in client.session


def test_login_page_and_token_endpoint_share_the_address_limit(client, limits_of):
    limits_of(CREDENTIAL_ADDRESS=2)
    UserFactory(username="ada")
    assert ask_token("ada", "wrong").status_code == 400
    assert post_login(client, "/accounts/login/", "ada", "wrong").status_code == 200
    assert post_login(client, "/accounts/login/", "ada", PASSWORD).status_code == 429


def test_viewing_the_login_page_is_not_an_attempt(client, limits_of):
    limits_of(CREDENTIAL_ADDRESS=2)
    UserFactory(username="ada")
    for _ in range(3):
        assert client.get("/accounts/login/", REMOTE_ADDR=ADDRESS).status_code == 200
    assert post_login(client, "/accounts/login/", "ada", "wrong").status_code == 200
    assert post_login(client, "/accounts/login/", "ada", PASSWORD).status_code == 302


# --- signup -------------------------------------------------------------------------


def sign_up(client: object, username: str, address: str = ADDRESS, **fields: str):
    data = {"username": username, "password1": PASSWORD, "password2": PASSWORD}
    return client.post("/accounts/signup/", data | fields, REMOTE_ADDR=address)


def test_accounts_per_address_allow_the_burst_then_429(client, limits_of):
    limits_of(SIGNUP_ADDRESS=2)
    created = [sign_up(client, name).status_code for name in ("ann", "ben")]

    refused = sign_up(client, "cat")

    assert created == [302, 302]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "1000"
    assert "Too many new accounts" in refused.content.decode()
    assert {"username", "password1", "password2"} <= form_fields(refused)
    assert 'value="cat"' in refused.content.decode(), "the username is kept"
    users = get_user_model().objects
    assert sorted(users.values_list("username", flat=True)) == ["ann", "ben"]
    assert sign_up(client, "cat", OTHER_ADDRESS).status_code == 302


def test_failed_signups_count_as_attempts_of_the_address(client, limits_of):
    """Each submission is counted before validation, which would otherwise
    tell without limit whether a username exists."""
    limits_of(CREDENTIAL_ADDRESS=2)
    UserFactory(username="ada")
    taken = sign_up(client, "ada")
    mismatch = sign_up(client, "new", password2="different-pass-1")
    refused = sign_up(client, "new")
    assert (taken.status_code, mismatch.status_code) == (200, 200)
    assert refused.status_code == 429
    assert "already exists" not in refused.content.decode()
    assert not get_user_model().objects.filter(username="new").exists()


def test_signup_answers_503_when_hashing_is_busy(client, settings):
    settings.PASSWORD_HASH_CONCURRENCY = 1
    settings.PASSWORD_HASH_WAIT_SECONDS = 0
    with throttling.password_hashing():
        busy = sign_up(client, "ann")
    assert busy.status_code == 503
    assert not get_user_model().objects.filter(username="ann").exists()
    assert sign_up(client, "ann").status_code == 302


# --- room creations and member adds ---------------------------------------------


def api_client(user: object) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user)}")
    return client


def create(client: APIClient, slug: str, **fields: object) -> object:
    return client.post("/api/rooms/", {"name": slug, "slug": slug} | fields, "json")


def test_room_creations_per_user_allow_the_burst_then_429(limits_of):
    limits_of(ROOM_CREATE=2)
    ada = api_client(UserFactory())
    made = [create(ada, slug).status_code for slug in ("one", "two")]

    refused = create(ada, "three")

    assert made == [201, 201]
    assert "Too many new rooms" in assert_refused_json(refused)["detail"]
    assert not Room.objects.filter(slug="three").exists()
    assert create(api_client(UserFactory()), "three").status_code == 201


def test_taken_slugs_count_as_room_creations(limits_of):
    """Asking whether a slug is taken costs a creation, so probing is slow."""
    limits_of(ROOM_CREATE=2)
    private_room(UserFactory(), slug="hidden")
    ada = api_client(UserFactory())
    assert [create(ada, "hidden").status_code for _ in range(2)] == [400, 400]
    assert_refused_json(create(ada, "hidden"))


def test_invalid_room_requests_do_not_count(limits_of):
    limits_of(ROOM_CREATE=2)
    ada = api_client(UserFactory())
    assert create(ada, "Not A Slug").status_code == 400
    assert create(ada, "-dash").status_code == 400
    assert [create(ada, slug).status_code for slug in ("one", "two")] == [201, 201]
    assert_refused_json(create(ada, "three"))


def test_home_page_form_shares_the_room_creation_limit(client, limits_of):
    """The form answers 429 with the home page, the form as typed, and why."""
    limits_of(ROOM_CREATE=2)
    owner = UserFactory()
    assert create(api_client(owner), "one").status_code == 201
    client.force_login(owner)
    assert client.post("/rooms/new/", {"name": "Two"}).status_code == 302

    refused = client.post("/rooms/new/", {"name": "Three", "slug": "three"})

    assert refused.status_code == 429
    assert refused["Retry-After"] == "1000"
    page = refused.content.decode()
    assert 'id="refusal"' in page
    assert "Too many new rooms" in page
    assert 'value="three"' in page
    assert not Room.objects.filter(slug="three").exists()


def test_member_adds_per_user_allow_the_burst_then_429(limits_of):
    limits_of(MEMBER_ADD=2)
    owner, other_owner = UserFactory(), UserFactory()
    room = private_room(owner, slug="ops")
    private_room(other_owner, slug="dev")
    names = [UserFactory().username for _ in range(3)]
    client = api_client(owner)
    url = "/api/rooms/ops/members/"
    added = [client.post(url, {"username": n}, "json").status_code for n in names[:2]]

    refused = client.post(url, {"username": names[2]}, "json")

    assert added == [201, 201]
    assert "Too many members added" in assert_refused_json(refused)["detail"]
    assert Membership.objects.filter(room=room).count() == 3
    other = api_client(other_owner).post(
        "/api/rooms/dev/members/", {"username": names[2]}, "json"
    )
    assert other.status_code == 201


# --- rate-limited log lines -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_limiter_logs_n_lines_then_says_it_suppresses_then_sums_up(caplog):
    clock = Clock()
    limiter = LogLimiter(lines=3, interval_seconds=60, clock=clock)
    logger = logging.getLogger("tests.limited")
    with caplog.at_level(logging.INFO, logger="tests.limited"):
        logged = [
            limiter.log(logger, logging.INFO, "k", "line %d", n) for n in range(7)
        ]
        clock.now = 59.9
        logged.append(limiter.log(logger, logging.INFO, "k", "line %d", 7))
        clock.now = 60
        logged.append(limiter.log(logger, logging.INFO, "k", "line %d", 8))
    assert logged == [True] * 3 + [False] * 5 + [True]
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "k: over 3 lines in 60 s; suppressing similar lines",
        "k: suppressed 5 similar lines (at most 3 per 60 s)",
        "line 8",
    ]


def test_log_limiter_counts_each_key_apart(caplog):
    limiter = LogLimiter(lines=1, interval_seconds=60, clock=Clock())
    logger = logging.getLogger("tests.limited")
    with caplog.at_level(logging.INFO, logger="tests.limited"):
        assert limiter.log(logger, logging.INFO, "a", "a1")
        assert limiter.log(logger, logging.INFO, "b", "b1")
        assert not limiter.log(logger, logging.INFO, "a", "a2")
    assert [r.getMessage() for r in caplog.records] == [
        "a1",
        "b1",
        "a: over 1 lines in 60 s; suppressing similar lines",
    ]


async def test_refused_origins_do_not_flood_the_log(settings, caplog):
    """Ten handshakes from a foreign page: LOG_LIMIT_LINES lines and a notice."""
    settings.LOG_LIMIT_LINES = 3
    logs.reset_for_tests()
    with caplog.at_level(logging.INFO, logger="core.auth"):
        for _ in range(10):
            communicator = WebsocketCommunicator(
                application, "/ws/rooms/lobby/", [(b"origin", b"https://evil.example")]
            )
            accepted, _ = await communicator.connect(timeout=5)
            assert not accepted
            await communicator.disconnect()
    lines = [r.getMessage() for r in caplog.records if r.name == "core.auth"]
    assert len(lines) == 4
    assert lines[-1] == (
        "ws.origin_refused: over 3 lines in 60 s; suppressing similar lines"
    )


@pytest.mark.django_db(transaction=True)
async def test_invalid_authorization_headers_do_not_flood_the_log(settings, caplog):
    settings.LOG_LIMIT_LINES = 2
    logs.reset_for_tests()
    with caplog.at_level(logging.INFO, logger="core.auth"):
        for _ in range(5):
            communicator = WebsocketCommunicator(
                application, "/ws/rooms/lobby/", [(b"authorization", b"Token nope")]
            )
            accepted, _ = await communicator.connect(timeout=5)
            assert not accepted
            await communicator.disconnect()
    lines = [r.getMessage() for r in caplog.records if r.name == "core.auth"]
    assert lines == ["WebSocket refused: invalid Authorization header"] * 2 + [
        "ws.bad_authorization: over 2 lines in 60 s; suppressing similar lines"
    ]
