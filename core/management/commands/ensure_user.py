"""``manage.py ensure_user <username>... [--staff]``: create accounts once.

The password comes from ``ENSURE_USER_PASSWORD``, never the command line
(which other users of the machine can read in the process list).
"""

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core import services

PASSWORD_VARIABLE = "ENSURE_USER_PASSWORD"  # noqa: S105 (a variable's name)


class Command(BaseCommand):
    help = f"Create users that do not exist, with the password in ${PASSWORD_VARIABLE}."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("usernames", nargs="+", metavar="username")
        parser.add_argument(
            "--staff", action="store_true", help="make them staff (admin site)"
        )

    def handle(
        self, *args: Any, usernames: list[str], staff: bool, **options: Any
    ) -> None:
        password = os.environ.get(PASSWORD_VARIABLE, "")
        if not password:
            raise CommandError(f"Set {PASSWORD_VARIABLE} to the password to give them.")
        field = get_user_model()._meta.get_field("username")
        for username in usernames:
            try:
                field.clean(username, None)
            except ValidationError as exc:
                raise CommandError(
                    f"Invalid username {username!r}: {exc.messages[0]}"
                ) from None
        for username in usernames:
            _, created = services.ensure_user(
                username=username, password=password, is_staff=staff
            )
            self.stdout.write(f"User {username} {'created' if created else 'exists'}.")
