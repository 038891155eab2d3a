"""Full-text search of message bodies: a GIN index, on PostgreSQL only.

SQLite has no GIN index and no ``to_tsvector`` (core.services searches it in
Python), so the index is created by hand where the database is PostgreSQL,
and is not in the models' state: a SQLite table rebuild by a later migration
would try to create it. Its expression must stay exactly
``core.services.search_vector()``, or PostgreSQL will not use it
(tests/unit/test_search.py compares the two; the integration tier checks the
plan). Partial: edits, deletions and deleted messages are never searched.

Built ``CONCURRENTLY`` (so the migration is not atomic): a large messages
table keeps taking posts while it builds. A build that failed half-way
leaves an invalid index behind, which a new run drops first.
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import migrations
from django.db.models import Q

INDEX = GinIndex(
    SearchVector("body", config="simple"),
    name="message_body_search",
    condition=Q(kind="message", deleted=False),
)


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    message = apps.get_model("core", "Message")
    schema_editor.remove_index(message, INDEX, concurrently=True)  # IF EXISTS
    schema_editor.add_index(message, INDEX, concurrently=True)


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    message = apps.get_model("core", "Message")
    schema_editor.remove_index(message, INDEX, concurrently=True)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("core", "0003_message_changes"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
