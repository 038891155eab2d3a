"""The OpenAPI document tells the truth: schemathesis against a real Daphne.

One instance on PostgreSQL and Redis serves ``/api/schema/``; schemathesis
loads the document from it and sends every operation generated requests,
valid and invalid, once with a user's token and once anonymously (then it
also makes up ``Authorization`` headers of its own). Every answer must be
below 500 and conform to the document: a declared status, the declared
content type and body, and a 401 or 403 wherever the document requires
authentication. The run is seeded and derandomized, so CI sees the same
requests every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from schemathesis.core.transport import Response

from harness.app import AppProcess
from harness.deployment import Deployment, Launcher
from harness.http import create_room, http_json
from tests.integration.common import PASSWORD

pytestmark = pytest.mark.integration

USERS = 3
# Generated requests per operation in the fuzzing phase (the coverage phase
# adds its own boundary cases): enough to reach every status the API
# answers, few enough for the whole file to take well under 90 s.
MAX_EXAMPLES = 40
SEED = 20250602

# The instance's own limits, raised so that generated requests reach the
# views; the refusals themselves are documented and tested elsewhere
# (test_http_limits.py).
UNLIMITED = {
    f"SWITCHBOARD_{name}": "100000"
    for name in (
        "CREDENTIAL_ADDRESS_BURST",
        "CREDENTIAL_USER_ADDRESS_BURST",
        "CREDENTIAL_USER_BURST",
        "ROOM_CREATE_BURST",
        "MEMBER_ADD_BURST",
        "SEND_BURST",
        "SEARCH_BURST",
        "READ_BURST",
        "USERS_LOOKUP_BURST",
    )
}


@dataclass
class Caller:
    """Who sends the generated requests: a user with a token, or nobody."""

    app: AppProcess
    username: str | None = None
    token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"} if self.token else {}

    def after(self, case: schemathesis.Case, response: Response) -> None:
        """A generated ``DELETE /api/auth/token/`` revokes the token: sign
        in again, so the next requests are still the user's."""
        if (
            self.username is not None
            and case.method.upper() == "DELETE"
            and case.path == "/api/auth/token/"
            and response.status_code == 204
        ):
            status, body = http_json(
                self.app,
                "POST",
                "/api/auth/token/",
                body={"username": self.username, "password": PASSWORD},
            )
            assert status == 200, body
            self.token = body["token"]


@pytest.fixture(scope="module")
def api(module_launcher: Launcher, deployment: Deployment) -> AppProcess:
    (app,) = module_launcher.launch("api", env=UNLIMITED)
    return app


@pytest.fixture(scope="module")
def rooms(api: AppProcess, deployment: Deployment) -> list[str]:
    """Rooms the generated requests may name: a public one with messages,
    and a private one of the first user's with the second as a member."""
    tokens = deployment.fetch_tokens(api)
    owner, member = deployment.usernames[:2]
    # Fixed slugs (the module's database is its own): the same requests
    # every run.
    public = create_room(api, tokens[owner], "public")["slug"]
    private = create_room(api, tokens[owner], "private", private=True)
    for number in range(3):
        status, body = http_json(
            api,
            "POST",
            f"/api/rooms/{public}/messages/",
            token=tokens[owner],
            body={"body": f"hello {number}"},
        )
        assert status == 201, body
    status, body = http_json(
        api,
        "POST",
        f"/api/rooms/{private['slug']}/members/",
        token=tokens[owner],
        body={"username": member},
    )
    assert status == 201, body
    return [public, private["slug"]]


@pytest.fixture(scope="module", params=["token", "anonymous"])
def caller(
    request: pytest.FixtureRequest, api: AppProcess, deployment: Deployment
) -> Caller:
    if request.param == "anonymous":
        return Caller(api)
    owner = deployment.usernames[0]
    return Caller(api, owner, deployment.fetch_tokens(api)[owner])


@pytest.fixture(scope="module")
def api_schema(caller: Caller, rooms: list[str], deployment: Deployment) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Our own token is sent as a header; made-up ones only
                # when anonymous.
                "with-security-parameters": caller.token is None,
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                **{
                    name: {"enabled": True}
                    for name in (
                        "not_a_server_error",
                        "status_code_conformance",
                        "content_type_conformance",
                        "response_schema_conformance",
                        "response_headers_conformance",
                        "ignored_auth",
                        "unsupported_method",
                        "negative_data_rejection",
                        "missing_required_header",
                        "allow_header_conformance",
                    )
                },
            },
            # Path parameters name real rooms and users half the time;
            # made-up ones get a 404.
            "dictionaries": {
                "rooms": {"values": rooms},
                "public": {"values": rooms[:1]},
                "users": {"values": deployment.usernames},
            },
            "parameters": {
                "path.slug": {"dictionary": "rooms", "probability": 0.5},
                "path.username": {"dictionary": "users", "probability": 0.5},
            },
            "operations": [
                {
                    # An anonymous post to a private room is 404, as if the
                    # room did not exist (docs/protocol.md section 15), where
                    # ignored_auth wants a 401: its probe without the token
                    # must go to a public room.
                    "include-operation-id": "rooms_messages_create",
                    "parameters": {
                        "path.slug": {"dictionary": "public", "probability": 0.5}
                    },
                }
            ],
        }
    )
    return schemathesis.openapi.from_url(
        f"{caller.app.url}/api/schema/?format=json", config=config
    )


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis (4.32) renames each operation's subtest through
    ``Node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_answer_conforms_to_the_document(
    case: schemathesis.Case, caller: Caller
) -> None:
    response = case.call_and_validate(headers=caller.headers(), timeout=10)
    caller.after(case, response)
