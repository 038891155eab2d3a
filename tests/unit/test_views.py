"""Health probes and the pages (docs/protocol.md section 15).

``/healthz`` is the App Platform health check: it must answer whatever the
Host header and without the HTTPS redirect. ``/readyz`` checks the database
and a channel-layer round trip. Page tests assert the hooks users and the
browser tier rely on, not the markup around them.
"""

import asyncio
import json
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import OperationalError

from core import services, views
from core.models import Room
from tests.factories import PASSWORD, RoomFactory, UserFactory, private_room

HTTPS_REDIRECT = {
    "SECURE_SSL_REDIRECT": True,
    "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """PBKDF2's million rounds are for attackers, not for this suite."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings):
    """Pages find static files in the app folders, as under DJANGO_DEBUG=1.

    The production storage looks every ``{% static %}`` up in STATIC_ROOT,
    which holds only what the last ``collectstatic`` copied (or nothing).
    """
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


@pytest.fixture
def https_redirect(settings):
    """The redirect settings that DJANGO_HTTPS=1 turns on."""
    for name, value in HTTPS_REDIRECT.items():
        setattr(settings, name, value)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.elements.append((tag, dict(attrs)))


def elements(response: object) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(response.content.decode())
    return parser.elements


def element_ids(response: object) -> set[str]:
    return {attrs["id"] for _, attrs in elements(response) if attrs.get("id")}


def field_names(response: object) -> set[str]:
    return {
        attrs["name"]
        for tag, attrs in elements(response)
        if tag in {"input", "textarea", "select"} and attrs.get("name")
    }


def signed_in_user(client: object) -> object:
    user = client.session.get("_auth_user_id")
    if user is None:
        return AnonymousUser()
    return get_user_model().objects.get(pk=user)


# --- /healthz -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/healthz/"])
@pytest.mark.parametrize("host", ["10.0.0.7:8080", "testserver", "evil.example"])
def test_healthz_is_ok_whatever_the_host(client, path, host):
    response = client.get(path, HTTP_HOST=host)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_answers_with_the_database_out_of_reach(client):
    """No django_db mark: pytest-django makes any database access raise."""
    assert client.get("/healthz").status_code == 200


async def test_healthz_is_ok_under_asgi(async_client):
    response = await async_client.get("/healthz", headers={"host": "10.0.0.7:8080"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_https_redirect_spares_only_healthz(client, https_redirect):
    health = client.get("/healthz", HTTP_HOST="10.0.0.7:8080")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    home = client.get("/")
    assert home.status_code == 301
    assert home["Location"] == "https://testserver/"

    proxied = client.get("/", HTTP_X_FORWARDED_PROTO="https")
    assert proxied.status_code == 200


async def test_https_redirect_spares_healthz_under_asgi(async_client, https_redirect):
    health = await async_client.get("/healthz", headers={"host": "10.0.0.7:8080"})
    assert health.status_code == 200
    assert (await async_client.get("/")).status_code == 301


def test_unknown_host_is_refused_on_pages(client, https_redirect):
    assert client.get("/", HTTP_HOST="10.0.0.7:8080").status_code == 400


# --- /readyz --------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_is_ok_with_sqlite_and_the_in_memory_layer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_ok_under_asgi(async_client):
    response = await async_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


class _BrokenLayer:
    async def new_channel(self, prefix: str = "") -> str:
        raise ConnectionError("redis is down")


class _SilentLayer:
    """Accepts messages and never delivers them."""

    async def new_channel(self, prefix: str = "") -> str:
        return prefix + "nowhere"

    async def send(self, channel: str, message: dict) -> None:
        return None

    async def receive(self, channel: str) -> dict:
        await asyncio.Event().wait()  # forever
        return {}


@pytest.mark.django_db
@pytest.mark.parametrize("layer", [_BrokenLayer, _SilentLayer])
def test_readyz_is_503_naming_a_failing_channel_layer(client, monkeypatch, layer):
    monkeypatch.setattr("core.views.get_channel_layer", layer)
    monkeypatch.setattr("core.views.READY_TIMEOUT_SECONDS", 0.2)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["channel_layer"]}


@pytest.mark.django_db
def test_readyz_is_503_naming_a_failing_database(client, monkeypatch):
    def database_down() -> None:
        raise OSError("connection refused")

    monkeypatch.setattr("core.views._database_answers", database_down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["database"]}


# --- pages -----------------------------------------------------------------------


@pytest.mark.django_db
def test_home_lists_the_rooms_the_visitor_can_see(client):
    owner = UserFactory()
    RoomFactory(slug="lobby", name="The Lobby")
    hidden = private_room(owner, slug="secret")
    hidden.name = "Hidden Plans"
    hidden.save()
    anonymous = client.get("/")
    assert anonymous.status_code == 200
    assert "The Lobby" in anonymous.content.decode()
    assert "Hidden Plans" not in anonymous.content.decode()

    client.force_login(owner)
    assert "Hidden Plans" in client.get("/").content.decode()


@pytest.mark.django_db
def test_public_room_page_has_the_documented_hooks(client):
    RoomFactory(slug="lobby")
    response = client.get("/rooms/lobby/")
    assert response.status_code == 200
    assert {"messages", "presence"} <= element_ids(response)
    assert "composer" not in element_ids(response), "anonymous users cannot post"

    client.force_login(UserFactory())
    response = client.get("/rooms/lobby/")
    assert "composer" in element_ids(response)
    assert "body" in field_names(response)


def sidebar(response: object) -> list[dict[str, str | None]]:
    """The sidebar's rooms: each item's attributes, with its link's."""
    found: list[dict[str, str | None]] = []
    inside = False
    for tag, attrs in elements(response):
        if tag == "ul":
            inside = attrs.get("id") == "rooms-list"
        elif inside and tag == "li":
            found.append(dict(attrs))
        elif inside and tag == "a" and "rooms-link" in (attrs.get("class") or ""):
            found[-1]["current"] = attrs.get("aria-current")
    return found


@pytest.mark.django_db
def test_room_page_sidebar_lists_the_visible_rooms_by_slug_with_counts(client):
    owner, other = UserFactory.create_batch(2)
    RoomFactory(slug="lobby")
    RoomFactory(slug="announcements")
    mine = private_room(owner, other, slug="secret")
    private_room(other, slug="theirs")
    client.force_login(owner)
    services.store_message(
        room=mine, author=other, body=f"@{owner.username} look", client_id=None
    )

    rooms = sidebar(client.get("/rooms/lobby/"))

    assert [r["data-slug"] for r in rooms] == ["announcements", "lobby", "secret"]
    assert [r["current"] for r in rooms] == [None, "page", None]
    secret = rooms[2]
    assert (secret["data-private"], secret["data-unread"]) == ("1", "1")
    assert secret["data-mentions"] == "1"
    # A guest's sidebar: the public rooms, without counts.
    client.logout()
    guest = sidebar(client.get("/rooms/lobby/"))
    assert [r["data-slug"] for r in guest] == ["announcements", "lobby"]
    assert {r["data-unread"] for r in guest} == {"0"}


@pytest.mark.django_db
def test_members_panel_is_for_private_rooms_and_gives_each_their_controls(client):
    owner, member = UserFactory.create_batch(2)
    private_room(owner, member, slug="secret")
    RoomFactory(slug="lobby", owner=owner)
    client.force_login(owner)
    as_owner = element_ids(client.get("/rooms/secret/"))
    assert {"members", "member-add", "rename-room", "rename-form"} <= as_owner
    assert "leave-room" not in as_owner
    assert "members" not in element_ids(client.get("/rooms/lobby/"))

    client.force_login(member)
    page = client.get("/rooms/secret/")
    assert "leave-room" in element_ids(page)
    assert not {"member-add", "rename-room"} & element_ids(page)
    rows = [a for tag, a in elements(page) if tag == "li" and "data-username" in a]
    assert [(r["data-username"], r.get("data-owner")) for r in rows] == sorted(
        [(owner.username, "1"), (member.username, None)]
    )


class _ScriptText(HTMLParser):
    """The text of the ``<script>`` element with the given id, as parsed."""

    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id = element_id
        self.inside = False
        self.parts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "script" and dict(attrs).get("id") == self.element_id:
            self.inside, self.parts = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.parts.append(data)


def script_text(page: str, element_id: str) -> str:
    parser = _ScriptText(element_id)
    parser.feed(page)
    assert parser.parts is not None, f"no <script id={element_id!r}> in the page"
    return "".join(parser.parts)


@pytest.mark.django_db
def test_room_page_shows_message_text_as_text_never_html(client):
    room = RoomFactory(slug="lobby")
    body = "</script><script>alert(1)</script><b>bold</b>"
    services.store_message(room=room, author=None, body=body, client_id=None)
    page = client.get("/rooms/lobby/").content.decode()
    assert "<script>alert(1)" not in page
    assert "<b>bold</b>" not in page
    # The text is in the page, escaped: its markup cannot end the data block.
    escaped = (
        r"\u003C/script\u003E\u003Cscript\u003Ealert(1)\u003C/script\u003E"
        r"\u003Cb\u003Ebold\u003C/b\u003E"
    )
    assert escaped in page
    # What the page's script reads back is exactly what was typed.
    initial = json.loads(script_text(page, "initial-messages"))
    assert [m["body"] for m in initial["messages"]] == [body]


@pytest.mark.django_db
def test_private_room_page_is_404_for_non_members(client):
    owner, member, outsider = UserFactory.create_batch(3)
    private_room(owner, member, slug="secret")

    assert client.get("/rooms/secret/").status_code == 404
    client.force_login(outsider)
    assert client.get("/rooms/secret/").status_code == 404
    client.force_login(member)
    assert client.get("/rooms/secret/").status_code == 200


@pytest.mark.django_db
def test_unknown_room_page_is_404(client):
    assert client.get("/rooms/no-such-room/").status_code == 404


@pytest.mark.django_db
def test_login_page_has_djangos_form_and_signs_in(client):
    user = UserFactory(username="ada")
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert {"username", "password"} <= field_names(page)

    response = client.post(
        "/accounts/login/", {"username": "ada", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert signed_in_user(client) == user


@pytest.mark.django_db
def test_login_with_a_wrong_password_stays_anonymous(client):
    UserFactory(username="ada")
    response = client.post("/accounts/login/", {"username": "ada", "password": "x"})
    assert response.status_code == 200
    assert not signed_in_user(client).is_authenticated


@pytest.mark.django_db
def test_signup_creates_an_account_and_signs_in(client):
    page = client.get("/accounts/signup/")
    assert page.status_code == 200
    assert {"username", "password1", "password2"} <= field_names(page)

    response = client.post(
        "/accounts/signup/",
        {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD},
    )

    assert response.status_code == 302
    assert response["Location"] == "/"
    user = get_user_model().objects.get(username="newbie")
    assert user.check_password(PASSWORD)
    assert signed_in_user(client) == user


@pytest.mark.django_db
def test_signup_with_mismatched_passwords_creates_nothing(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD + "x"},
    )
    assert response.status_code == 200
    assert not get_user_model().objects.filter(username="newbie").exists()
    assert not signed_in_user(client).is_authenticated


@pytest.mark.django_db
def test_logout_needs_a_post(client):
    client.force_login(UserFactory())
    assert client.get("/accounts/logout/").status_code == 405
    assert signed_in_user(client).is_authenticated

    response = client.post("/accounts/logout/")

    assert response.status_code == 302
    assert not signed_in_user(client).is_authenticated


@pytest.mark.django_db
def test_room_form_creates_a_room_and_opens_it(client):
    owner = UserFactory()
    client.force_login(owner)
    response = client.post("/rooms/new/", {"name": "Design Reviews"})
    assert response.status_code == 302
    assert response["Location"] == "/rooms/design-reviews/"
    room = Room.objects.get(slug="design-reviews")
    assert room.owner == owner


@pytest.mark.django_db
def test_room_form_needs_a_signed_in_user(client):
    response = client.post("/rooms/new/", {"name": "Nope"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not Room.objects.exists()


# --- the home page's pages ------------------------------------------------------


def room_links(response: object) -> list[str]:
    return [
        attrs["href"]
        for tag, attrs in elements(response)
        if tag == "a" and "room-card" in (attrs.get("class") or "")
    ]


@pytest.mark.django_db
def test_home_lists_50_rooms_a_page_with_a_link_to_the_next(client):
    for number in range(51):
        RoomFactory(slug=f"room-{number:02d}")
    first = client.get("/")
    assert len(room_links(first)) == 50
    assert "rooms-previous" not in element_ids(first)
    [next_link] = [a for t, a in elements(first) if a.get("id") == "rooms-next"]
    assert next_link["href"] == "?page=2"

    second = client.get("/?page=2")
    assert room_links(second) == ["/rooms/room-50/"]
    assert "rooms-next" not in element_ids(second)
    assert "rooms-previous" in element_ids(second)
    assert set(room_links(first)).isdisjoint(room_links(second))


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["0", "99", "x"])
def test_home_page_number_out_of_range_shows_the_nearest_page(client, page):
    RoomFactory(slug="only")
    response = client.get(f"/?page={page}")
    assert response.status_code == 200
    assert room_links(response) == ["/rooms/only/"]


@pytest.mark.django_db
def test_home_with_few_rooms_has_no_pager(client):
    RoomFactory()
    assert {"rooms-next", "rooms-previous"}.isdisjoint(element_ids(client.get("/")))


# --- security headers -----------------------------------------------------------

POLICY_WITHOUT_NONCE = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def csp(response: object) -> dict[str, str]:
    """The Content-Security-Policy as {directive: sources}."""
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


@pytest.fixture
def pages(client):
    """Every kind of page, as a guest and as a member, by name."""
    owner = UserFactory(username="ada", is_staff=True)
    RoomFactory(slug="lobby")
    private_room(owner, slug="secret")
    # Enough rooms for the home page's pager to show.
    RoomFactory.create_batch(views.HOME_PAGE_ROOMS)

    def fetch() -> dict[str, object]:
        guest = {
            "home": client.get("/"),
            "login": client.get("/accounts/login/"),
            "signup": client.get("/accounts/signup/"),
            "admin-login": client.get("/admin/login/"),
            "room-as-guest": client.get("/rooms/lobby/"),
            "not-found": client.get("/rooms/no-such-room/"),
        }
        client.force_login(owner)
        member = {
            "home-signed-in": client.get("/"),
            "room": client.get("/rooms/lobby/"),
            "private-room": client.get("/rooms/secret/"),
            "admin": client.get("/admin/"),
            "account": client.get("/account/"),
        }
        return guest | member

    return fetch


@pytest.mark.django_db
def test_every_page_has_a_policy_of_self_only_scripts_and_styles(pages):
    fetched = pages()
    assert fetched["not-found"].status_code == 404
    for name, response in fetched.items():
        policy = csp(response)
        scripts = policy["script-src"].split()
        assert scripts[0] == "'self'", name
        assert all(s.startswith("'nonce-") for s in scripts[1:]), name
        assert policy["style-src"] == "'self'", name
        assert policy["default-src"] == "'self'", name
        assert policy["object-src"] == "'none'", name
        assert policy["frame-ancestors"] == "'none'", name
        assert "unsafe" not in response["Content-Security-Policy"], name


@pytest.mark.django_db
def test_only_the_room_page_admits_an_inline_script_its_import_map(pages):
    """The nonce is fresh per answer and admits exactly the import map;
    every other inline <script> is a JSON data block, never run."""
    fetched = pages()
    for name, response in fetched.items():
        inline = [
            attrs
            for tag, attrs in elements(response)
            if tag == "script" and not attrs.get("src")
        ]
        nonces = [s for s in csp(response)["script-src"].split() if "nonce" in s]
        if name in {"room", "room-as-guest", "private-room"}:
            [import_map, data] = inline
            assert import_map["type"] == "importmap"
            assert nonces == [f"'nonce-{import_map['nonce']}'"]
            assert len(import_map["nonce"]) >= 22
            assert data == {"id": "initial-messages", "type": "application/json"}
        else:
            assert nonces == [], name
            assert all(a.get("type") == "application/json" for a in inline), name
    assert csp(fetched["room"]) != csp(fetched["private-room"]), "nonce reused"


@pytest.mark.django_db
def test_pages_carry_no_inline_styles_or_event_handlers(pages):
    for name, response in pages().items():
        content = response.content.decode()
        assert "<style" not in content, name
        for tag, attrs in elements(response):
            assert "style" not in attrs, (name, tag)
            handlers = [key for key in attrs if key.startswith("on")]
            assert handlers == [], (name, tag, handlers)


@pytest.mark.django_db
def test_every_page_is_private_and_not_stored(pages):
    """Pages show who is signed in: no cache may keep them."""
    for name, response in pages().items():
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert {"private", "no-store"} <= directives, name


@pytest.mark.django_db
def test_api_answers_are_private_and_carry_the_policy(client):
    owner = UserFactory()
    private_room(owner, slug="secret")
    client.force_login(owner)
    answers = [
        client.get("/api/rooms/"),
        client.get("/api/rooms/secret/messages/"),
        client.get("/api/rooms/nope/messages/"),
        client.post("/api/rooms/", "{}", content_type="application/json"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 400]
    for answer in answers:
        assert answer["Cache-Control"] == "private, no-store"
        assert answer["Content-Security-Policy"] == POLICY_WITHOUT_NONCE


def test_healthz_is_answered_above_the_headers_middleware(client):
    """The platform's probe stays as it was: no I/O, no extra headers."""
    response = client.get("/healthz")
    assert "Content-Security-Policy" not in response


async def test_pages_served_over_asgi_get_the_headers(async_client, db):
    response = await async_client.get("/accounts/login/")
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == POLICY_WITHOUT_NONCE
    assert "no-store" in response["Cache-Control"]


# --- the database failing a request --------------------------------------------


def _database_fails(*args: object, **kwargs: object) -> None:
    raise OperationalError("canceling statement due to statement timeout")


def test_a_page_the_database_fails_is_a_503_in_plain_text(client, monkeypatch, caplog):
    """The fault itself is injected (the unit tier's SQLite cannot time out a
    statement); the integration tier times out a real one."""
    monkeypatch.setattr(views, "_rooms_for", _database_fails)
    response = client.get("/")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "database is unavailable" in response.content.decode()
    assert [r.levelname for r in caplog.records if r.levelno >= 30] == [
        "WARNING",  # core.middleware: why
        "WARNING",  # django.request: the 503
    ]


def test_other_exceptions_stay_500(client, monkeypatch):
    monkeypatch.setattr(views, "_rooms_for", lambda *a, **k: 1 / 0)
    client.raise_request_exception = False
    assert client.get("/").status_code == 500
