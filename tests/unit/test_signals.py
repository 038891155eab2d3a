"""core.signals: every path that removes access publishes, after the commit.

Each test removes access one way (the shell, a queryset, a cascade, the
admin, a page) and reads what reached the user's or the room's channel-layer
group, round-tripped through JSON as Redis would carry it. Transactions are
real (``transaction=True``), so ``on_commit`` fires when Django's would.
"""

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core import services
from core.models import Membership, Room
from tests.factories import PASSWORD, RoomFactory, UserFactory, private_room
from tests.unit.conftest import next_event

pytestmark = pytest.mark.django_db(transaction=True)

RECHECK = {"type": "access.recheck"}


class FewRoundsHasher(PBKDF2PasswordHasher):
    """PBKDF2 cheap enough for tests; a later setting raises its rounds."""

    iterations = 2


class MoreRoundsHasher(PBKDF2PasswordHasher):
    iterations = 3


def revoked(room: str | None = None, credential: str | None = None) -> dict:
    return {"type": "access.revoked", "room": room, "credential": credential}


def events(channel: str) -> list[dict]:
    """Every event ``channel`` has received, minus routing extras."""
    seen = []
    while True:
        try:
            event = next_event(channel, timeout=0.1)
        except TimeoutError:
            return seen
        event.pop("group", None)
        seen.append(event)


def unordered(seen: list[dict]) -> list[dict]:
    return sorted(seen, key=lambda event: json.dumps(event, sort_keys=True))


def token_credential(user: object) -> str:
    return services.credential_id(Token.objects.create(user=user).key)


def signed_in_session(user: object) -> str:
    """A session row signed in as ``user``, as a login page makes one."""
    client = Client()
    client.force_login(user)
    return client.session.session_key


def admin_client() -> Client:
    client = Client()
    client.force_login(
        get_user_model().objects.create_superuser("admin", password=PASSWORD)
    )
    return client


# --- memberships ---------------------------------------------------------------


def test_a_membership_deleted_in_the_shell_closes_that_room_only(listen):
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))

    Membership.objects.get(room=room, user=member).delete()

    assert events(channel) == [revoked(room=room.slug)]


def test_a_queryset_delete_sends_each_membership_its_own_revocation(listen):
    """Django collects the rows and signals each one once a receiver exists."""
    owner, ann, bob = UserFactory(), UserFactory(), UserFactory()
    room = private_room(owner, ann, bob)
    channels = [listen(services.user_group(user.pk)) for user in (ann, bob)]

    Membership.objects.filter(room=room).exclude(user=owner).delete()

    assert [events(channel) for channel in channels] == [
        [revoked(room=room.slug)],
        [revoked(room=room.slug)],
    ]


def test_removing_a_member_through_the_rooms_members_closes_them(listen):
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))

    room.members.remove(member)

    assert events(channel) == [revoked(room=room.slug)]


def test_remove_member_publishes_one_revocation(listen):
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))

    services.remove_member(room=room, actor=owner, username=member.username)

    # One revocation, then the announcement of the change (rooms.changed).
    assert events(channel) == [revoked(room=room.slug), {"type": "rooms.changed"}]


def test_a_revocation_waits_for_the_commit_and_a_rollback_sends_none(listen):
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    channel = listen(services.user_group(member.pk))

    def delete_then_fail() -> None:
        with transaction.atomic():
            Membership.objects.filter(room=room, user=member).delete()
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        delete_then_fail()
    assert events(channel) == []

    with transaction.atomic():
        Membership.objects.filter(room=room, user=member).delete()
        assert events(channel) == []  # not committed yet
    assert events(channel) == [revoked(room=room.slug)]


# --- users -----------------------------------------------------------------------


def test_a_deleted_user_has_every_connection_closed_by_one_event(listen):
    """The cascaded token and memberships add nothing: one event covers all."""
    owner, member = UserFactory(), UserFactory()
    private_room(owner, member, slug="one")
    private_room(owner, member, slug="two")
    token_credential(member)
    channel = listen(services.user_group(member.pk))

    member.delete()

    assert events(channel) == [revoked()]


def test_users_deleted_by_a_queryset_are_each_closed(listen):
    ann, bob = UserFactory(), UserFactory()
    channels = [listen(services.user_group(user.pk)) for user in (ann, bob)]

    get_user_model().objects.filter(pk__in=[ann.pk, bob.pk]).delete()

    assert [events(channel) for channel in channels] == [[revoked()], [revoked()]]


def test_a_user_deleted_in_the_admin_is_closed(listen):
    user = UserFactory()
    channel = listen(services.user_group(user.pk))

    response = admin_client().post(
        reverse("admin:auth_user_delete", args=[user.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert events(channel) == [revoked()]


def test_a_deactivated_user_is_closed_and_loses_their_token(listen):
    user = UserFactory()
    credential = token_credential(user)
    channel = listen(services.user_group(user.pk))

    user.is_active = False
    user.save()

    assert not Token.objects.filter(user=user).exists()
    assert unordered(events(channel)) == unordered(
        [revoked(), revoked(credential=credential)]  # and the token's deletion
    )


def test_a_new_password_closes_every_connection(listen):
    user = UserFactory()
    channel = listen(services.user_group(user.pk))

    user.set_password("a-new-password-entirely")
    user.save()

    assert events(channel) == [revoked()]


def test_an_unusable_password_closes_every_connection(listen):
    user = UserFactory()
    channel = listen(services.user_group(user.pk))

    user.set_unusable_password()
    user.save(update_fields=["password"])

    assert events(channel) == [revoked()]


def test_a_hash_written_by_hand_is_a_new_password_even_if_the_old_was_outdated(
    listen, settings
):
    """Only Django's own upgrade (set_password, then its raw password dropped)
    passes for an upgrade; a hash assigned directly is a change."""
    user = UserFactory()  # MD5, outdated once PBKDF2 is preferred
    settings.PASSWORD_HASHERS = [
        "tests.unit.test_signals.FewRoundsHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    channel = listen(services.user_group(user.pk))

    user.password = make_password("chosen-in-the-shell")
    user.save(update_fields=["password"])

    assert events(channel) == [revoked()]


def test_a_hash_written_by_hand_after_a_password_change_is_a_change_too(
    listen, settings
):
    """The object set_password left behind looks like an upgrade's; the
    hashes tell them apart (the stored one is current, nothing to upgrade)."""
    settings.PASSWORD_HASHERS = ["tests.unit.test_signals.FewRoundsHasher"]
    user = UserFactory()
    channel = listen(services.user_group(user.pk))
    user.set_password("first-change")
    user.save()
    assert events(channel) == [revoked()]

    user.password = make_password("second-change-by-hand")
    user.save(update_fields=["password"])

    assert events(channel) == [revoked()]


def test_the_revocation_is_published_after_the_new_password_is_written(
    monkeypatch,
):
    """Outside a transaction on_commit runs at once: publishing from pre_save
    would let a reconnect in before the row changed."""
    user = UserFactory()
    seen = []
    monkeypatch.setattr(
        services,
        "revoke_access",
        lambda **kwargs: seen.append(
            get_user_model().objects.get(pk=user.pk).check_password("brand-new")
        ),
    )

    user.set_password("brand-new")
    user.save()

    assert seen == [True]


def test_saves_that_remove_nothing_publish_nothing(listen):
    user = UserFactory(is_active=False)
    channel = listen(services.user_group(user.pk))

    user.is_active = True  # reactivated
    user.save()
    user.first_name = "Ada"
    user.save()
    assert Client().login(username=user.username, password=PASSWORD)  # last_login

    assert events(channel) == []


# --- password-hash upgrades ------------------------------------------------------


def test_a_login_that_upgrades_the_hasher_closes_nothing(listen, settings):
    user = UserFactory()
    old_hash = get_user_model().objects.get(pk=user.pk).password
    assert old_hash.startswith("md5$")
    Token.objects.create(user=user)
    settings.PASSWORD_HASHERS = [
        "tests.unit.test_signals.FewRoundsHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    channel = listen(services.user_group(user.pk))

    assert Client().login(username=user.username, password=PASSWORD)

    assert (
        get_user_model().objects.get(pk=user.pk).password.startswith("pbkdf2_sha256$2$")
    )
    assert Token.objects.filter(user=user).exists()
    assert events(channel) == []


def test_a_login_that_raises_the_iterations_closes_nothing(listen, settings):
    settings.PASSWORD_HASHERS = ["tests.unit.test_signals.FewRoundsHasher"]
    user = UserFactory()
    Token.objects.create(user=user)
    settings.PASSWORD_HASHERS = ["tests.unit.test_signals.MoreRoundsHasher"]
    channel = listen(services.user_group(user.pk))

    assert Client().login(username=user.username, password=PASSWORD)

    assert (
        get_user_model().objects.get(pk=user.pk).password.startswith("pbkdf2_sha256$3$")
    )
    assert Token.objects.filter(user=user).exists()
    assert events(channel) == []


# --- tokens ----------------------------------------------------------------------


def test_a_token_deleted_in_the_shell_closes_what_it_signed_in(listen):
    user = UserFactory()
    token = Token.objects.create(user=user)
    credential = services.credential_id(token.key)
    channel = listen(services.user_group(user.pk))

    token.delete()

    assert events(channel) == [revoked(credential=credential)]


def test_tokens_deleted_by_a_queryset_are_each_revoked(listen):
    ann, bob = UserFactory(), UserFactory()
    credentials = [token_credential(user) for user in (ann, bob)]
    channels = [listen(services.user_group(user.pk)) for user in (ann, bob)]

    Token.objects.all().delete()

    assert [events(channel) for channel in channels] == [
        [revoked(credential=credentials[0])],
        [revoked(credential=credentials[1])],
    ]


def test_a_token_deleted_in_the_admin_is_revoked(listen):
    """The admin deletes core's ApiToken, a DRF TokenProxy (which deletes
    through Token)."""
    user = UserFactory()
    credential = token_credential(user)
    channel = listen(services.user_group(user.pk))

    response = admin_client().post(
        reverse("admin:core_apitoken_delete", args=[user.pk]),
        {"post": "yes"},
    )

    assert response.status_code == 302
    assert not Token.objects.filter(user=user).exists()
    assert events(channel) == [revoked(credential=credential)]


# --- sessions --------------------------------------------------------------------


def test_logging_out_closes_that_sessions_connections_once(listen):
    user = UserFactory()
    client = Client()
    client.force_login(user)
    credential = services.credential_id(client.session.session_key)
    channel = listen(services.user_group(user.pk))

    assert client.post(reverse("logout")).status_code == 302

    assert events(channel) == [revoked(credential=credential)]


def test_logging_out_of_a_session_kept_in_the_cache_still_closes_it(listen, settings):
    """Cache sessions have no row to delete; the logout signal covers them."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    user = UserFactory()
    client = Client()
    client.force_login(user)
    credential = services.credential_id(client.session.session_key)
    channel = listen(services.user_group(user.pk))

    client.post(reverse("logout"))

    assert events(channel) == [revoked(credential=credential)]


def test_sessions_deleted_by_a_queryset_are_each_revoked(listen):
    user = UserFactory()
    keys = [signed_in_session(user), signed_in_session(user)]
    channel = listen(services.user_group(user.pk))

    Session.objects.filter(session_key__in=keys).delete()

    assert unordered(events(channel)) == unordered(
        [revoked(credential=services.credential_id(key)) for key in keys]
    )


def test_clearsessions_revokes_expired_signed_in_sessions_only(listen):
    user = UserFactory()
    expired, current = signed_in_session(user), signed_in_session(user)
    anonymous = SessionStore()
    anonymous["seen"] = True
    anonymous.create()
    past = timezone.now() - timedelta(days=1)
    Session.objects.filter(session_key__in=[expired, anonymous.session_key]).update(
        expire_date=past
    )
    channel = listen(services.user_group(user.pk))

    call_command("clearsessions")

    assert not Session.objects.filter(session_key=anonymous.session_key).exists()
    assert Session.objects.filter(session_key=current).exists()
    assert events(channel) == [revoked(credential=services.credential_id(expired))]


# --- rooms -----------------------------------------------------------------------


def test_a_deleted_room_has_its_connections_recheck(listen):
    """One re-check for the room; its cascaded memberships add nothing."""
    owner, member = UserFactory(), UserFactory()
    room = private_room(owner, member)
    room_channel = listen(services.room_group(room.pk))
    member_channel = listen(services.user_group(member.pk))

    room.delete()

    assert events(room_channel) == [RECHECK]
    assert events(member_channel) == []


def test_rooms_deleted_by_a_queryset_each_recheck(listen):
    rooms = [RoomFactory(), RoomFactory()]
    channels = [listen(services.room_group(room.pk)) for room in rooms]

    Room.objects.all().delete()

    assert [events(channel) for channel in channels] == [[RECHECK], [RECHECK]]


def test_a_room_made_private_has_its_connections_recheck_after_the_write(
    listen, monkeypatch
):
    room = RoomFactory()
    channel = listen(services.room_group(room.pk))
    recheck = services.recheck_access
    privacy_seen = []

    def recheck_and_look(**kwargs: int) -> None:
        privacy_seen.append(Room.objects.get(pk=room.pk).is_private)
        recheck(**kwargs)

    monkeypatch.setattr(services, "recheck_access", recheck_and_look)

    room.is_private = True
    room.save()

    assert events(channel) == [RECHECK]
    assert privacy_seen == [True]  # published once the row said so


@pytest.mark.parametrize(
    ("was_private", "change"),
    [
        (False, {"name": "Renamed"}),
        (True, {"name": "Renamed"}),
        (True, {"is_private": False}),
    ],
    ids=["public-renamed", "private-renamed", "made-public"],
)
def test_room_saves_that_remove_no_access_publish_nothing(listen, was_private, change):
    room = RoomFactory(is_private=was_private)
    channel = listen(services.room_group(room.pk))

    for name, value in change.items():
        setattr(room, name, value)
    room.save()

    assert events(channel) == []
