"""A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

import time
from collections.abc import Callable


class TokenBucket:
    """Per-connection rate limit; pure and clock-injectable for tests."""

    # Two per connection: slots keep them small (docs/performance.md).
    __slots__ = ("burst", "clock", "rate", "tokens", "updated")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> float:
        """Take a token; return 0.0, or the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
