"""The account page (issue 18, point 5): change the password, see and
revoke the API token.

A password change keeps the asking browser signed in, under the same
session key, and its sockets open; it deletes every other session of the
user (each one's sockets close with 4403) and keeps the API token. The
token is shown by its last four characters only and revoked with a POST.
Transactions are real, so ``on_commit`` publishes as it would in
production.
"""

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils.functional import SimpleLazyObject
from rest_framework.authtoken.models import Token

from core import services
from tests.factories import PASSWORD, UserFactory
from tests.unit.conftest import connected
from tests.unit.test_admin import closed_with_4403, still_open
from tests.unit.test_signals import events, revoked, unordered

pytestmark = pytest.mark.django_db(transaction=True)

NEW = "a-new-passphrase-for-ada"
RECHECK = {"type": "access.recheck"}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


def signed_in(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


def key_of(client: Client) -> str:
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def change(client: Client, old: str = PASSWORD, new1: str = NEW, new2: str = NEW):
    return client.post(
        "/account/password/",
        {"old_password": old, "new_password1": new1, "new_password2": new2},
    )


def password_is(user: object, password: str) -> bool:
    return get_user_model().objects.get(pk=user.pk).check_password(password)


# --- the page ---------------------------------------------------------------------


def test_the_account_page_needs_a_signed_in_user(client):
    response = client.get("/account/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert client.post("/account/password/").status_code == 302
    assert client.post("/account/token/revoke/").status_code == 302


def test_the_nav_links_to_the_account_page_when_signed_in(client):
    assert 'href="/account/"' not in client.get("/").content.decode()
    page = signed_in(UserFactory()).get("/account/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/account/" aria-current="page"' in html
    for label in ("Current password", "New password", "New password again"):
        assert f">{label}</label>" in html
    assert 'autocomplete="current-password"' in html
    assert 'autocomplete="new-password"' in html


def test_changes_and_revocations_need_a_post_with_csrf():
    user = UserFactory()
    Token.objects.create(user=user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/account/password/").status_code == 405
    assert client.get("/account/token/revoke/").status_code == 405
    assert change(client).status_code == 403
    assert client.post("/account/token/revoke/").status_code == 403
    assert password_is(user, PASSWORD)
    assert Token.objects.filter(user=user).exists()


# --- bad input: a form error, nothing changed ------------------------------------


@pytest.mark.parametrize(
    ("old", "new1", "new2", "field", "error"),
    [
        ("not-my-password", NEW, NEW, "old_password", "entered incorrectly"),
        ("", NEW, NEW, "old_password", "This field is required."),
        (PASSWORD, NEW, NEW + "x", "new_password2", "two password fields didn"),
        (PASSWORD, "12345678", "12345678", "new_password2", "entirely numeric"),
        (PASSWORD, "short", "short", "new_password2", "too short"),
        (PASSWORD, "ada-lovelace", "ada-lovelace", "new_password2", "too similar"),
    ],
    ids=["wrong-current", "no-current", "mismatch", "numeric", "short", "similar"],
)
def test_bad_input_gets_a_form_error_and_changes_nothing(
    listen, old, new1, new2, field, error
):
    user = UserFactory(username="ada-lovelace")
    other = signed_in(user)
    client = signed_in(user)
    channel = listen(services.user_group(user.pk))

    response = change(client, old, new1, new2)

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert error in " ".join(errors[field]), errors
    html = response.content.decode()
    assert 'aria-invalid="true"' in html  # the field tells assistive tech
    assert password_is(user, PASSWORD)
    assert Session.objects.filter(session_key=key_of(other)).exists()
    assert events(channel) == []


def test_the_current_password_checks_are_rate_limited_like_sign_in(settings, listen):
    """Every submission counts for the address; one with a current password
    counts as a password check of the username, before it is checked."""
    settings.CREDENTIAL_USER_ADDRESS_BURST = 2
    settings.CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND = 0.0001
    user = UserFactory()
    client = signed_in(user)

    assert change(client, old="guess-1").status_code == 400
    assert change(client, old="guess-2").status_code == 400
    refused = change(client)  # the right password, but no check is left

    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert "Too many sign-in attempts" in refused.content.decode()
    assert 'role="alert"' in refused.content.decode()
    assert password_is(user, PASSWORD)


def test_a_change_waits_for_a_hashing_slot_then_gets_503(settings, monkeypatch):
    settings.PASSWORD_HASH_WAIT_SECONDS = 0.01
    user = UserFactory()
    client = signed_in(user)
    from core import throttling

    semaphore = throttling._hashing_semaphore()
    for _ in range(settings.PASSWORD_HASH_CONCURRENCY):
        semaphore.acquire()
    try:
        response = change(client)
    finally:
        for _ in range(settings.PASSWORD_HASH_CONCURRENCY):
            semaphore.release()

    assert response.status_code == 503
    assert "Retry-After" in response
    assert password_is(user, PASSWORD)


# --- a change ---------------------------------------------------------------------


def test_a_change_keeps_this_session_and_ends_every_other(listen):
    user = UserFactory()
    client, phone, laptop = signed_in(user), signed_in(user), signed_in(user)
    someone_else = signed_in(UserFactory(username="grace"))
    kept, ended = key_of(client), [key_of(phone), key_of(laptop)]
    token = Token.objects.create(user=user)
    channel = listen(services.user_group(user.pk))

    response = change(client)

    assert response.status_code == 302
    assert response["Location"] == "/account/"
    assert password_is(user, NEW)
    # This browser: same session key, still signed in.
    assert key_of(client) == kept
    assert client.get("/account/").status_code == 200
    # The others: deleted, signed out at their next request.
    assert not Session.objects.filter(session_key__in=ended).exists()
    for other in (phone, laptop):
        assert other.get("/account/").status_code == 302
    assert someone_else.get("/account/").status_code == 200
    # The token stays; each ended session's sockets close, then the user's
    # connections re-check (nothing closes all of them).
    assert Token.objects.filter(pk=token.pk).exists()
    assert unordered(events(channel)) == unordered(
        [
            revoked(credential=services.credential_id(ended[0])),
            revoked(credential=services.credential_id(ended[1])),
            RECHECK,
        ]
    )


def test_the_success_notice_says_how_many_sessions_ended():
    user = UserFactory()
    client = signed_in(user)
    signed_in(user)

    page = client.post(
        "/account/password/",
        {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW},
        follow=True,
    )

    notice = "Your password was changed. Signed out 1 other session."
    assert notice in page.content.decode()
    assert 'role="status"' in page.content.decode()


def test_the_new_password_signs_in_and_the_old_does_not():
    user = UserFactory()
    change(signed_in(user))
    assert Client().login(username=user.username, password=NEW)
    assert not Client().login(username=user.username, password=PASSWORD)


def test_other_paths_still_close_everything_and_revoke_the_token(listen):
    """Only the account page keeps the token and its own session: a change
    in the shell or the admin (a reset) ends everything, as before."""
    user = UserFactory()
    Token.objects.create(user=user)
    channel = listen(services.user_group(user.pk))
    user.set_password(NEW)
    user.save()
    assert not Token.objects.filter(user=user).exists()
    assert revoked() in events(channel)


def test_the_service_alone_ends_other_sessions_of_that_user_only():
    user, grace = UserFactory(), UserFactory(username="grace")
    this, other, graces = signed_in(user), signed_in(user), signed_in(grace)
    session = Session.objects.get(session_key=key_of(this))
    store = session.get_decoded()
    from django.contrib.sessions.backends.db import SessionStore

    keep = SessionStore(session_key=session.session_key)
    keep.update(store)
    lazy = SimpleLazyObject(lambda: user)  # as request.user is
    ended = services.change_password(user=lazy, new_password=NEW, keep_session=keep)

    assert ended == 1
    # The mark that spares this change is gone: a later save of the same
    # object (a reset in the same process) closes everything again.
    assert not hasattr(user, services.KEEPS_SESSION_ATTR)
    assert set(Session.objects.values_list("session_key", flat=True)) == {
        key_of(this),
        key_of(graces),
    }
    assert key_of(other) != key_of(this)


# --- sockets ---------------------------------------------------------------------


def cookie_of(client: Client) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={key_of(client)}".encode())]


async def test_a_change_closes_the_other_sessions_sockets_only(lobby):
    user = await sync_to_async(UserFactory)(username="ada")
    client = await sync_to_async(signed_in)(user)
    other = await sync_to_async(signed_in)(user)
    key = await sync_to_async(lambda: Token.objects.create(user=user).key)()

    async with (
        connected("lobby", headers=cookie_of(client)) as own_ws,
        connected("lobby", headers=cookie_of(other)) as other_ws,
        connected("lobby", token=key) as token_ws,
    ):
        response = await sync_to_async(change)(client)
        assert response.status_code == 302

        await closed_with_4403(other_ws)
        await still_open(own_ws)
        await still_open(token_ws)


# --- the API token ----------------------------------------------------------------


def test_no_token_says_so():
    html = signed_in(UserFactory()).get("/account/").content.decode()
    assert 'id="no-token"' in html
    assert "Revoke token" not in html


def test_the_token_is_shown_by_its_last_four_characters_only():
    user = UserFactory()
    token = Token.objects.create(user=user)
    html = signed_in(user).get("/account/").content.decode()
    assert token.key not in html
    assert token.key[:-4] not in html
    assert f'<code class="token-tail">{token.key[-4:]}</code>' in html
    assert token.created.strftime("%Y-%m-%d") in html  # <time datetime=…>
    assert "Revoke token" in html


def test_revoking_deletes_the_token_and_closes_its_sockets(listen):
    user = UserFactory()
    client = signed_in(user)
    token = Token.objects.create(user=user)
    channel = listen(services.user_group(user.pk))

    response = client.post("/account/token/revoke/", follow=True)

    assert response.status_code == 200
    assert "Your API token was revoked." in response.content.decode()
    assert 'id="no-token"' in response.content.decode()
    assert not Token.objects.filter(user=user).exists()
    assert events(channel) == [revoked(credential=services.credential_id(token.key))]
    # The browser's own session is untouched.
    assert client.get("/account/").status_code == 200


def test_revoking_without_a_token_is_harmless():
    client = signed_in(UserFactory())
    response = client.post("/account/token/revoke/")
    assert response.status_code == 302
