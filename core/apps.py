from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Rooms, messages and the real-time protocol."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for their side effects: signal receivers and system checks.
        from core import checks, db, signals  # noqa: F401
