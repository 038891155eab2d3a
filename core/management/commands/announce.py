"""``manage.py announce <room> <text>``: post a system message."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import protocol, services
from core.models import Room


class Command(BaseCommand):
    help = "Post a system message (no author) to a room, on every instance."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room", help="the room's slug")
        parser.add_argument("text", help="the message body")

    def handle(self, *args: Any, room: str, text: str, **options: Any) -> None:
        found = Room.objects.filter(slug=room).first()
        if found is None:
            raise CommandError(f"No room with slug {room!r}.")
        try:
            result = services.post_message_sync(room=found, author=None, body=text)
        except protocol.ProtocolError as exc:
            raise CommandError(f"Invalid text: {exc.detail}") from None
        self.stdout.write(f"Posted to {room} as seq {result.message['seq']}.")
