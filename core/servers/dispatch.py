"""Channels' ``AsyncConsumer.dispatch`` without its thread hop per event.

Channels runs ``close_old_connections`` on the database thread before every
handler: a hop per frame received. Every database call of Switchboard's
consumers goes through ``core.db``, which does the same before and after
the call, so the extra hop only costs (docs/performance.md). This is
Channels' own ``dispatch`` minus that line, used only on the versions of
Channels it was verified against (``core.servers``); on others, Channels'
own runs. Upstream: no issue yet (to file at django/channels: "let a
consumer opt out of aclose_old_connections in dispatch when it manages
database connections itself").
"""

from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name

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
