"""Health probes and the pages (DESIGN.md section 4).

``/healthz`` is the App Platform health check: it must answer whatever the
Host header and without the HTTPS redirect. ``/readyz`` checks the database
and a channel-layer round trip. Page tests assert the hooks users and the
browser tier rely on, not the markup around them.
"""

import asyncio
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from core import services
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


@pytest.mark.django_db
def test_room_page_shows_message_text_as_text_never_html(client):
    room = RoomFactory(slug="lobby")
    body = "</script><script>alert(1)</script><b>bold</b>"
    services.store_message(room=room, author=None, body=body, client_id=None)
    page = client.get("/rooms/lobby/").content.decode()
    assert "<script>alert(1)" not in page
    assert "<b>bold</b>" not in page


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
