"""Django's PostgreSQL backend, its pool checked by ``backend.dbpool``."""
