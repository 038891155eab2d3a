"""Django's PostgreSQL backend with a cheaper check on pooled connections.

Django hands its pool psycopg_pool's own check (a round trip) when
``CONN_HEALTH_CHECKS`` is on, and none when it is off; it passes ``check``
itself, so the pool options cannot name another. The settings turn Django's
off and this backend gives the pool ``backend.dbpool.check_connection``.
"""

from typing import Any

from django.db.backends.postgresql import base

from backend.dbpool import check_connection


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool
        if pool is not None and pool._check is not check_connection:
            # psycopg_pool keeps its check here and offers no setter; a
            # later psycopg_pool without it fails tests/unit/test_settings.py.
            pool._check = check_connection
        return pool
