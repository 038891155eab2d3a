"""Configuration comes from the environment (README, Configuration).

Each case runs ``manage.py``, the ASGI module or a settings read in a fresh
interpreter with an environment built from scratch, so nothing from the
shell or from pytest-env (``DJANGO_*``, ``REDIS_URL`` ...) leaks in.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "k3y-for-settings-tests-" + "x" * 40
FAKE_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfakefakefake\n-----END CERTIFICATE-----\n"


def clean_env(**variables: str) -> dict[str, str]:
    """A minimal environment plus ``variables``; nothing else is inherited."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        **variables,
    }


def run(*args: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean_env(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def read_settings(*names: str, **variables: str) -> dict:
    """The named settings as a fresh process sees them under ``variables``."""
    code = (
        "import json, sys\n"
        "from django.conf import settings\n"
        "print(json.dumps({n: getattr(settings, n) for n in sys.argv[1:]},"
        " default=str))\n"
    )
    result = run(
        "-c", code, *names, DJANGO_SETTINGS_MODULE="backend.settings", **variables
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_stopped_naming(result: subprocess.CompletedProcess, variable: str) -> None:
    """Exit 2 with exactly one line on stderr that names ``variable``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


# --- bad values stop start-up with one line ----------------------------------------

BAD_VALUES = [
    pytest.param("DJANGO_DEBUG", "maybe", id="debug-maybe"),
    pytest.param("DJANGO_HTTPS", "2", id="https-2"),
    pytest.param("DATABASE_URL", "mysql://u:p@db.example.com/sb", id="db-mysql"),
    pytest.param("DATABASE_URL", "not a url", id="db-not-a-url"),
    pytest.param("DATABASE_URL", "postgres://u:p@db:99999/sb", id="db-bad-port"),
    pytest.param("DATABASE_URL", "postgres:///sb", id="db-no-host"),
    pytest.param("REDIS_URL", "http://x", id="redis-http"),
    pytest.param("REDIS_URL", "redis://host:notaport", id="redis-bad-port"),
    pytest.param("REDIS_URL", "rediss://", id="redis-no-host"),
    pytest.param("REDIS_URLS", "redis://a:6379,http://b", id="redis-urls-http"),
    pytest.param("REDIS_URLS", "redis://a:6379,redis://b:port", id="redis-urls-port"),
    pytest.param("REDIS_URLS", "redis://a,rediss://", id="redis-urls-no-host"),
    pytest.param("REDIS_URLS", "redis://a:1, redis://a:1", id="redis-urls-twice"),
    pytest.param("DJANGO_CSRF_TRUSTED_ORIGINS", "example.com", id="csrf-bare-host"),
    pytest.param("REDIS_CA_CERT", "/nonexistent", id="ca-missing-file"),
    pytest.param("REDIS_CA_CERT", str(ROOT / "manage.py"), id="ca-not-pem"),
    pytest.param("SWITCHBOARD_SEND_RATE_PER_SECOND", "fast", id="rate-word"),
    pytest.param("SWITCHBOARD_SEND_RATE_PER_SECOND", "nan", id="rate-nan"),
    pytest.param("SWITCHBOARD_SEND_BURST", "0", id="burst-zero"),
    pytest.param("SWITCHBOARD_DB_POOL_SIZE", "-1", id="pool-negative"),
    pytest.param("SWITCHBOARD_DB_POOL_SIZE", "eight", id="pool-word"),
    pytest.param("SWITCHBOARD_CREDENTIAL_ADDRESS_BURST", "0", id="cred-burst-0"),
    pytest.param("SWITCHBOARD_CREDENTIAL_USER_RATE_PER_SECOND", "0", id="cred-rate-0"),
    pytest.param("SWITCHBOARD_PASSWORD_HASH_CONCURRENCY", "0", id="hashing-0"),
    pytest.param("SWITCHBOARD_ROOM_CREATE_RATE_PER_SECOND", "-1", id="rooms-rate"),
    pytest.param("SWITCHBOARD_ROOM_MEMBERS_MAX", "1", id="room-members-1"),
    pytest.param("SWITCHBOARD_LOG_FORMAT", "xml", id="log-format-xml"),
    pytest.param("SWITCHBOARD_CHANNEL_LAYER", "kafka", id="layer-kafka"),
    pytest.param("SWITCHBOARD_LIVENESS_STALL_SECONDS", "ten", id="liveness-word"),
    pytest.param("SWITCHBOARD_LIVENESS_STALL_SECONDS", "0.5", id="liveness-below-1"),
]


def bad_env(variable: str, value: str) -> dict[str, str]:
    return {"DJANGO_SECRET_KEY": SECRET_KEY, variable: value}


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_manage_py_stops_on_a_bad_value_with_one_line(variable, value):
    result = run("manage.py", "check", **bad_env(variable, value))
    assert_stopped_naming(result, variable)


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_asgi_app_stops_on_a_bad_value_with_one_line(variable, value):
    result = run("-c", "import backend.asgi", **bad_env(variable, value))
    assert_stopped_naming(result, variable)


def test_a_bad_value_stops_even_the_build_time_commands():
    result = run("manage.py", "collectstatic", "--noinput", DJANGO_DEBUG="maybe")
    assert_stopped_naming(result, "DJANGO_DEBUG")


# --- the secret key -----------------------------------------------------------------


def test_settings_import_without_a_secret_key():
    """App Platform's build runs with no runtime variables at all."""
    result = run(
        "-c",
        "import django; from django.conf import settings; "
        "print(len(settings.INSTALLED_APPS))",
        DJANGO_SETTINGS_MODULE="backend.settings",
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0


def test_collectstatic_runs_without_a_secret_key():
    result = run("manage.py", "collectstatic", "--noinput", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "DJANGO_SECRET_KEY" not in result.stderr


def test_manage_py_check_stops_without_a_secret_key():
    assert_stopped_naming(run("manage.py", "check"), "DJANGO_SECRET_KEY")


def test_asgi_app_stops_without_a_secret_key():
    assert_stopped_naming(run("-c", "import backend.asgi"), "DJANGO_SECRET_KEY")


def test_blank_secret_key_counts_as_missing():
    result = run("manage.py", "check", DJANGO_SECRET_KEY="   ")
    assert_stopped_naming(result, "DJANGO_SECRET_KEY")


def test_debug_runs_without_a_secret_key():
    result = run("manage.py", "check", DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert read_settings("SECRET_KEY", DJANGO_DEBUG="1")["SECRET_KEY"]


def test_asgi_app_imports_with_a_secret_key():
    result = run(
        "-c",
        "import backend.asgi; print(type(backend.asgi.application).__name__)",
        DJANGO_SECRET_KEY=SECRET_KEY,
    )
    assert result.returncode == 0, result.stderr
    # Channels' ProtocolTypeRouter, writing the access log too.
    assert result.stdout.strip() == "AccessLogRouter"


def test_what_the_asgi_app_loads_is_left_out_of_full_collections():
    """Startup objects are frozen: a full collection that walked them would
    stall every connection for tens of milliseconds (docs/performance.md)."""
    code = (
        "import gc, backend.asgi\n"
        "app = backend.asgi.application\n"
        "print(gc.get_freeze_count(), len(gc.get_objects()),"
        " any(o is app for o in gc.get_objects()))\n"
    )
    result = run("-c", code, DJANGO_SECRET_KEY=SECRET_KEY)
    assert result.returncode == 0, result.stderr
    frozen, collectable, app_collectable = result.stdout.split()
    assert int(frozen) > 10 * int(collectable)
    assert app_collectable == "False"


def test_secret_key_is_taken_from_the_environment():
    assert read_settings("SECRET_KEY", DJANGO_SECRET_KEY=SECRET_KEY) == {
        "SECRET_KEY": SECRET_KEY
    }


# --- defaults and good values ---------------------------------------------------------


def test_defaults_are_local_and_safe():
    values = read_settings(
        "DEBUG",
        "ALLOWED_HOSTS",
        "HTTPS",
        "SECURE_SSL_REDIRECT",
        "USE_X_FORWARDED_FOR",
        "DATABASES",
        "CHANNEL_LAYERS",
        "CACHES",
    )
    assert values["DEBUG"] is False
    assert values["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert (values["HTTPS"], values["SECURE_SSL_REDIRECT"]) == (False, False)
    assert values["USE_X_FORWARDED_FOR"] is False
    database = values["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert database["NAME"] == str(ROOT / "db.sqlite3")
    assert database["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert values["CHANNEL_LAYERS"]["default"]["BACKEND"] == (
        "channels.layers.InMemoryChannelLayer"
    )
    assert values["CACHES"]["default"]["BACKEND"].endswith("LocMemCache")


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, ("plain", "plain", "ext://sys.stderr")),
        ({"DJANGO_HTTPS": "1"}, ("json", "json", "ext://sys.stdout")),
        (
            {"DJANGO_HTTPS": "1", "SWITCHBOARD_LOG_FORMAT": "plain"},
            ("plain", "plain", "ext://sys.stderr"),
        ),
        ({"SWITCHBOARD_LOG_FORMAT": " JSON "}, ("json", "json", "ext://sys.stdout")),
    ],
    ids=["local", "behind-app-platform", "plain-chosen", "json-chosen"],
)
def test_log_format_is_json_on_stdout_behind_app_platform_else_plain(
    variables, expected
):
    values = read_settings("LOG_FORMAT", "LOGGING", **variables)
    console = values["LOGGING"]["handlers"]["console"]
    assert (values["LOG_FORMAT"], console["formatter"], console["stream"]) == expected
    assert "log_context" in console["filters"]


def test_a_bad_log_format_names_the_choices():
    result = run("manage.py", "check", **bad_env("SWITCHBOARD_LOG_FORMAT", "xml"))
    expected = "SWITCHBOARD_LOG_FORMAT: expected plain or json, got 'xml'"
    assert result.stderr.strip() == f"Configuration error: {expected}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_boolean_flags_accept_the_usual_spellings(value, expected):
    assert read_settings("DEBUG", DJANGO_DEBUG=value) == {"DEBUG": expected}


def test_redis_url_selects_the_redis_layer_and_cache():
    values = read_settings(
        "CHANNEL_LAYERS", "CACHES", REDIS_URL="redis://localhost:6379/0"
    )
    layer = values["CHANNEL_LAYERS"]["default"]
    # One Redis subscription per process (docs/performance.md).
    assert layer["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    [host] = layer["CONFIG"]["hosts"]
    assert host["address"] == "redis://localhost:6379/0"
    # redis-py's default timeout would kill the layer's blocking reads.
    assert "socket_timeout" in host
    assert host["socket_timeout"] is None
    assert "ssl_ca_data" not in host
    assert layer["CONFIG"]["prefix"] == "switchboard"
    cache = values["CACHES"]["default"]
    assert cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert cache["LOCATION"] == "redis://localhost:6379/0"
    assert cache["OPTIONS"]["socket_timeout"] > 0


def test_redis_urls_shard_the_layer_and_keep_the_cache_on_the_first(ca_file):
    values = read_settings(
        "CHANNEL_LAYERS",
        "CACHES",
        "REDIS_URL",
        "REDIS_URLS",
        REDIS_URLS=" rediss://one.example:25061 , redis://localhost:6380/0,",
        REDIS_CA_CERT=str(ca_file),
    )
    urls = ["rediss://one.example:25061", "redis://localhost:6380/0"]
    assert values["REDIS_URLS"] == urls
    # REDIS_URL reads as the first: code asking "is there Redis?" is right.
    assert values["REDIS_URL"] == urls[0]
    hosts = values["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    # Every server, in the order given: the order is the sharding.
    assert [host["address"] for host in hosts] == urls
    # The CA goes to the TLS server only; redis:// would refuse the option.
    assert "ssl_ca_data" in hosts[0]
    assert "ssl_ca_data" not in hosts[1]
    # Not RedisCache's several LOCATIONs (replicas, not shards): the first.
    assert values["CACHES"]["default"]["LOCATION"] == urls[0]


def test_one_url_in_redis_urls_is_the_same_as_redis_url():
    names = ("CHANNEL_LAYERS", "CACHES", "REDIS_URL", "REDIS_URLS")
    assert read_settings(*names, REDIS_URLS="redis://localhost:6379/0") == (
        read_settings(*names, REDIS_URL="redis://localhost:6379/0")
    )


@pytest.mark.parametrize("command", ["manage.py check", "asgi"])
def test_redis_url_and_redis_urls_together_stop_start_up(command):
    both = {"REDIS_URL": "redis://a:6379", "REDIS_URLS": "redis://b:6379"}
    args = (
        ("manage.py", "check") if command != "asgi" else ("-c", "import backend.asgi")
    )
    result = run(*args, DJANGO_SECRET_KEY=SECRET_KEY, **both)
    assert_stopped_naming(result, "REDIS_URLS")
    assert "REDIS_URL" in result.stderr


def test_a_password_in_a_listed_twice_url_is_not_printed():
    twice = "redis://:s3cret@a:1,redis://:s3cret@a:1"
    result = run("manage.py", "check", DJANGO_SECRET_KEY=SECRET_KEY, REDIS_URLS=twice)
    assert_stopped_naming(result, "REDIS_URLS")
    assert "s3cret" not in result.stderr


def test_channel_prefix_is_a_setting():
    layer = read_settings(
        "CHANNEL_LAYERS",
        REDIS_URL="redis://localhost:6379/0",
        SWITCHBOARD_CHANNEL_PREFIX="run42",
    )["CHANNEL_LAYERS"]["default"]
    assert layer["CONFIG"]["prefix"] == "run42"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_text(FAKE_PEM, encoding="ascii")
    return path


@pytest.mark.parametrize("given_as", ["text", "path"])
def test_rediss_url_passes_the_ca_certificate(given_as, ca_file):
    ca = FAKE_PEM if given_as == "text" else str(ca_file)
    values = read_settings(
        "CHANNEL_LAYERS",
        "CACHES",
        REDIS_URL="rediss://default:pw@redis.example.com:25061",
        REDIS_CA_CERT=ca,
    )
    [host] = values["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    assert host["ssl_ca_data"].strip() == FAKE_PEM.strip()
    assert values["CACHES"]["default"]["OPTIONS"]["ssl_ca_data"].strip() == (
        FAKE_PEM.strip()
    )


def test_redis_options_are_accepted_by_redis_py(ca_file):
    """The options build real connection objects (without connecting)."""
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from redis.asyncio import ConnectionPool\n"
        "from django.core.cache import cache\n"
        "host = dict(settings.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0])\n"
        "pool = ConnectionPool.from_url(host.pop('address'), **host)\n"
        "layer = pool.make_connection()\n"
        "client = cache._cache.get_client(write=True)\n"
        "sync = client.connection_pool.make_connection()\n"
        "print(type(layer).__name__, layer.socket_timeout, type(sync).__name__)\n"
    )
    result = run(
        "-c",
        code,
        DJANGO_SETTINGS_MODULE="backend.settings",
        DJANGO_SECRET_KEY=SECRET_KEY,
        REDIS_URL="rediss://default:pw@redis.example.com:25061",
        REDIS_CA_CERT=str(ca_file),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SSLConnection", "None", "SSLConnection"]


def test_postgres_url_with_sslmode_require():
    database = read_settings(
        "DATABASES",
        DATABASE_URL="postgres://u:p@db.example.com:25060/sb?sslmode=require",
    )["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"], database["NAME"]) == (
        "db.example.com",
        25060,
        "sb",
    )
    assert (database["USER"], database["PASSWORD"]) == ("u", "p")
    assert database["OPTIONS"]["sslmode"] == "require"


PG_URL = "postgres://u:p@db.example.com:25060/sb?sslmode=require"
# Prints what libpq would be given, and the CA file as the process sees it.
READ_CA_FILE = (
    "import json, os, stat\n"
    "from django.conf import settings\n"
    "options = settings.DATABASES['default']['OPTIONS']\n"
    "path = options['sslrootcert']\n"
    "print(json.dumps({'sslmode': options['sslmode'], 'path': path,\n"
    "    'text': open(path).read(), 'mode': stat.S_IMODE(os.stat(path).st_mode)}))\n"
)


def read_ca_file(**variables: str) -> dict:
    result = run(
        "-c", READ_CA_FILE, DJANGO_SETTINGS_MODULE="backend.settings", **variables
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_database_ca_as_text_makes_postgres_verify_the_server():
    """PEM text goes to a file only this user reads, gone when the process is."""
    seen = read_ca_file(DATABASE_URL=PG_URL, DATABASE_CA_CERT=FAKE_PEM)
    assert seen["sslmode"] == "verify-full"
    assert seen["text"] == FAKE_PEM
    assert seen["mode"] == 0o600
    assert not Path(seen["path"]).exists()


def test_database_ca_as_a_path_is_used_in_place(ca_file):
    seen = read_ca_file(DATABASE_URL=PG_URL, DATABASE_CA_CERT=str(ca_file))
    assert (seen["sslmode"], seen["path"]) == ("verify-full", str(ca_file))
    assert ca_file.exists()


@pytest.mark.parametrize(
    ("url_mode", "expected"),
    [("", "verify-full"), ("prefer", "verify-full"), ("verify-ca", "verify-ca")],
)
def test_database_ca_verifies_whatever_the_url_asked_short_of_verify_ca(
    url_mode, expected, ca_file
):
    url = PG_URL.split("?")[0] + (f"?sslmode={url_mode}" if url_mode else "")
    seen = read_ca_file(DATABASE_URL=url, DATABASE_CA_CERT=str(ca_file))
    assert seen["sslmode"] == expected


def test_without_a_database_ca_sslmode_is_the_urls():
    options = read_settings("DATABASES", DATABASE_URL=PG_URL)["DATABASES"]["default"][
        "OPTIONS"
    ]
    assert options["sslmode"] == "require"
    assert "sslrootcert" not in options


def test_database_ca_is_ignored_for_sqlite():
    """As REDIS_CA_CERT is for redis://: nothing to verify."""
    database = read_settings("DATABASES", DATABASE_CA_CERT="/nonexistent")
    assert "sslrootcert" not in database["DATABASES"]["default"]["OPTIONS"]


@pytest.mark.parametrize(
    ("url", "ca"),
    [
        pytest.param(PG_URL, "/nonexistent", id="missing-file"),
        pytest.param(PG_URL, str(ROOT / "manage.py"), id="not-pem"),
        pytest.param(PG_URL.replace("require", "disable"), FAKE_PEM, id="ssl-off"),
    ],
)
def test_a_bad_database_ca_stops_start_up_naming_it(url, ca):
    result = run(
        "manage.py",
        "check",
        DJANGO_SECRET_KEY=SECRET_KEY,
        DATABASE_URL=url,
        DATABASE_CA_CERT=ca,
    )
    assert_stopped_naming(result, "DATABASE_CA_CERT")


def test_postgres_connections_come_from_a_bounded_pool_with_health_checks():
    url = "postgres://u:p@db.example.com:25060/sb"
    database = read_settings("DATABASES", DATABASE_URL=url)["DATABASES"]["default"]
    assert database["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 8, "timeout": 10}
    # Django refuses a pool with persistent connections; checks need this.
    assert database["CONN_MAX_AGE"] == 0
    assert database["CONN_HEALTH_CHECKS"] is True

    sized = read_settings("DATABASES", DATABASE_URL=url, SWITCHBOARD_DB_POOL_SIZE="1")
    assert sized["DATABASES"]["default"]["OPTIONS"]["pool"]["max_size"] == 1
    assert sized["DATABASES"]["default"]["OPTIONS"]["pool"]["min_size"] == 1

    off = read_settings("DATABASES", DATABASE_URL=url, SWITCHBOARD_DB_POOL_SIZE="0")
    assert "pool" not in off["DATABASES"]["default"].get("OPTIONS", {})


def test_sqlite_has_no_pool():
    database = read_settings("DATABASES")["DATABASES"]["default"]
    assert "pool" not in database["OPTIONS"]


def test_https_flag_turns_on_proxy_trust_redirect_hsts_and_secure_cookies():
    values = read_settings(
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_SSL_REDIRECT",
        "SECURE_REDIRECT_EXEMPT",
        "SECURE_HSTS_SECONDS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "USE_X_FORWARDED_FOR",
        DJANGO_HTTPS="1",
    )
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_REDIRECT_EXEMPT"] == [r"^healthz$"]
    assert values["SECURE_HSTS_SECONDS"] >= 60 * 60 * 24 * 365
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["CSRF_COOKIE_SECURE"] is True
    assert values["USE_X_FORWARDED_FOR"] is True


def test_without_https_nothing_trusts_the_proxy():
    values = read_settings(
        "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE"
    )
    assert values == {
        "SECURE_PROXY_SSL_HEADER": None,
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
    }


@pytest.mark.parametrize(
    ("https", "expected"),
    [
        (
            "1",
            ["https://switchboard.example.com", "https://*.example.org"],
        ),
        (
            "0",
            [
                "https://switchboard.example.com",
                "http://switchboard.example.com",
                "https://*.example.org",
                "http://*.example.org",
            ],
        ),
    ],
)
def test_csrf_trusted_origins_are_derived_from_the_allowed_hosts(https, expected):
    values = read_settings(
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        DJANGO_ALLOWED_HOSTS=" switchboard.example.com , .example.org,",
        DJANGO_HTTPS=https,
    )
    assert values["ALLOWED_HOSTS"] == ["switchboard.example.com", ".example.org"]
    assert values["CSRF_TRUSTED_ORIGINS"] == expected


def test_explicit_csrf_trusted_origins_win():
    values = read_settings(
        "CSRF_TRUSTED_ORIGINS",
        DJANGO_ALLOWED_HOSTS="switchboard.example.com",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://a.example.com, https://b.example.com:8443",
    )
    assert values["CSRF_TRUSTED_ORIGINS"] == [
        "https://a.example.com",
        "https://b.example.com:8443",
    ]


def test_liveness_stall_bound_defaults_to_ten_seconds():
    """What .do/app.yaml's liveness check is tuned for (test_app_spec.py)."""
    assert read_settings("LIVENESS_STALL_SECONDS") == {"LIVENESS_STALL_SECONDS": 10.0}
    overridden = read_settings(
        "LIVENESS_STALL_SECONDS", SWITCHBOARD_LIVENESS_STALL_SECONDS="2.5"
    )
    assert overridden == {"LIVENESS_STALL_SECONDS": 2.5}


def test_limits_are_read_from_the_environment():
    values = read_settings(
        "SEND_RATE_PER_SECOND",
        "SEND_BURST",
        "MAX_FRAME_BYTES",
        SWITCHBOARD_SEND_RATE_PER_SECOND="2.5",
        SWITCHBOARD_SEND_BURST="7",
        SWITCHBOARD_MAX_FRAME_BYTES="2048",
    )
    assert values == {
        "SEND_RATE_PER_SECOND": 2.5,
        "SEND_BURST": 7,
        "MAX_FRAME_BYTES": 2048,
    }


def test_credential_and_write_limits_are_read_from_the_environment():
    names = {
        "CREDENTIAL_ADDRESS_BURST": ("7", 7),
        "CREDENTIAL_ADDRESS_RATE_PER_SECOND": ("0.5", 0.5),
        "CREDENTIAL_USER_ADDRESS_BURST": ("3", 3),
        "CREDENTIAL_USER_ADDRESS_RATE_PER_SECOND": ("0.25", 0.25),
        "CREDENTIAL_USER_BURST": ("9", 9),
        "CREDENTIAL_USER_RATE_PER_SECOND": ("0.125", 0.125),
        "SIGNUP_ADDRESS_BURST": ("2", 2),
        "SIGNUP_ADDRESS_RATE_PER_SECOND": ("0.01", 0.01),
        "PASSWORD_HASH_CONCURRENCY": ("4", 4),
        "PASSWORD_HASH_WAIT_SECONDS": ("0.5", 0.5),
        "ROOM_CREATE_BURST": ("11", 11),
        "ROOM_CREATE_RATE_PER_SECOND": ("0.2", 0.2),
        "MEMBER_ADD_BURST": ("12", 12),
        "MEMBER_ADD_RATE_PER_SECOND": ("0.3", 0.3),
        "ROOM_MEMBERS_MAX": ("40", 40),
        "USERS_LOOKUP_BURST": ("13", 13),
        "USERS_LOOKUP_RATE_PER_SECOND": ("0.4", 0.4),
        "LOG_LIMIT_LINES": ("5", 5),
        "LOG_LIMIT_INTERVAL_SECONDS": ("30", 30.0),
    }
    variables = {f"SWITCHBOARD_{name}": text for name, (text, _) in names.items()}
    values = read_settings(*names, **variables)
    assert values == {name: value for name, (_, value) in names.items()}


def test_credential_and_write_limits_have_defaults_a_chat_would_choose():
    values = read_settings(
        "CREDENTIAL_ADDRESS_BURST",
        "CREDENTIAL_USER_ADDRESS_BURST",
        "CREDENTIAL_USER_BURST",
        "CREDENTIAL_USER_RATE_PER_SECOND",
        "SIGNUP_ADDRESS_BURST",
        "PASSWORD_HASH_CONCURRENCY",
        "ROOM_CREATE_BURST",
        "MEMBER_ADD_BURST",
        "ROOM_MEMBERS_MAX",
        "USERS_LOOKUP_BURST",
        "USERS_LOOKUP_RATE_PER_SECOND",
        "MIDDLEWARE",
    )
    assert values["CREDENTIAL_ADDRESS_BURST"] == 30
    assert values["CREDENTIAL_USER_ADDRESS_BURST"] == 5
    assert values["CREDENTIAL_USER_BURST"] == 50
    assert values["CREDENTIAL_USER_RATE_PER_SECOND"] == pytest.approx(1 / 60)
    assert values["SIGNUP_ADDRESS_BURST"] == 5
    assert values["PASSWORD_HASH_CONCURRENCY"] == 2
    assert (values["ROOM_CREATE_BURST"], values["MEMBER_ADD_BURST"]) == (20, 50)
    assert values["ROOM_MEMBERS_MAX"] == 1000
    assert values["USERS_LOOKUP_BURST"] == 30
    assert values["USERS_LOOKUP_RATE_PER_SECOND"] == 1.0
    assert values["MIDDLEWARE"][-1] == "core.middleware.SecurityHeadersMiddleware"


@pytest.mark.parametrize(
    ("value", "backend"),
    [
        (None, "channels_redis.pubsub.RedisPubSubChannelLayer"),
        (" Lists ", "channels_redis.core.RedisChannelLayer"),
        ("pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer"),
    ],
)
def test_the_channel_layer_is_one_setting(value, backend):
    variables = {"REDIS_URL": "redis://localhost:6379/0"}
    if value is not None:
        variables["SWITCHBOARD_CHANNEL_LAYER"] = value
    layers = read_settings("CHANNEL_LAYERS", **variables)["CHANNEL_LAYERS"]
    assert layers["default"]["BACKEND"] == backend


def _every_setting(settings_module: str) -> dict:
    code = (
        "import json\n"
        "from django.conf import settings\n"
        # Not the module's own helpers (_VALIDATORS), which a star import
        # leaves behind and nothing reads through django.conf.settings.
        "names = [n for n in dir(settings) if n.isupper() and n[0] != '_']\n"
        "print(json.dumps({n: getattr(settings, n) for n in names}, default=str))\n"
    )
    result = run(
        "-c", code, DJANGO_SETTINGS_MODULE=settings_module, DJANGO_SECRET_KEY=SECRET_KEY
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_test_servers_differ_from_production_in_the_password_hasher_only():
    """The integration and browser tiers' servers load
    ``tests.support.server_settings``: production's settings, with a cheap
    hasher in front. Production's own default stays PBKDF2."""
    production = _every_setting("backend.settings")
    tested = _every_setting("tests.support.server_settings")

    differing = {
        name
        for name in production.keys() | tested.keys()
        if production.get(name) != tested.get(name)
    }
    assert differing == {"PASSWORD_HASHERS", "SETTINGS_MODULE", "TEST_SERVER_SETTINGS"}
    assert production["PASSWORD_HASHERS"][0].endswith(".PBKDF2PasswordHasher")
    assert tested["PASSWORD_HASHERS"] == [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *production["PASSWORD_HASHERS"],
    ]
