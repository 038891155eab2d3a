"""The check the PostgreSQL pool runs on a connection before handing it out.

Django's health check (``CONN_HEALTH_CHECKS`` with a pool) is psycopg_pool's
``check_connection``: an empty query, a round trip on every checkout, which
is about a tenth of a handshake's server time (docs/performance.md). A
connection that the server ended (a restart, a failover, an idle timeout,
``pg_terminate_backend``) has had its goodbye and the end of the stream
delivered to our socket; one that nothing happened to has nothing to read.
So the round trip is made only when the socket has something to read, as
redis-py's check of a pooled connection does. A peer that vanished without a
word still goes unnoticed until the query, as it would with the round trip,
which has no timeout of its own.

Imported by the settings: no Django here.
"""

import select

from psycopg import Connection
from psycopg_pool import ConnectionPool

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def check_connection(conn: Connection) -> None:
    """Return if ``conn`` is usable; raise (the pool replaces it) if not."""
    # poll, not select: a busy process has descriptors past select's 1024.
    poller = select.poll()
    poller.register(conn.fileno(), _READABLE)  # raises once conn is closed
    if poller.poll(0):
        ConnectionPool.check_connection(conn)
