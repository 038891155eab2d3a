"""A work-around for Daphne 4.2.3's shutdown bug, applied only under Daphne.

On SIGTERM Daphne cancels every application in
``Server.kill_all_applications``. It reads ``details["application_instance"]``
for every connection, but an HTTP connection that has not started its
application yet (an idle keep-alive, or a WebSocket upgraded within the last
second) has none: the ``KeyError`` aborts the loop, no consumer is cancelled,
and every client sees 1006 instead of 4012 (see
tests/integration/test_failover.py). This replaces the method with the same
code using ``.get()``. Remove it once Daphne ships the fix.
"""

import asyncio
import sys
from typing import Any

_MARK = "_switchboard_fixed"


def apply() -> None:
    """Patch ``daphne.server.Server`` if Daphne is what is serving us."""
    module = sys.modules.get("daphne.server")  # never import it: it installs a reactor
    if module is None or getattr(module.Server.kill_all_applications, _MARK, False):
        return

    def kill_all_applications(self: Any) -> Any:
        wait_for = []
        for details in self.connections.values():
            instance = details.get("application_instance")
            if instance is not None and not instance.done():
                instance.cancel()
                wait_for.append(instance)
        module.logger.info("Killed %i pending application instances", len(wait_for))
        waiting = module.defer.Deferred.fromFuture(asyncio.gather(*wait_for))
        waiting.addErrback(lambda failure: None)
        return waiting

    setattr(kill_all_applications, _MARK, True)
    module.Server.kill_all_applications = kill_all_applications
