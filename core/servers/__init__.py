"""Everything that reaches into a server's or library's internals.

ASGI leaves a Channels application no way to see a slow reader, to write a
frame once for many sockets, or to fix a server's shutdown, so a few
modules here use private attributes of Daphne, autobahn, Twisted, uvicorn,
websockets and Channels:

- ``daphne``: five fixes to Daphne and autobahn (shutdown, memory per
  socket, close reasons, closed sockets left for the collector, the close
  grace);
- ``uvicorn``: uvicorn's shutdown close names the reconnect window;
- ``backpressure``: a connection's write buffer, and frames written to it
  directly (Daphne's Twisted transport, uvicorn's websockets-sansio);
- ``dispatch``: Channels' ``dispatch`` without its thread hop per event.

Each works only on the exact versions it was verified against
(``VERIFIED``, below). On any other version it switches itself off, the
app falls back to the public, slower path, and one line is logged; a unit
test (tests/unit/test_servers.py) fails when ``requirements.txt`` pins a
version that is not listed, so an upgrade is a deliberate act: run the
integration tier on the new version, then add it here. docs/architecture.md
lists the upstream issue each one stands in for.
"""

import functools
import logging
from importlib import metadata

logger = logging.getLogger(__name__)

# The versions the whole suite (integration tier included) has passed on.
VERIFIED: dict[str, frozenset[str]] = {
    "daphne": frozenset({"4.2.3"}),
    "autobahn": frozenset({"26.10.2", "26.11.1"}),
    "twisted": frozenset({"26.10.0"}),
    "uvicorn": frozenset({"0.55.0"}),
    "websockets": frozenset({"17.4"}),
    "channels": frozenset({"4.3.2"}),
}


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def verified(adapter: str, *distributions: str) -> bool:
    """True if every distribution is installed at a verified version.

    Otherwise ``adapter`` is off for this process, and one line says why.
    """
    unverified = [
        f"{name} {installed(name) or '(missing)'}"
        for name in distributions
        if installed(name) not in VERIFIED[name]
    ]
    if unverified:
        logger.warning(
            "%s is off: verified only on %s, not on %s; using the public path",
            adapter,
            ", ".join(
                f"{name} {'/'.join(sorted(VERIFIED[name]))}" for name in distributions
            ),
            ", ".join(unverified),
        )
    return not unverified
