"""Django settings for Switchboard, read once from the environment.

Every variable is described in README.md ("Configuration"). A bad value raises
``ImproperlyConfigured`` with one line naming the variable. Settings import with
no variables at all, because App Platform's build runs ``collectstatic`` with
none of the runtime variables set; the missing secret key is reported when the
app is served or ``manage.py`` runs a command that needs it.
"""

from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # redis-py before 7: no maintenance notifications
    # The stubs are redis-py 8's, where the class always exists.
    MaintNotificationsConfig = None  # type: ignore[misc,assignment]

from backend.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_origins,
    env_pem_file,
    env_pem_or_path,
    env_str,
    env_url,
    env_urls,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-switchboard-development-only-key-0123456789"  # noqa: S105
SECRET_KEY = env_str("DJANGO_SECRET_KEY") or (_DEV_SECRET_KEY if DEBUG else "")
# Checked by backend.env.require_runtime_settings() when serving.
SWITCHBOARD_SECRET_KEY_MISSING = not SECRET_KEY

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

HTTPS = env_bool("DJANGO_HTTPS", default=False)


def _origins_for_hosts(hosts: list[str], https: bool) -> list[str]:
    """CSRF trusted origins for the allowed hosts (``.x`` means subdomains)."""
    schemes = ["https"] if https else ["https", "http"]
    origins = []
    for host in hosts:
        if host == "*":
            continue
        pattern = f"*{host}" if host.startswith(".") else host
        origins += [f"{scheme}://{pattern}" for scheme in schemes]
    return origins


CSRF_TRUSTED_ORIGINS = env_origins(
    "DJANGO_CSRF_TRUSTED_ORIGINS", _origins_for_hosts(ALLOWED_HOSTS, HTTPS)
)

if HTTPS:
    # App Platform terminates TLS at its edge and forwards plain HTTP with
    # X-Forwarded-Proto; /healthz is exempt because the platform probes it
    # over plain HTTP.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# Client IPs come from X-Forwarded-For only behind App Platform's proxy.
USE_X_FORWARDED_FOR = HTTPS
# Behind App Platform's proxy (DJANGO_HTTPS=1 only), the header that names the
# client's address for limits (core.clientaddr); never read otherwise.
CLIENT_IP_HEADER = env_str("SWITCHBOARD_CLIENT_IP_HEADER", "DO-Connecting-IP")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "core",
]

MIDDLEWARE = [
    # First: answers the platform health check before host validation and
    # the HTTPS redirect can refuse it.
    "core.middleware.HealthCheckMiddleware",
    # Lines logged for a request carry its id, client, user and room.
    "core.middleware.LogContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "backend.urls"
ASGI_APPLICATION = "backend.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
_DATABASE_URL = env_url(
    "DATABASE_URL", schemes={"postgres", "postgresql", "pgsql", "sqlite"}
)
# An alias's options: dj_database_url's DBConfig or the SQLite dict below
# (whose NAME is a Path), amended in place by the blocks that follow.
DATABASES: dict[str, Any]
if _DATABASE_URL is None:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
        }
    }
else:
    try:
        DATABASES = {
            "default": dj_database_url.parse(
                _DATABASE_URL, conn_max_age=0, conn_health_checks=True
            )
        }
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
# Opening a PostgreSQL connection costs milliseconds (TLS, auth, a backend
# fork) and Django opens one per request or database_sync_to_async call when
# connections are not persistent. Persistent connections (CONN_MAX_AGE) are
# unsafe under ASGI, so each process keeps a small psycopg pool instead; the
# health check (CONN_HEALTH_CHECKS) hands out only live connections. The
# size bounds one process's share of the server's connection limit.
DB_POOL_SIZE = env_int("SWITCHBOARD_DB_POOL_SIZE", 8)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, DB_POOL_SIZE),
        "max_size": DB_POOL_SIZE,
        # A request waits this long for a free connection, then fails.
        "timeout": 10,
    }
# Threads that run consumers' database work (core.db), besides the two for
# handshakes: one slow query holds one of them, not the whole process. Keep
# DB_THREADS + 2 under DB_POOL_SIZE so HTTP requests find a connection too.
DB_THREADS = env_int("SWITCHBOARD_DB_THREADS", 4, minimum=1)
# A statement running longer is cancelled (its caller gets an error and may
# retry), so a stuck query cannot hold a thread and a connection for good;
# migrations lift it (core.signals). 0 turns it off, e.g. for a pooler that
# refuses startup options (docs/deploy.md).
DB_STATEMENT_TIMEOUT_MS = env_int("SWITCHBOARD_DB_STATEMENT_TIMEOUT_MS", 5000)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and (
    DB_STATEMENT_TIMEOUT_MS > 0
):
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    _timeout = f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
    _db_options["options"] = f"{_db_options.get('options', '')} {_timeout}".strip()
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock when a transaction starts, so two writers
    # queue on the busy timeout instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL;",
    }
# With the server's CA (App Platform binds ${db.CA_CERT}), libpq checks the
# certificate chain and that it names the host (verify-full); the URL's
# sslmode=require only encrypts, so anyone on the path could pose as the
# server. libpq reads the CA from a file: PEM text goes to a private one.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASE_CA_CERT_FILE = env_pem_file("DATABASE_CA_CERT")
    if DATABASE_CA_CERT_FILE:
        _db_options = DATABASES["default"].setdefault("OPTIONS", {})
        if _db_options.get("sslmode") == "disable":
            raise ImproperlyConfigured(
                "DATABASE_CA_CERT: set, but DATABASE_URL says sslmode=disable"
            )
        if _db_options.get("sslmode") != "verify-ca":
            _db_options["sslmode"] = "verify-full"
        _db_options["sslrootcert"] = DATABASE_CA_CERT_FILE
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, presence, cache -----------------------------------
# One Redis (REDIS_URL), or several (REDIS_URLS, a comma list), never both.
# With several, the channel layer shards channels and groups over all of
# them as channels_redis does (a CRC32 of the name), presence keeps each
# room on the shard of the room's group, and limits keep each key on one
# shard (core.shards); the cache and the metrics snapshots use the first.
# REDIS_URL stays the first URL, so code that only asks "is there Redis?"
# reads it either way.
REDIS_URLS = env_urls("REDIS_URLS", schemes={"redis", "rediss"})
REDIS_URL = env_url("REDIS_URL", schemes={"redis", "rediss"})
if REDIS_URLS and REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URLS: set together with REDIS_URL; set one of them "
        "(REDIS_URLS may list a single URL)"
    )
if REDIS_URL:
    REDIS_URLS = [REDIS_URL]
elif REDIS_URLS:
    REDIS_URL = REDIS_URLS[0]
REDIS_CA_CERT = env_pem_or_path("REDIS_CA_CERT")
CHANNEL_PREFIX = env_str("SWITCHBOARD_CHANNEL_PREFIX", "switchboard")


def _redis_options(url: str, ca_pem: str | None) -> dict[str, object]:
    """Connection options shared by the channel layer, presence and cache."""
    options: dict[str, object] = {
        # redis-py 8 defaults socket_timeout to 5 s, which kills the layer's
        # blocking receive on idle connections (channels_redis issue 422).
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        # Managed Redis drops idle TCP connections; notice before use.
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    if MaintNotificationsConfig is not None:
        # With maintenance notifications on ("auto"), redis-py 8 skips its
        # dead-socket check when a pool hands out a connection, so after a
        # Redis restart the first command on every idle pooled connection
        # fails: handshakes refused, publishes lost. DigitalOcean's managed
        # Redis/Valkey sends no such notifications.
        options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    if url.startswith("rediss://") and ca_pem:
        options["ssl_ca_data"] = ca_pem
    return options


REDIS_OPTIONS: dict[str, object]
CHANNEL_LAYERS: dict[str, dict[str, Any]]
CACHES: dict[str, dict[str, Any]]
# Which channels_redis layer carries events between instances: "pubsub"
# (one Redis subscription per process, multiplexing its rooms, events pushed
# to it) or "lists" (RedisChannelLayer, the Channels tutorial's and most
# deployments' choice: four sequential Redis round trips per event and
# process, docs/performance.md). What pub/sub does not give (word of lost
# events, a group expiry) core.fanout's hub provides, and it re-joins the
# groups that a restarted Redis forgot on the list layer: both are tested.
CHANNEL_LAYER_KIND = env_choice(
    "SWITCHBOARD_CHANNEL_LAYER", ("pubsub", "lists"), "pubsub"
)
LAYER_BACKENDS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "lists": "channels_redis.core.RedisChannelLayer",
}
# Each shard's connection options, in REDIS_URLS' order (a rediss:// one
# gets the CA, a redis:// one must not).
REDIS_SHARD_OPTIONS = [_redis_options(url, REDIS_CA_CERT) for url in REDIS_URLS]
if REDIS_URL:
    REDIS_OPTIONS = REDIS_SHARD_OPTIONS[0]
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": LAYER_BACKENDS[CHANNEL_LAYER_KIND],
            "CONFIG": {
                # Order matters: a name's shard is its hash's position here
                # (the same list, in the same order, on every instance).
                "hosts": [
                    {
                        "address": url,
                        **options,
                        # CLIENT LIST tells whose connection is whose.
                        "client_name": f"{CHANNEL_PREFIX}-layer",
                    }
                    for url, options in zip(
                        REDIS_URLS, REDIS_SHARD_OPTIONS, strict=True
                    )
                ],
                "prefix": CHANNEL_PREFIX,
                # The list layer's per-channel queue (default 100) drops
                # group events silently when full, and each process has one
                # hub channel for all its rooms: room for bursts.
                **({"capacity": 10_000} if CHANNEL_LAYER_KIND == "lists" else {}),
            },
        }
    }
    # On the first Redis only. RedisCache given several LOCATIONs writes to
    # the first and reads from any of the others (replicas): with shards,
    # reads would miss what was written. Nothing here relies on the cache
    # for anything that must be shared (limits and presence have their own
    # clients), so one shard carries it.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHANNEL_PREFIX,
            "OPTIONS": {
                key: value
                for key, value in REDIS_OPTIONS.items()
                if key != "socket_timeout"
            }
            | {"socket_timeout": 5, "client_name": f"{CHANNEL_PREFIX}-cache"},
        }
    }
else:
    REDIS_OPTIONS = {}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Limits (documented in docs/protocol.md; tests and benchmarks raise them) ---
SEND_RATE_PER_SECOND = env_float("SWITCHBOARD_SEND_RATE_PER_SECOND", 10.0, minimum=0.1)
SEND_BURST = env_int("SWITCHBOARD_SEND_BURST", 20, minimum=1)
HISTORY_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_HISTORY_RATE_PER_SECOND", 5.0, minimum=0.1
)
HISTORY_BURST = env_int("SWITCHBOARD_HISTORY_BURST", 5, minimum=1)
TYPING_INTERVAL_SECONDS = env_float("SWITCHBOARD_TYPING_INTERVAL_SECONDS", 3.0)
MAX_FRAME_BYTES = env_int("SWITCHBOARD_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
REPLAY_LIMIT = env_int("SWITCHBOARD_REPLAY_LIMIT", 1000, minimum=1)
PUBLISH_TIMEOUT_SECONDS = env_float("SWITCHBOARD_PUBLISH_TIMEOUT_SECONDS", 1.0)
PRESENCE_TTL_SECONDS = env_float("SWITCHBOARD_PRESENCE_TTL_SECONDS", 60.0, minimum=1)
PRESENCE_REFRESH_SECONDS = env_float(
    "SWITCHBOARD_PRESENCE_REFRESH_SECONDS", 20.0, minimum=0.1
)
PRESENCE_BROADCAST_SECONDS = 1.0
GROUP_REFRESH_SECONDS = 1800.0
# Each process's hub checks that its channel-layer subscription still
# delivers (core.fanout). No probe back for HUB_PROBE_TIMEOUT_SECONDS means
# events may have been lost: long enough for a backlog under overload.
HUB_PROBE_SECONDS = 0.5
HUB_PROBE_TIMEOUT_SECONDS = 10.0
# A committed message reaches every open connection within this long, even
# when its publish was lost and nothing follows it (core.fanout reads its
# rooms' last_seq every DELIVERY_BOUND_SECONDS / 2.5 to notice).
DELIVERY_BOUND_SECONDS = env_float(
    "SWITCHBOARD_DELIVERY_BOUND_SECONDS", 5.0, minimum=1.0
)

# --- Limits: connections and their output (docs/security.md) ------------------
# A connection whose unsent output passes this is closed as too slow (4008);
# replays and history pages are produced only while it stays below a quarter
# of it, and a history answer is trimmed to that quarter. The older name
# SWITCHBOARD_SLOW_CLIENT_BUFFER_BYTES is still read.
OUTPUT_BUFFER_BYTES = env_int(
    "SWITCHBOARD_OUTPUT_BUFFER_BYTES",
    env_int("SWITCHBOARD_SLOW_CLIENT_BUFFER_BYTES", 1024 * 1024, minimum=128 * 1024),
    minimum=128 * 1024,
)
# All connections of one process together; past it, the ones with the most
# unsent output are closed.
OUTPUT_PROCESS_BYTES = env_int(
    "SWITCHBOARD_OUTPUT_PROCESS_BYTES", 256 * 1024 * 1024, minimum=1024 * 1024
)
# How long a replay waits for its client to read before closing it (4008).
OUTPUT_DRAIN_SECONDS = env_float("SWITCHBOARD_OUTPUT_DRAIN_SECONDS", 20.0, minimum=1)
# Open connections, counted across every instance (process: this one only).
CONNECTIONS_PER_USER = env_int("SWITCHBOARD_CONNECTIONS_PER_USER", 20, minimum=1)
ANONYMOUS_CONNECTIONS_PER_ADDRESS = env_int(
    "SWITCHBOARD_ANONYMOUS_CONNECTIONS_PER_ADDRESS", 50, minimum=1
)
CONNECTIONS_PER_PROCESS = env_int(
    "SWITCHBOARD_CONNECTIONS_PER_PROCESS", 5000, minimum=1
)
# WebSocket handshakes per client address, across every instance.
HANDSHAKE_RATE_PER_ADDRESS = env_float(
    "SWITCHBOARD_HANDSHAKE_RATE_PER_ADDRESS", 20.0, minimum=0.1
)
HANDSHAKE_BURST_PER_ADDRESS = env_int(
    "SWITCHBOARD_HANDSHAKE_BURST_PER_ADDRESS", 200, minimum=1
)
# A refused connection is told to retry after about this long.
CONNECTION_RETRY_SECONDS = 10.0
# Admission control (core.admission): handshakes in progress per process;
# past it a handshake is closed at once with 4503 and a retry hint. One not
# accepted within the deadline is cancelled the same way (Daphne drops it at
# 5 s). A process shutting down tells its clients to spread their reconnects
# over (its connections / SHUTDOWN_RECONNECTS_PER_SECOND) seconds: set it to
# the handshakes per second the rest of the fleet absorbs (docs/deploy.md);
# 250 is what one instance absorbs while serving its own clients (measured:
# docs/performance.md, "Reconnect storm"), right for the spec's two.
HANDSHAKE_CONCURRENCY = env_int("SWITCHBOARD_HANDSHAKE_CONCURRENCY", 64, minimum=1)
HANDSHAKE_DEADLINE_SECONDS = env_float(
    "SWITCHBOARD_HANDSHAKE_DEADLINE_SECONDS", 4.0, minimum=0.5
)
SHUTDOWN_RECONNECTS_PER_SECOND = env_float(
    "SWITCHBOARD_SHUTDOWN_RECONNECTS_PER_SECOND", 250.0, minimum=1
)
# HTTP requests one process has in Django at once (each runs on a thread of
# its own); past it a request waits up to HTTP_QUEUE_SECONDS for a turn,
# then gets 503 with Retry-After. /healthz never waits (core.admission).
# GET /metrics (core.metrics) answers only "Authorization: Bearer <this>";
# unset, the endpoint is off (404). A secret: long and random.
METRICS_TOKEN = env_str("SWITCHBOARD_METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        "SWITCHBOARD_METRICS_TOKEN: shorter than 32 characters; use a long random "
        'value, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )
HTTP_CONCURRENCY = env_int("SWITCHBOARD_HTTP_CONCURRENCY", 16, minimum=1)
HTTP_QUEUE_SECONDS = env_float("SWITCHBOARD_HTTP_QUEUE_SECONDS", 5.0, minimum=0.1)
# /livez answers 503 once the event loop has been stalled longer than this
# within the last this-many seconds (core.liveness); App Platform's liveness
# check then restarts the instance. Far above any healthy lag (milliseconds
# under load, docs/deploy.md), so that only a stuck loop fails it.
LIVENESS_STALL_SECONDS = env_float(
    "SWITCHBOARD_LIVENESS_STALL_SECONDS", 10.0, minimum=1.0
)
# Every open connection's access is read again this often (docs/security.md).
ACCESS_RECHECK_SECONDS = env_float(
    "SWITCHBOARD_ACCESS_RECHECK_SECONDS", 30.0, minimum=0.5
)

# --- Auth, API ----------------------------------------------------------------
_VALIDATORS = "django.contrib.auth.password_validation"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"{_VALIDATORS}.UserAttributeSimilarityValidator"},
    {"NAME": f"{_VALIDATORS}.MinimumLengthValidator"},
    {"NAME": f"{_VALIDATORS}.CommonPasswordValidator"},
    {"NAME": f"{_VALIDATORS}.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchboard API",
    "DESCRIPTION": "Rooms and messages; the live side is the WebSocket protocol.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Limits: credentials and HTTP writes (docs/security.md) -------------------
# Buckets shared by every instance (core.limits); each refusal is a 429 with
# Retry-After. Sign-in attempts on the token endpoint, the login page, the
# admin login and signup, per client address: a person needs a few.
CREDENTIAL_ADDRESS_BURST = env_int(
    "SWITCHBOARD_CREDENTIAL_ADDRESS_BURST", 30, minimum=1
)
CREDENTIAL_ADDRESS_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_CREDENTIAL_ADDRESS_RATE_PER_SECOND", 0.1, minimum=0.0001
)
# Password checks of one username from one address: an attacker's guesses
# elsewhere never lock the owner out at their own address.
CREDENTIAL_USER_ADDRESS_BURST = env_int(
    "SWITCHBOARD_CREDENTIAL_USER_ADDRESS_BURST", 5, minimum=1
)
CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND", 1 / 60, minimum=0.0001
)
# Password checks of one username from all addresses together: bounds
# guessing spread over many addresses (about 1500 a day by default).
CREDENTIAL_USER_BURST = env_int("SWITCHBOARD_CREDENTIAL_USER_BURST", 50, minimum=1)
CREDENTIAL_USER_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_CREDENTIAL_USER_RATE_PER_SECOND", 1 / 60, minimum=0.0001
)
# Accounts created per client address (5 an hour).
SIGNUP_ADDRESS_BURST = env_int("SWITCHBOARD_SIGNUP_ADDRESS_BURST", 5, minimum=1)
SIGNUP_ADDRESS_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_SIGNUP_ADDRESS_RATE_PER_SECOND", 5 / 3600, minimum=0.0001
)
# Password hashes one process computes at once. Each is ~0.3 s of CPU
# (PBKDF2); more at once would starve the event loop that carries every
# WebSocket. A request waits this long for a turn, then gets 503.
PASSWORD_HASH_CONCURRENCY = env_int(
    "SWITCHBOARD_PASSWORD_HASH_CONCURRENCY", 2, minimum=1
)
PASSWORD_HASH_WAIT_SECONDS = env_float("SWITCHBOARD_PASSWORD_HASH_WAIT_SECONDS", 1.0)
# Rooms created per user (the API and the home page's form together).
ROOM_CREATE_BURST = env_int("SWITCHBOARD_ROOM_CREATE_BURST", 20, minimum=1)
ROOM_CREATE_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_ROOM_CREATE_RATE_PER_SECOND", 1 / 60, minimum=0.0001
)
# Members added per user, over all their rooms.
MEMBER_ADD_BURST = env_int("SWITCHBOARD_MEMBER_ADD_BURST", 50, minimum=1)
MEMBER_ADD_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_MEMBER_ADD_RATE_PER_SECOND", 0.2, minimum=0.0001
)
# Members of one private room, its owner included: every change to a room
# is announced with its whole member list.
ROOM_MEMBERS_MAX = env_int("SWITCHBOARD_ROOM_MEMBERS_MAX", 1000, minimum=2)
# Searches per user (per client address when anonymous): the most expensive
# read, since every search ranks every message it matches.
SEARCH_BURST = env_int("SWITCHBOARD_SEARCH_BURST", 10, minimum=1)
SEARCH_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_SEARCH_RATE_PER_SECOND", 0.5, minimum=0.0001
)
# Read positions moved per user (the ``read`` frame and PUT .../read/
# together): a reading client marks a room read as messages come in.
READ_BURST = env_int("SWITCHBOARD_READ_BURST", 60, minimum=1)
READ_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_READ_RATE_PER_SECOND", 2.0, minimum=0.0001
)
# Rooms in a watching connection's ``rooms`` frame (and rooms it watches).
WATCH_ROOMS_LIMIT = env_int("SWITCHBOARD_WATCH_ROOMS_LIMIT", 200, minimum=1)
# Username lookups per user (GET /api/users/): the members panel checks a
# name as it is typed; this bounds listing every account by its prefixes.
USERS_LOOKUP_BURST = env_int("SWITCHBOARD_USERS_LOOKUP_BURST", 30, minimum=1)
USERS_LOOKUP_RATE_PER_SECOND = env_float(
    "SWITCHBOARD_USERS_LOOKUP_RATE_PER_SECOND", 1.0, minimum=0.0001
)
# Lines a client can cause (refusals) per call site and interval (core.logs).
LOG_LIMIT_LINES = env_int("SWITCHBOARD_LOG_LIMIT_LINES", 10, minimum=1)
LOG_LIMIT_INTERVAL_SECONDS = env_float(
    "SWITCHBOARD_LOG_LIMIT_INTERVAL_SECONDS", 60.0, minimum=1
)
# Content-Security-Policy and Cache-Control: private, no-store on what the
# app computes (core.middleware). Innermost, so it sees every view's answer,
# error pages included, but not static files: WhiteNoise serves those above
# it with long-lived public caching.
MIDDLEWARE += ["core.middleware.SecurityHeadersMiddleware"]

# --- Static files, i18n, logging ---------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Production serves the hashed names that collectstatic (the build) records.

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# json: one object per line on stdout, with the request's or connection's
# id, client address, user and room (core.logcontext), for App Platform's
# log forwarding; plain: lines for a person, on stderr (docs/deploy.md).
LOG_FORMAT = env_choice(
    "SWITCHBOARD_LOG_FORMAT", ("plain", "json"), "json" if HTTPS else "plain"
)
LOGGING_CONFIG = "core.logcontext.configure_logging"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logcontext.JsonFormatter"},
    },
    "filters": {
        "log_context": {"()": "core.logcontext.ContextFilter"},
        "redis_outage": {"()": "core.logs.RedisOutageLines"},
        "service_unavailable": {"()": "core.logs.ServiceUnavailableLines"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["log_context"],
            "stream": f"ext://sys.{'stdout' if LOG_FORMAT == 'json' else 'stderr'}",
        }
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Redis outages are survived and reported by core; see the filter.
        "channels_redis.pubsub": {"filters": ["redis_outage"]},
        # A 503 is a designed answer (core.logs); a 500 stays an ERROR.
        "django.request": {"filters": ["service_unavailable"]},
        # Under uvicorn: its lines in this format too, and no access log of
        # its own, since core.accesslog writes one.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}
