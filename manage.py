#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def _load_settings() -> None:
    from django.conf import settings

    from backend.env import BUILD_TIME_COMMANDS, require_runtime_settings

    settings.INSTALLED_APPS  # noqa: B018 - imports settings, raising on bad values
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    if command not in BUILD_TIME_COMMANDS:
        require_runtime_settings()


def main() -> None:
    """Run administrative tasks."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    from django.core.management import execute_from_command_line

    from backend.env import exit_on_bad_configuration

    exit_on_bad_configuration(_load_settings)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
