"""The Channels tutorial's chat consumer, speaking the bench's frames.

As in https://channels.readthedocs.io/en/latest/tutorial/part_3.html: each
connection joins the room's group; each received message is a ``group_send``
that every member's consumer turns into a frame of its own. The only change
is the frame shape (``send`` in, ``message`` with ``body`` out), so the
bench's generator can drive it; no persistence, no auth.
"""

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer


class ChatConsumer(AsyncWebsocketConsumer):
    """One connection in one room: the tutorial pattern."""

    async def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        frame = json.loads(text_data or "{}")
        await self.channel_layer.group_send(
            self.room_group_name,
            {
                "type": "chat.message",
                "body": frame.get("body"),
                "client_id": frame.get("client_id"),
            },
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(
            text_data=json.dumps(
                {
                    "type": "message",
                    "room": self.room_name,
                    "body": event["body"],
                    "client_id": event["client_id"],
                }
            )
        )
