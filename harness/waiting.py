"""Polling with a deadline, instead of sleeps standing in for synchronisation."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions of the types in ``ignore`` count as "not yet"; any other
    exception propagates at once.  Raises ``TimeoutError`` naming ``message``
    and the last result or exception seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{message}: not within {timeout:g} s; last saw {last!r}"
            )
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    # A deadline for polling, which asyncio.timeout() cannot express: on
    # expiry this names what it last saw instead of cancelling blindly.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Like ``wait_until``, on the event loop; ``predicate`` may be async."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
            if inspect.isawaitable(last):
                last = await last
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{message}: not within {timeout:g} s; last saw {last!r}"
            )
        await asyncio.sleep(interval)
