"""factory_boy factories for the unit tier."""

import factory
from django.contrib.auth import get_user_model

from core.models import Membership, Room

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password(PASSWORD)


class RoomFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Room

    slug = factory.Sequence(lambda n: f"room-{n}")
    name = factory.LazyAttribute(lambda room: room.slug.title())
    is_private = False


def private_room(owner: object, *members: object, slug: str = "secret") -> Room:
    """A private room owned by ``owner`` with ``members`` admitted."""
    room = RoomFactory(slug=slug, is_private=True, owner=owner)
    for user in (owner, *members):
        Membership.objects.create(room=room, user=user)
    return room
