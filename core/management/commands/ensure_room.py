"""``manage.py ensure_room <slug> --name <name>``: create a public room once."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import services
from core.models import Room, slug_validator


class Command(BaseCommand):
    help = "Create a public room if it does not exist yet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", help="display name (default: the slug)")

    def handle(self, *args: Any, slug: str, name: str | None, **options: Any) -> None:
        try:
            slug_validator(slug)
        except ValidationError as exc:
            raise CommandError(f"Invalid slug {slug!r}: {exc.messages[0]}") from None
        # SQLite stores an overlong name; PostgreSQL fails with a traceback.
        max_length = Room._meta.get_field("name").max_length
        if name is not None and len(name) > max_length:  # type: ignore[operator]  # a CharField: set
            raise CommandError(f"The name is over {max_length} characters.")
        room, created = services.ensure_room(slug=slug, name=name or slug)
        self.stdout.write(f"Room {room.slug} {'created' if created else 'exists'}.")
