"""Test-only ASGI applications that fail on cue, for the fault suite.

Each wraps the project's ``backend.asgi:application`` and breaks one step
of the message path for messages whose body starts with a marker, so a test
can make a fault happen at an exact point of a real process. Nothing here
is importable by the project itself: production code has no fault hooks.
"""

from __future__ import annotations

import os
from typing import Any

from backend.asgi import application as project_application
from core import services

# A message whose body starts with this kills its instance after the commit
# and before the publish, as a SIGKILL or an OOM kill at that instant would.
DIE_BEFORE_PUBLISH = "die-before-publish"

_publish_message = services.publish_message


async def _dying_publish(room_id: int, message: Any) -> bool:
    if message["body"].startswith(DIE_BEFORE_PUBLISH):
        os._exit(137)  # no cleanup, no close frames: like SIGKILL
    return await _publish_message(room_id, message)


def _die_before_publish() -> Any:
    services.publish_message = _dying_publish
    return project_application


die_before_publish = _die_before_publish()
