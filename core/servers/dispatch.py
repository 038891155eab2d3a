"""Channels' ``AsyncConsumer`` run loop and ``dispatch``, without a task and
a thread hop per event.

Channels runs ``close_old_connections`` on the database thread before every
handler: a hop per frame received. Every database call of Switchboard's
consumers goes through ``core.db``, which does the same before and after
the call, so the extra hop only costs (docs/performance.md). This is
Channels' own ``dispatch`` minus that line, used only on the versions of
Channels it was verified against (``core.servers``); on others, Channels'
own runs. Upstream: no issue yet (to file at django/channels: "let a
consumer opt out of aclose_old_connections in dispatch when it manages
database connections itself").

Channels' ``AsyncConsumer.__call__`` hands its receive callables to
``await_many_dispatch``, which runs each ``receive()`` as a task of its own
and waits on them with ``asyncio.wait``: a task, a set and a future for
every event, and, for as long as an idle connection lives, a pending task,
a waiting ``asyncio.wait`` and the finished task of the last event (about
1.5 KiB a connection). A consumer with no channel layer has one callable:
``run`` awaits it in the consumer's own task instead.
"""

from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer

from core.servers import verified


def fast_dispatch_verified() -> bool:
    """True if this Channels is one the fork was verified against."""
    return verified("The dispatch fork (core.servers.dispatch)", "channels")


async def dispatch(consumer: AsyncConsumer, message: dict[str, Any]) -> None:
    """Call ``consumer``'s handler for ``message``, as Channels does."""
    handler = getattr(consumer, get_handler_name(message), None)
    if handler is None:
        raise ValueError(f"No handler for message type {message['type']}")
    await handler(message)


async def run(consumer: AsyncConsumer, scope: Any, receive: Any, send: Any) -> None:
    """``AsyncConsumer.__call__`` for an asynchronous consumer whose class
    has no channel layer (``channel_layer = None``): receive and dispatch,
    one event at a time, until it stops."""
    consumer.scope = scope
    consumer.base_send = send
    try:
        while True:
            await consumer.dispatch(await receive())
    except StopConsumer:
        pass
