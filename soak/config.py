"""What the soak runs, and the limits that fail it.

docs/reliability.md explains each number. Everything here is sized so that
two Daphne instances, Redis, PostgreSQL and the soak's own clients share a
2-core machine without any of them being the bottleneck: the soak looks for
leaks and lost messages, not for the throughput ceiling (docs/performance.md).
"""

from __future__ import annotations

DEFAULT_MINUTES = 10.0
DEFAULT_SEED = 1
INSTANCES = 2

# --- who and where -----------------------------------------------------------
USERS = 40  # soak-u00 .. soak-u39, token auth
ROOMS = 30  # soak-r00 .. soak-r29, public
CLIENTS_PER_ROOM = 3  # one of them sends
ROOM_SEND_SECONDS = 5.0  # mean interval between one sender's messages
HOT_ROOM = "soak-hot"
HOT_CLIENTS = 40  # one per user
HOT_SENDERS = 10
HOT_SEND_SECONDS = 2.5
PRIVATE_ROOM = "soak-private"
PRIVATE_MEMBERS = 6  # soak-u00 (the owner) .. soak-u05
PRIVATE_SENDERS = 3  # the owner and two members (who are removed in turn too)
PRIVATE_SEND_SECONDS = 4.0
ANONYMOUS_READERS = 6  # read-only clients in public rooms

# --- what each client does ----------------------------------------------------
SEND_WINDOW = 3  # unacknowledged sends a client keeps at most
TYPING_FRACTION = 0.5  # sends preceded by a typing notice
SESSION_SECONDS = (5.0, 30.0)  # a connection lives this long, then churns
ABORT_FRACTION = 0.15  # churns that drop TCP without a close (a lost link)
FRESH_TAB_FRACTION = 0.05  # churns that forget everything and resume from 0
PAGING_SECONDS = (20.0, 60.0)  # readers scroll back this often
PAGING_PAGES = 3
PAGE_LIMIT = 50
PING_SECONDS = 20.0  # a ping this often; nothing received in 2 of them: dead
GAP_WAIT_SECONDS = 2.0  # docs/protocol.md 9.3, step 2
GAP_POLL_SECONDS = 0.5
HISTORY_TIMEOUT_SECONDS = 15.0  # a history request unanswered this long
OPEN_TIMEOUT_SECONDS = 10.0
BACKOFF_BASE_SECONDS = 0.5  # docs/protocol.md section 8: full jitter
BACKOFF_CAP_SECONDS = 10.0
BODY_WORDS = (
    "deploy", "rollback", "ok", "lunch?", "ship it", "pager", "👍", "naïve",
    "Grüße", "日本語", "on call", "p99", "LGTM", "redis", "again",
)  # fmt: skip

# --- events --------------------------------------------------------------------
REDIS_RESTART_AT = 0.4  # of the traffic time: the memory fit starts after it
REDIS_DOWN_SECONDS = 3.0  # how long Redis stays down (the fault, not a wait)
# The report attributes what happens from the stop until this long after the
# start to the outage (it does not excuse it: every criterion still counts).
OUTAGE_GRACE_SECONDS = 10.0
REMOVAL_FIRST_SECONDS = 30.0  # at most; 20 % of a shorter run
REMOVAL_INTERVAL_SECONDS = 60.0
REMOVAL_JITTER_SECONDS = 10.0
REMOVAL_QUIET_TAIL_SECONDS = 25.0  # no removal starts this close to the end
REMOVED_SECONDS = (2.0, 5.0)  # how long the member stays removed
# A removed member's connections must close with 4403 within this: the
# periodic access check (ACCESS_RECHECK_SECONDS, 30 s) plus a margin, so a
# revocation lost in a Redis outage is still caught by the check.
REVOKE_DEADLINE_SECONDS = 35.0

# --- measuring -------------------------------------------------------------------
SAMPLE_SECONDS = 2.0
WARMUP_SECONDS = 10.0  # samples before this are not used as a baseline
DRAIN_DEADLINE_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 15.0

# --- limits for people, raised (nothing else) -----------------------------------
# 40 users and one client address stand in for many people: the per-user
# send and history budgets and the per-address handshake rate would
# otherwise throttle the load by design. Connection counts per user and per
# address, admission control, output budgets and the rest stay at their
# defaults (a client here holds at most 5 connections, far below 20).
SOAK_LIMITS = {
    "SWITCHBOARD_SEND_RATE_PER_SECOND": "1000",
    "SWITCHBOARD_SEND_BURST": "1000",
    "SWITCHBOARD_HISTORY_RATE_PER_SECOND": "1000",
    "SWITCHBOARD_HISTORY_BURST": "1000",
    "SWITCHBOARD_HANDSHAKE_RATE_PER_ADDRESS": "1000",
    "SWITCHBOARD_HANDSHAKE_BURST_PER_ADDRESS": "10000",
}

# --- fail criteria (docs/reliability.md, "Fail criteria") -------------------------
# RSS growth over the last half of the run, per instance, least-squares fit.
MEMORY_SLOPE_MIB_PER_MIN_MAX = 1.0
# A last half shorter than this gives a slope dominated by noise and warm-up:
# the verdict still applies, and the report says the figure is inconclusive.
MEMORY_CONCLUSIVE_SECONDS = 240.0
# Descriptors that are not client sockets (pools, files, pipes): at the end,
# at most this many above the highest seen in the first half.
FD_SLACK = 8
# Server-side client sockets left over at the end (not matched by an open
# client connection, e.g. CLOSE_WAIT): at most this many per instance.
STALE_SOCKETS_MAX = 2
# Redis clients at the end: at most this many above the highest seen before
# the restart (the instances reconnect; they must not pile up).
REDIS_CLIENT_SLACK = 4
DB_POOL_SIZE = 8  # SWITCHBOARD_DB_POOL_SIZE's default: the bound per process
