"""The App Platform specs in .do/ are valid and say what the app relies on.

Both files are validated against DigitalOcean's own App Spec schema (OpenAPI
fragments copied into tests/data/do-app-spec/, see the NOTICE there) with a
Draft 7 validator; OpenAPI-only keywords such as ``nullable`` and ``example``
are unknown to Draft 7 and so act as annotations. Fields the platform accepts
but those files do not declare yet (scheduled jobs, component alerts) are
added as the files load, from godo-additions.yml there, which names the Go
client declarations they come from. Those schemas never set
``additionalProperties``, so a misspelt key would pass unnoticed: the
documents are also walked alongside the schema, following ``$ref`` and merging
the properties of ``allOf``/``oneOf``/``anyOf`` branches, and every key that
no branch declares is reported. Bindings such as ``${db.DATABASE_URL}`` are
plain strings to the schema; ``doctl apps spec validate`` checks them on the
server, and the tests below check that they name declared components.

The module imports no Django and uses no database or fixture (one test
reads the liveness route from core.liveness, which configures nothing);
alone it runs with ``pytest -p no:django --noconftest
tests/unit/test_app_spec.py``.
"""

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = ROOT / ".do" / "app.yaml"
DEPLOY_TEMPLATE = ROOT / ".do" / "deploy.template.yaml"
SCHEMA_DIR = (
    ROOT / "tests/data/do-app-spec/specification/resources/apps/models"
).resolve()
SCHEMA_BASE_URI = SCHEMA_DIR.as_uri() + "/"
ADDITIONS = ROOT / "tests/data/do-app-spec/godo-additions.yml"

# The README's command, plus: Daphne closes every WebSocket after 24 h by default.
RUN_COMMAND = (
    "daphne -b 0.0.0.0 -p 8080 --websocket_timeout -1 backend.asgi:application"
)
MIGRATE_COMMAND = "python manage.py migrate --noinput"
CLEARSESSIONS_COMMAND = "python manage.py clearsessions"
# SWITCHBOARD_LIVENESS_STALL_SECONDS's default (tests/unit/test_settings.py
# pins it); the spec leaves the variable unset.
LIVENESS_STALL_SECONDS = 10.0

# The README's configuration variables, less PORT, which App Platform
# derives from http_port.
CONFIGURATION_VARIABLES = (
    "DJANGO_SECRET_KEY",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_CSRF_TRUSTED_ORIGINS",
    "DJANGO_HTTPS",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CA_CERT",
)
EXPECTED_VALUES = {
    "DJANGO_DEBUG": "0",
    "DJANGO_HTTPS": "1",
    "DJANGO_ALLOWED_HOSTS": "${APP_DOMAIN}",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "${APP_URL}",
    "DATABASE_URL": "${db.DATABASE_URL}",
    "REDIS_URL": "${cache.DATABASE_URL}",
    "REDIS_CA_CERT": "${cache.CA_CERT}",
    # Added since the first release: verifies PostgreSQL as REDIS_CA_CERT
    # verifies Valkey.
    "DATABASE_CA_CERT": "${db.CA_CERT}",
}
# Variables whose value is a credential or leads to one.
SENSITIVE_VARIABLES = {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"}

# App Platform's instance-size list (GET /v2/apps/tiers/instance_sizes) marks
# these single_instance_only; the deprecated legacy slugs are refused too.
SINGLE_INSTANCE_SIZES = {"apps-s-1vcpu-0.5gb", "apps-s-1vcpu-1gb-fixed"}
LEGACY_SIZE_PREFIXES = ("basic-", "professional-")

APP_WIDE_BINDINGS = {"APP_DOMAIN", "APP_URL", "APP_ID"}
DATABASE_BINDINGS = {
    "DATABASE_URL",
    "CA_CERT",
    "HOSTNAME",
    "PORT",
    "USERNAME",
    "PASSWORD",
    "DATABASE",
}
BINDING = re.compile(r"\$\{([^}]*)\}")
COMPONENT_KINDS = ("services", "workers", "jobs", "static_sites", "functions")
SOURCE_KEYS = ("git", "github", "gitlab", "bitbucket", "image")
RUN_TIME_SCOPES = {"RUN_TIME", "RUN_AND_BUILD_TIME"}

# Where each alert rule applies, from godo's AppAlertSpecRule documentation
# (tests/data/do-app-spec/godo-additions.yml names the version): "Only
# applicable at the app level", "at the component level", "to service
# components", "to scheduled job components", "to functions components".
APP_LEVEL_RULES = {
    "DEPLOYMENT_FAILED",
    "DEPLOYMENT_LIVE",
    "DEPLOYMENT_STARTED",
    "DEPLOYMENT_CANCELED",
    "DOMAIN_FAILED",
    "DOMAIN_LIVE",
    "AUTOSCALE_FAILED",
    "AUTOSCALE_SUCCEEDED",
}
INSTANCE_RULES = {"CPU_UTILIZATION", "MEM_UTILIZATION", "RESTART_COUNT"}
SERVICE_RULES = INSTANCE_RULES | {"REQUESTS_PER_SECOND", "REQUEST_DURATION_P95_MS"}
SCHEDULED_JOB_RULES = INSTANCE_RULES | {"JOB_INVOCATION_FAILED"}
# Rules that compare a metric with a value over a window; the others are
# events, with no operator, value or window. (Functions components have
# rules of their own; this app has none.)
THRESHOLD_RULES = SERVICE_RULES

# A referencing Resolver; the class is not exported by the package.
Resolver = Any

# Root keys the API accepts but AppSpec does not declare (the upstream
# examples send them). Declared here with the shapes the API uses, so they
# are validated too, and no other undeclared root key slips through.
APP_SPEC_SCHEMA_ID = SCHEMA_BASE_URI + "switchboard-app-spec.schema"
DEPLOY_TEMPLATE_SCHEMA_ID = SCHEMA_BASE_URI + "switchboard-deploy-template.schema"
APP_SPEC_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": APP_SPEC_SCHEMA_ID,
    "allOf": [
        {"$ref": "app_spec.yml"},
        {
            "type": "object",
            "properties": {
                "envs": {
                    "type": "array",
                    "items": {"$ref": "app_variable_definition.yml"},
                },
                "alerts": {"type": "array", "items": {"$ref": "app_alert_spec.yml"}},
                "features": {"type": "array", "items": {"type": "string"}},
            },
        },
    ],
}
DEPLOY_TEMPLATE_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": DEPLOY_TEMPLATE_SCHEMA_ID,
    "allOf": [
        {"$ref": "apps_deploy_template.yml"},
        {
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {"$ref": APP_SPEC_SCHEMA_ID}},
        },
    ],
}


def _pointed(document: Any, pointer: str) -> Any:
    """The node of ``document`` at a JSON pointer such as ``/allOf/2/enum``."""
    node = document
    for part in pointer.removeprefix("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def godo_additions() -> dict[str, list[dict[str, Any]]]:
    """The additions to upstream files, by file name (godo-additions.yml)."""
    return _load(ADDITIONS)


def with_additions(name: str, contents: Any) -> Any:
    """A copy of the upstream file ``name``'s ``contents``, with what
    godo-additions.yml adds to it."""
    patched = copy.deepcopy(contents)
    for entry in godo_additions().get(name, []):
        target = _pointed(patched, entry["pointer"])
        if "enum" in entry:
            target.extend(entry["enum"])
        else:
            target.update(entry["properties"])
    return patched


def _retrieve_schema_file(uri: str) -> Resource:
    """Load a sibling schema file named by a ``file://`` URI."""
    path = Path(unquote(urlsplit(uri).path)).resolve()
    if path.parent != SCHEMA_DIR:
        msg = f"refusing to load a schema outside {SCHEMA_DIR}: {uri}"
        raise LookupError(msg)
    contents = yaml.safe_load(path.read_text(encoding="utf-8"))
    contents = with_additions(path.name, contents)
    return Resource.from_contents(contents, default_specification=DRAFT7)


REGISTRY: Registry = Registry(retrieve=_retrieve_schema_file).with_resources(
    [
        (APP_SPEC_SCHEMA_ID, DRAFT7.create_resource(APP_SPEC_SCHEMA)),
        (DEPLOY_TEMPLATE_SCHEMA_ID, DRAFT7.create_resource(DEPLOY_TEMPLATE_SCHEMA)),
    ]
)


@cache
def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def app_spec() -> dict[str, Any]:
    """Return a fresh copy of .do/app.yaml, safe to mutate."""
    return copy.deepcopy(_load(APP_SPEC))


def deploy_template() -> dict[str, Any]:
    """Return a fresh copy of .do/deploy.template.yaml, safe to mutate."""
    return copy.deepcopy(_load(DEPLOY_TEMPLATE))


def schema_errors(document: Any, schema_id: str) -> list[str]:
    """Return the schema violations of ``document``, one line each."""
    validator = jsonschema.Draft7Validator({"$ref": schema_id}, registry=REGISTRY)
    return sorted(
        f"{_pointer(error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    )


def _pointer(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path)


def _branches(schema: Any, resolver: Resolver) -> Iterator[tuple[dict, Resolver]]:
    """Yield ``schema`` and every schema merged into it, with $refs resolved."""
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        yield from _branches(resolved.contents, resolved.resolver)
        return
    yield schema, resolver
    for keyword in ("allOf", "anyOf", "oneOf"):
        for subschema in schema.get(keyword, []):
            yield from _branches(subschema, resolver)


def undeclared_keys(document: Any, schema_id: str) -> list[str]:
    """Return the JSON pointer of every key that the schema does not declare."""
    return _undeclared(document, [({"$ref": schema_id}, REGISTRY.resolver())], "")


def _undeclared(
    instance: Any, schemas: list[tuple[Any, Resolver]], pointer: str
) -> list[str]:
    branches = [b for s, r in schemas for b in _branches(s, r)]
    found: list[str] = []
    if isinstance(instance, dict):
        declared: dict[str, list[tuple[Any, Resolver]]] = {}
        for schema, resolver in branches:
            for key, subschema in schema.get("properties", {}).items():
                declared.setdefault(key, []).append((subschema, resolver))
        if not declared:
            return found  # a free-form object: nothing to compare with
        for key, value in instance.items():
            if key in declared:
                found += _undeclared(value, declared[key], f"{pointer}/{key}")
            else:
                found.append(f"{pointer}/{key}")
    elif isinstance(instance, list):
        items = [(s["items"], r) for s, r in branches if "items" in s]
        for index, item in enumerate(instance):
            found += _undeclared(item, items, f"{pointer}/{index}")
    return found


def components(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(kind, component)`` for every component of an App Spec."""
    for kind in COMPONENT_KINDS:
        for component in spec.get(kind, []):
            yield kind, component


def component(spec: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """Return the component ``name`` of ``kind``; fail if there is none."""
    matches = [c for c in spec.get(kind, []) if c.get("name") == name]
    assert len(matches) == 1, f"expected one {kind} entry named {name!r}"
    return matches[0]


def effective_envs(spec: dict[str, Any], comp: dict[str, Any]) -> dict[str, dict]:
    """Return what a component sees: app-level variables, then its own."""
    envs = {env["key"]: env for env in spec.get("envs", [])}
    envs.update({env["key"]: env for env in comp.get("envs", [])})
    return envs


def all_envs(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, variable)`` for every variable defined anywhere."""
    for index, env in enumerate(spec.get("envs", [])):
        yield f"/envs/{index}", env
    for kind, comp in components(spec):
        for index, env in enumerate(comp.get("envs", [])):
            yield f"/{kind}/{comp['name']}/envs/{index}", env


def is_available_at_run_time(env: dict[str, Any]) -> bool:
    """Tell whether a variable is set in the running container."""
    return env.get("scope", "RUN_AND_BUILD_TIME") in RUN_TIME_SCOPES


def is_binding(value: str) -> bool:
    """Tell whether ``value`` is exactly one bindable variable, ``${...}``."""
    return BINDING.fullmatch(value) is not None


def comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of an App Spec without what may differ between the files.

    That is every component's source, and the values of SECRET variables
    (app.yaml may hold an app's encrypted EV[...] value; the template never).
    """
    stripped = copy.deepcopy(spec)
    for _, comp in components(stripped):
        for key in SOURCE_KEYS:
            comp.pop(key, None)
    for _, env in all_envs(stripped):
        if env.get("type") == "SECRET":
            env.pop("value", None)
    return stripped


# Schema validation of the real files.


def test_app_spec_is_valid_against_the_app_spec_schema() -> None:
    """.do/app.yaml satisfies AppSpec: types, enums, bounds, patterns."""
    assert schema_errors(app_spec(), APP_SPEC_SCHEMA_ID) == []


def test_deploy_template_is_valid_against_the_deploy_template_schema() -> None:
    """.do/deploy.template.yaml is ``{spec: AppSpec}``."""
    assert schema_errors(deploy_template(), DEPLOY_TEMPLATE_SCHEMA_ID) == []


def test_app_spec_uses_only_declared_keys() -> None:
    """Every key of .do/app.yaml is one the schema declares."""
    assert undeclared_keys(app_spec(), APP_SPEC_SCHEMA_ID) == []


def test_deploy_template_uses_only_declared_keys() -> None:
    """Every key of .do/deploy.template.yaml is one the schema declares."""
    assert undeclared_keys(deploy_template(), DEPLOY_TEMPLATE_SCHEMA_ID) == []


def test_copied_schema_files_hold_their_whole_ref_closure() -> None:
    """Every $ref in tests/data/do-app-spec, godo's additions included,
    names a file that was copied."""

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    missing = sorted(
        f"{path.name} -> {ref}"
        for path in SCHEMA_DIR.glob("*.yml")
        for ref in refs(
            with_additions(path.name, yaml.safe_load(path.read_text(encoding="utf-8")))
        )
        if not (SCHEMA_DIR / ref).is_file()
    )
    assert (SCHEMA_DIR / "app_spec.yml").is_file()
    assert missing == []


def test_godo_additions_add_only_what_upstream_lacks() -> None:
    """Each addition targets a node of a copied file that lacks what it
    adds; once upstream declares a field, its addition must go."""
    problems = []
    for name, entries in godo_additions().items():
        upstream = yaml.safe_load((SCHEMA_DIR / name).read_text(encoding="utf-8"))
        for entry in entries:
            where = f"{name}{entry['pointer']}"
            assert entry["godo"], f"{where}: say which godo declaration it is"
            try:
                target = _pointed(upstream, entry["pointer"])
            except (KeyError, IndexError, ValueError, TypeError):
                problems.append(f"{where}: no such node upstream")
                continue
            added = entry["enum"] if "enum" in entry else entry["properties"]
            problems += [
                f"{where}: upstream has {key}" for key in added if key in target
            ]
    assert problems == []


def test_godo_additions_are_what_the_validator_sees() -> None:
    """SCHEDULED and ``schedule`` are declared once the files load."""
    job = REGISTRY.resolver().lookup(SCHEMA_BASE_URI + "app_job_spec.yml").contents
    assert "SCHEDULED" in job["allOf"][2]["properties"]["kind"]["enum"]
    assert {"schedule", "alerts", "timeout"} <= job["allOf"][2]["properties"].keys()


# The validator catches mistakes (negative tests on mutated copies).


def test_misspelt_key_passes_the_schema_but_is_reported_as_undeclared() -> None:
    """``http_prot`` is invisible to the schema alone; the key walk finds it."""
    spec = app_spec()
    web = component(spec, "services", "web")
    web["http_prot"] = web.pop("http_port")

    assert schema_errors(spec, APP_SPEC_SCHEMA_ID) == []
    assert undeclared_keys(spec, APP_SPEC_SCHEMA_ID) == ["/services/0/http_prot"]


def test_misspelt_nested_key_in_the_deploy_template_is_reported() -> None:
    """The walk follows ``spec``, services and ``health_check`` down."""
    template = deploy_template()
    check = template["spec"]["services"][0]["health_check"]
    check["http_pth"] = check.pop("http_path")

    assert undeclared_keys(template, DEPLOY_TEMPLATE_SCHEMA_ID) == [
        "/spec/services/0/health_check/http_pth"
    ]


def test_only_envs_alerts_and_features_are_accepted_as_extra_root_keys() -> None:
    """The API's undeclared root keys pass; a near miss such as ``env`` fails."""
    spec = app_spec()
    spec["features"] = ["buildpack-stack=ubuntu-22"]
    assert undeclared_keys(spec, APP_SPEC_SCHEMA_ID) == []

    spec["env"] = spec.pop("envs")
    assert undeclared_keys(spec, APP_SPEC_SCHEMA_ID) == ["/env"]


def test_deploy_template_refuses_an_app_spec_at_its_root() -> None:
    """Forgetting the ``spec:`` wrapper is an error, not a silent pass."""
    errors = schema_errors(app_spec(), DEPLOY_TEMPLATE_SCHEMA_ID)
    assert "/: 'spec' is a required property" in errors
    assert "/name" in undeclared_keys(app_spec(), DEPLOY_TEMPLATE_SCHEMA_ID)


def test_wrong_enum_values_are_schema_errors() -> None:
    """Job kind, database engine and variable scope must be known values."""
    spec = app_spec()
    spec["jobs"][0]["kind"] = "PREDEPLOY"
    spec["databases"][0]["engine"] = "POSTGRES"
    spec["envs"][0]["scope"] = "RUNTIME"

    errors = schema_errors(spec, APP_SPEC_SCHEMA_ID)

    assert [e.split(":")[0] for e in errors] == [
        "/databases/0/engine",
        "/envs/0/scope",
        "/jobs/0/kind",
    ]
    assert all("is not one of" in e for e in errors)


def test_unknown_instance_size_is_a_schema_error() -> None:
    """``instance_size_slug`` must be one of the listed sizes."""
    spec = app_spec()
    component(spec, "services", "web")["instance_size_slug"] = "apps-s-1vcpu-3gb"

    assert schema_errors(spec, APP_SPEC_SCHEMA_ID) == [
        "/services/0/instance_size_slug: 'apps-s-1vcpu-3gb' is not valid under"
        " any of the given schemas"
    ]


def test_wrong_types_are_schema_errors() -> None:
    """A quoted number, an unquoted flag and a string for a flag all fail."""
    spec = app_spec()
    web = component(spec, "services", "web")
    web["instance_count"] = "2"
    web["github"]["deploy_on_push"] = "yes"
    keys = [env["key"] for env in spec["envs"]]
    debug = keys.index("DJANGO_DEBUG")
    spec["envs"][debug]["value"] = 0  # what YAML makes of an unquoted 0

    assert schema_errors(spec, APP_SPEC_SCHEMA_ID) == [
        f"/envs/{debug}/value: 0 is not of type 'string'",
        "/services/0/github/deploy_on_push: 'yes' is not of type 'boolean'",
        "/services/0/instance_count: '2' is not of type 'integer'",
    ]


def test_misspelt_schedule_and_alert_keys_are_reported() -> None:
    """The added fields are walked like upstream ones: strict on keys."""
    spec = app_spec()
    job = component(spec, "jobs", "clearsessions")
    job["schedule"]["crontab"] = job["schedule"].pop("cron")
    web = component(spec, "services", "web")
    web["alerts"][0]["treshold"] = web["alerts"][0].pop("value")
    web["liveness_health_check"]["path"] = "/livez"

    assert undeclared_keys(spec, APP_SPEC_SCHEMA_ID) == [
        "/services/0/liveness_health_check/path",
        "/services/0/alerts/0/treshold",
        "/jobs/1/schedule/crontab",
    ]


def test_wrong_alert_and_liveness_values_are_schema_errors() -> None:
    """Alert rules, operators and windows are enums; a liveness check takes
    one success to pass, at most."""
    spec = app_spec()
    web = component(spec, "services", "web")
    web["alerts"][0]["rule"] = "RESTARTS"
    web["alerts"][1]["window"] = "FIVE_MINUTE"
    web["alerts"][2]["operator"] = "ABOVE"
    web["liveness_health_check"]["success_threshold"] = 2
    component(spec, "jobs", "clearsessions")["kind"] = "CRON"

    errors = schema_errors(spec, APP_SPEC_SCHEMA_ID)

    assert [e.split(":")[0] for e in errors] == [
        "/jobs/1/kind",
        "/services/0/alerts/0/rule",
        "/services/0/alerts/1/window",
        "/services/0/alerts/2/operator",
        "/services/0/liveness_health_check/success_threshold",
    ]


def test_out_of_range_termination_is_a_schema_error() -> None:
    """``drain_seconds`` is capped at 110 by the platform."""
    spec = app_spec()
    component(spec, "services", "web")["termination"]["drain_seconds"] = 300

    assert schema_errors(spec, APP_SPEC_SCHEMA_ID) == [
        "/services/0/termination/drain_seconds: 300 is greater than the maximum of 110"
    ]


# What the app relies on.


def test_web_runs_daphne_on_port_8080() -> None:
    """The run command is the README's plus the socket lifetime, and Daphne's
    port is the http_port."""
    web = component(app_spec(), "services", "web")
    assert web["run_command"] == RUN_COMMAND
    assert web["http_port"] == 8080
    assert web["environment_slug"] == "python"


def test_health_check_is_healthz_not_readyz() -> None:
    """The platform probes /healthz, which never touches Redis or the DB."""
    check = component(app_spec(), "services", "web")["health_check"]
    assert check["http_path"] == "/healthz"


def test_liveness_check_probes_the_route_the_app_serves() -> None:
    """``liveness_health_check`` asks /livez on Daphne's port; not /healthz,
    which a stalled loop still answers between stalls, and not /readyz,
    which would restart every instance for a Valkey blip."""
    from core.liveness import LIVENESS_PATH

    web = component(app_spec(), "services", "web")
    check = web["liveness_health_check"]
    assert check["http_path"] == LIVENESS_PATH
    assert check["port"] == web["http_port"]
    assert LIVENESS_PATH not in (web["health_check"]["http_path"], "/readyz")


def test_liveness_check_restarts_a_stuck_loop_not_a_single_stall() -> None:
    """/livez fails for a stall's length plus its bound, and the platform
    restarts after ``failure_threshold`` failed probes a period apart. So a
    single stall up to twice the bound never restarts the instance, and a
    loop that stays stuck is restarted within a minute. A probe gives up
    before the next one starts, and probing starts after the readiness
    check's does."""
    spec = app_spec()
    web = component(spec, "services", "web")
    check = web["liveness_health_check"]
    failing_probes_span = (check["failure_threshold"] - 1) * check["period_seconds"]
    assert "SWITCHBOARD_LIVENESS_STALL_SECONDS" not in effective_envs(spec, web)
    assert failing_probes_span - LIVENESS_STALL_SECONDS >= 2 * LIVENESS_STALL_SECONDS
    assert check["failure_threshold"] * check["period_seconds"] <= 60
    assert check["timeout_seconds"] < check["period_seconds"]
    assert (
        check["initial_delay_seconds"] >= web["health_check"]["initial_delay_seconds"]
    )


def test_web_alerts_on_restarts_cpu_and_memory() -> None:
    """Any restart (a liveness kill, an out-of-memory kill, a crash), and
    CPU or memory high for minutes on end."""
    alerts = {
        alert["rule"]: alert
        for alert in component(app_spec(), "services", "web")["alerts"]
    }
    assert alerts.keys() == INSTANCE_RULES
    assert alerts["RESTART_COUNT"]["value"] == 0
    for rule in ("CPU_UTILIZATION", "MEM_UTILIZATION"):
        assert 50 <= alerts[rule]["value"] < 100, rule  # percent
    for alert in alerts.values():
        assert alert["operator"] == "GREATER_THAN"
        assert not alert.get("disabled", False)


def test_every_alert_is_where_its_rule_applies() -> None:
    """App-level rules at the app level, instance rules on components,
    JOB_INVOCATION_FAILED on scheduled jobs only; a threshold rule has an
    operator, a value and a window, an event rule none of them."""
    for spec in (app_spec(), deploy_template()["spec"]):
        placed = [("app", None, alert) for alert in spec.get("alerts", [])]
        placed += [
            (kind, comp, alert)
            for kind, comp in components(spec)
            for alert in comp.get("alerts", [])
        ]
        problems = []
        for kind, comp, alert in placed:
            rule = alert["rule"]
            if kind == "app":
                allowed = APP_LEVEL_RULES
            elif kind == "services":
                allowed = SERVICE_RULES
            elif kind == "jobs" and comp.get("kind") == "SCHEDULED":
                allowed = SCHEDULED_JOB_RULES
            else:
                allowed = INSTANCE_RULES
            if rule not in allowed:
                problems.append(f"{rule} on {kind}")
            threshold = {"operator", "value", "window"} & alert.keys()
            if rule in THRESHOLD_RULES and len(threshold) != 3:
                problems.append(f"{rule} without an operator, value and window")
            if rule not in THRESHOLD_RULES and threshold:
                problems.append(f"{rule} is an event: {sorted(threshold)}")
        assert problems == []


def test_a_scheduled_job_clears_expired_sessions_daily() -> None:
    """``clearsessions`` once a day at a fixed UTC time, off the hour when
    other jobs crowd in, with an alert when a run fails."""
    job = component(app_spec(), "jobs", "clearsessions")
    assert job["kind"] == "SCHEDULED"
    assert job["run_command"] == CLEARSESSIONS_COMMAND
    cron = job["schedule"]["cron"]
    minute, hour, *rest = cron.split()
    assert rest == ["*", "*", "*"], cron
    assert minute.isdigit(), cron
    assert hour.isdigit(), cron
    assert 1 <= int(minute) <= 59
    assert 0 <= int(hour) <= 23
    assert job["schedule"]["time_zone"] == "UTC"
    assert [alert["rule"] for alert in job["alerts"]] == ["JOB_INVOCATION_FAILED"]
    assert job["instance_count"] == 1


def test_the_scheduled_job_runs_the_web_services_code_and_settings() -> None:
    """Same repository, branch, buildpack and variables as web: it deletes
    from the database web writes sessions to."""
    spec = app_spec()
    web = component(spec, "services", "web")
    job = component(spec, "jobs", "clearsessions")
    assert job["github"] == web["github"]
    assert job["environment_slug"] == web["environment_slug"]
    assert effective_envs(spec, job) == effective_envs(spec, web)
    for key in ("DATABASE_URL", "DJANGO_SECRET_KEY"):
        assert is_available_at_run_time(effective_envs(spec, job)[key]), key


def test_only_scheduled_jobs_have_a_schedule() -> None:
    """A schedule on a deploy-time job would mean nothing; a SCHEDULED job
    without one would never run."""
    for spec in (app_spec(), deploy_template()["spec"]):
        for job in spec.get("jobs", []):
            assert ("schedule" in job) == (job["kind"] == "SCHEDULED"), job["name"]


def test_web_runs_several_instances_on_a_size_that_allows_it() -> None:
    """Two or more instances, on a size not limited to one container."""
    web = component(app_spec(), "services", "web")
    size = web["instance_size_slug"]
    assert web["instance_count"] >= 2
    assert size not in SINGLE_INSTANCE_SIZES
    assert not size.startswith(LEGACY_SIZE_PREFIXES)


def test_termination_drains_before_sigterm_and_allows_a_clean_close() -> None:
    """Both termination phases are set explicitly for WebSockets."""
    termination = component(app_spec(), "services", "web")["termination"]
    assert termination["drain_seconds"] >= 10
    assert 10 <= termination["grace_period_seconds"] <= 60


def test_a_pre_deploy_job_runs_migrate_with_the_database_and_secret_key() -> None:
    """``migrate`` runs before each deploy and sees what it needs."""
    spec = app_spec()
    jobs = [job for job in spec.get("jobs", []) if job.get("kind") == "PRE_DEPLOY"]
    assert [job["run_command"] for job in jobs] == [MIGRATE_COMMAND]

    envs = effective_envs(spec, jobs[0])
    for key in ("DATABASE_URL", "DJANGO_SECRET_KEY"):
        assert key in envs, f"{key} is not visible to the migrate job"
        assert is_available_at_run_time(envs[key]), f"{key} is build-time only"


def test_migrate_job_builds_from_the_same_source_as_web() -> None:
    """Same repository, branch and buildpack: the job runs the new code."""
    spec = app_spec()
    web = component(spec, "services", "web")
    job = component(spec, "jobs", "migrate")
    assert job["github"] == web["github"]
    assert job["environment_slug"] == web["environment_slug"]


def test_every_design_variable_reaches_the_running_web_service() -> None:
    """Each configuration variable (but PORT) is set at run time."""
    spec = app_spec()
    envs = effective_envs(spec, component(spec, "services", "web"))
    missing = [key for key in CONFIGURATION_VARIABLES if key not in envs]
    build_only = [
        key
        for key in CONFIGURATION_VARIABLES
        if key in envs and not is_available_at_run_time(envs[key])
    ]
    assert missing == []
    assert build_only == []


def test_variables_are_bound_to_the_platform_and_the_databases() -> None:
    """Flags are production values; everything else is a bindable variable."""
    spec = app_spec()
    envs = effective_envs(spec, component(spec, "services", "web"))
    assert {key: envs[key].get("value") for key in EXPECTED_VALUES} == (EXPECTED_VALUES)


def test_secret_key_is_an_encrypted_secret_with_no_literal_value() -> None:
    """DJANGO_SECRET_KEY is type SECRET, run time only, set outside the file."""
    for spec in (app_spec(), deploy_template()["spec"]):
        secret = effective_envs(spec, {})["DJANGO_SECRET_KEY"]
        assert secret["type"] == "SECRET"
        assert secret["scope"] == "RUN_TIME"
        assert secret.get("value", "EV[").startswith("EV[")


def test_no_variable_holds_a_literal_secret() -> None:
    """Secrets are bindings, encrypted values or absent; never plain text."""
    problems = []
    for name, spec in (("app", app_spec()), ("template", deploy_template()["spec"])):
        for where, env in all_envs(spec):
            value = env.get("value")
            if value is None or str(value).startswith("EV["):
                continue
            value = str(value)
            if env.get("type") == "SECRET":
                problems.append(f"{name}{where}: SECRET with a plain value")
            if env["key"] in SENSITIVE_VARIABLES and not is_binding(value):
                problems.append(f"{name}{where}: {env['key']} is not a binding")
            if re.search(r"://[^/@\s]*:[^/@\s]*@", value) or "-----BEGIN" in value:
                problems.append(f"{name}{where}: credentials in the value")
    assert problems == []


def test_bindings_name_the_app_or_a_declared_component() -> None:
    """``${db.X}`` needs a component ``db``; a typo would bind to nothing."""
    spec = app_spec()
    names = {c["name"] for _, c in components(spec)}
    names |= {db["name"] for db in spec.get("databases", [])}
    problems = []
    for where, env in all_envs(spec):
        for reference in BINDING.findall(str(env.get("value", ""))):
            owner, _, variable = reference.rpartition(".")
            if not owner and variable in APP_WIDE_BINDINGS:
                continue
            if owner in names and variable in DATABASE_BINDINGS:
                continue
            problems.append(f"{where}: ${{{reference}}}")
    assert problems == []


def test_database_bindings_are_run_time_only() -> None:
    """Database bindings do not exist during the build; scope says so."""
    spec = app_spec()
    databases = {db["name"] for db in spec["databases"]}
    build_visible = [
        where
        for where, env in all_envs(spec)
        if any(
            ref.split(".")[0] in databases
            for ref in BINDING.findall(str(env.get("value", "")))
        )
        and env.get("scope") != "RUN_TIME"
    ]
    assert build_visible == []


def test_databases_are_managed_postgresql_and_valkey_clusters() -> None:
    """``db`` is PostgreSQL, ``cache`` is Valkey, both production clusters."""
    databases = {db["name"]: db for db in app_spec()["databases"]}
    assert databases["db"]["engine"] == "PG"
    assert databases["cache"]["engine"] == "VALKEY"
    for db in databases.values():
        assert db["production"] is True
        assert db["cluster_name"]


def test_ingress_sends_every_path_to_web() -> None:
    """One rule: prefix / to the web service."""
    assert app_spec()["ingress"]["rules"] == [
        {"match": {"path": {"prefix": "/"}}, "component": {"name": "web"}}
    ]


# The two files agree.


def test_deploy_template_is_the_app_spec_but_for_component_sources() -> None:
    """Identical in substance; only sources and secret values may differ."""
    assert comparable(deploy_template()["spec"]) == comparable(app_spec())


def test_deploy_template_leaves_every_secret_for_the_form() -> None:
    """The button's user types the secrets; the template carries none."""
    valued = [
        where
        for where, env in all_envs(deploy_template()["spec"])
        if env.get("type") == "SECRET" and "value" in env
    ]
    assert valued == []


def test_app_spec_deploys_on_push_and_the_template_clones_the_same_repo() -> None:
    """app.yaml: GitHub with deploy_on_push; template: the same repo by URL."""
    spec = app_spec()
    template_components = dict(
        ((kind, c["name"]), c) for kind, c in components(deploy_template()["spec"])
    )
    for kind, comp in components(spec):
        github = comp["github"]
        assert github["deploy_on_push"] is True
        git = template_components[(kind, comp["name"])]["git"]
        assert git == {
            "repo_clone_url": f"https://github.com/{github['repo']}.git",
            "branch": github["branch"],
        }


def test_procfile_starts_the_same_daphne_command_on_port() -> None:
    """The Procfile's web process is the run command, with $PORT's default."""
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line.strip())
    assert processes == {
        "web": "daphne -b 0.0.0.0 -p ${PORT:-8080} --websocket_timeout -1 "
        "backend.asgi:application"
    }
    assert processes["web"].replace("${PORT:-8080}", "8080") == RUN_COMMAND


def test_python_version_file_pins_the_minor_version() -> None:
    """The buildpack reads .python-version; 3.11 is the supported floor."""
    assert (ROOT / ".python-version").read_text(encoding="utf-8") == "3.11\n"


def test_daphne_as_deployed_never_closes_a_websocket_for_its_age() -> None:
    """Read by Daphne's own argument parser: no socket lifetime, and
    the README's bind, port and application."""
    from daphne.cli import CommandLineInterface

    for spec in (app_spec(), deploy_template()["spec"]):
        program, *arguments = component(spec, "services", "web")["run_command"].split()
        assert program == "daphne"
        parsed = CommandLineInterface().parser.parse_args(arguments)
        assert parsed.websocket_timeout < 0  # Daphne: "-1 for infinite"
        assert (parsed.host, parsed.port, parsed.application) == (
            "0.0.0.0",
            8080,
            "backend.asgi:application",
        )
