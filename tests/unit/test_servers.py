"""``core.servers``: library internals used only on verified versions.

An upgrade of Daphne, autobahn, Twisted, uvicorn, websockets or Channels is
a deliberate act: these tests fail when ``requirements.txt`` pins, or this
environment holds, a version the adapters were not verified against; and
on such a version each adapter switches itself off, with one line logged,
and the app keeps working on the public path.
"""

import asyncio
import importlib.util
import logging
import sys
from types import ModuleType

import pytest
from channels.db import database_sync_to_async

import core.servers
from core import consumers
from core.servers import VERIFIED, backpressure, daphne, verified
from core.servers import dispatch as channels_dispatch
from tests.factories import RoomFactory
from tests.support.fake_transport import fake_transport_client
from tests.unit.conftest import connected, receive_until, send_json
from tests.unit.test_delivery import greeted, messages_through, path, post
from tests.unit.test_requirements import pinned


@pytest.fixture
def unverified(monkeypatch):
    """Make ``names`` look installed at a version nobody verified."""
    real = core.servers.installed

    def pretend(*names: str) -> None:
        monkeypatch.setattr(
            core.servers,
            "installed",
            lambda name: "999.0" if name in names else real(name),
        )
        verified.cache_clear()

    yield pretend
    verified.cache_clear()


def test_every_version_requirements_txt_pins_for_an_adapter_is_verified():
    pins = pinned()
    adapted = {name: pins[name] for name in VERIFIED if name in pins}
    # uvicorn and websockets are not deployed (App Platform runs Daphne).
    assert set(adapted) == {"daphne", "autobahn", "twisted", "channels"}
    unverified = {
        name: version
        for name, version in adapted.items()
        if version not in VERIFIED[name]
    }
    assert not unverified, (
        f"requirements.txt pins {unverified}, which core.servers was not verified "
        "on: run the integration tier on them, then add them to VERIFIED"
    )


def test_the_suite_runs_on_verified_versions_so_it_tests_the_adapters():
    for name, versions in VERIFIED.items():
        assert core.servers.installed(name) in versions, name


def test_an_unverified_version_switches_an_adapter_off_with_one_line(
    unverified, caplog
):
    unverified("websockets")
    with caplog.at_level(logging.WARNING, logger="core.servers"):
        assert not verified("Some adapter", "uvicorn", "websockets")
        assert not verified("Some adapter", "uvicorn", "websockets")
        assert verified("Another adapter", "uvicorn")
    [line] = caplog.messages
    assert line.startswith("Some adapter is off: verified only on uvicorn 0.55.0")
    assert line.endswith("not on websockets 999.0; using the public path")


def test_a_missing_library_is_not_verified(unverified, monkeypatch, caplog):
    monkeypatch.setattr(core.servers, "installed", lambda name: None)
    verified.cache_clear()
    with caplog.at_level(logging.WARNING, logger="core.servers"):
        assert not verified("Some adapter", "daphne")
    assert "daphne (missing)" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("library", ["uvicorn", "websockets"])
async def test_on_an_unverified_server_every_frame_goes_through_asgi(
    unverified, caplog, library
):
    """The direct writer is off, and says so; live messages still arrive,
    in order. Either library of uvicorn's WebSocket protocol turns it off."""
    unverified(library)
    lobby = await database_sync_to_async(RoomFactory)(slug="lobby")
    with caplog.at_level(logging.WARNING, logger="core.servers"):
        async with fake_transport_client(path("lobby")) as client:
            await greeted(client)
            sent = [await post(lobby, f"message {n}") for n in range(3)]
            assert await messages_through(client, sent[-1]) == sent
    texts = [text for text in client.server.asgi_texts if '"message"' in text]
    assert len(texts) == 3
    [line] = [m for m in caplog.messages if " is off: " in m]
    assert line.startswith(f"{backpressure.DIRECT_WRITES} is off")
    assert f"not on {library} 999.0" in line


def test_the_direct_writer_still_reads_the_buffer_when_off(unverified):
    """Off, frames go through ASGI, but a client past the limit is still
    caught: without it, a client that stops reading fills the memory."""
    unverified("twisted")

    class Transport:
        dataBuffer = b"x" * 200
        offset = 0
        _tempDataLen = 0
        TLS = False
        disconnecting = False

        def abortConnection(self) -> None:
            raise AssertionError("not dropped by offering")

    class Protocol:
        STATE_OPEN = 1
        state = 1
        send_queue = ()
        _perMessageCompress = None
        transport = Transport()

    buffer = backpressure._twisted(Protocol(), limit_bytes=100)
    assert buffer.queued() == 200
    assert buffer.offer(b"frame") is backpressure.TOO_FULL
    Protocol.transport.dataBuffer = b""
    assert buffer.offer(b"frame") is backpressure.DECLINED


def fresh_ws_protocol(monkeypatch) -> ModuleType:
    """A new, unpatched copy of daphne.ws_protocol in its place."""
    spec = importlib.util.find_spec("daphne.ws_protocol")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "daphne.ws_protocol", module)
    return module


def patched(module: ModuleType) -> set[str]:
    protocol = module.WebSocketProtocol
    return {
        name
        for name in ("onOpen", "onClose", "handle_reply")
        if getattr(getattr(protocol, name), daphne._MARK, False)
    }


def test_daphne_is_patched_on_a_verified_version(monkeypatch):
    module = fresh_ws_protocol(monkeypatch)
    daphne.apply()
    assert patched(module) == {"onOpen", "onClose", "handle_reply"}


def test_daphne_is_left_unpatched_on_an_unverified_version(unverified, monkeypatch):
    module = fresh_ws_protocol(monkeypatch)
    unverified("autobahn")
    daphne.apply()
    assert patched(module) == set()


@pytest.mark.django_db(transaction=True)
async def test_on_an_unverified_channels_its_own_dispatch_runs(unverified, monkeypatch):
    """Channels' dispatch (with its database hop per event) serves a room."""
    unverified("channels")
    assert not channels_dispatch.fast_dispatch_verified()
    monkeypatch.setattr(consumers, "_FAST_DISPATCH", False)
    hops = []
    real = consumers.AsyncWebsocketConsumer.dispatch

    async def channels_own(self, message):
        hops.append(message["type"])
        await real(self, message)

    monkeypatch.setattr(consumers.AsyncWebsocketConsumer, "dispatch", channels_own)
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with connected("lobby") as ws:
        await send_json(ws, {"type": "ping"})
        await receive_until(ws, lambda f: f["type"] == "pong")
    assert hops[:2] == ["websocket.connect", "websocket.receive"]


# --- Daphne's per-connection queue (core.servers.daphne.ApplicationQueue) ---


async def drive(queue, steps):
    """Run ``steps`` on ``queue``; what each reader got, in order, and what
    is left. Readers run only at a ``run`` step."""
    got = []

    async def reader(name):
        got.append((name, await queue.get()))

    readers = {}
    for step, *args in steps:
        if step == "put":
            queue.put_nowait(args[0])
        elif step == "read":
            readers[args[0]] = asyncio.ensure_future(reader(args[0]))
        elif step == "cancel":
            readers[args[0]].cancel()
        elif step == "run":
            for _ in range(3):  # each woken reader, and what it wakes
                await asyncio.sleep(0)
    for task in readers.values():
        task.cancel()
    await asyncio.gather(*readers.values(), return_exceptions=True)
    return got, queue.qsize()


RUN = ("run",)
STEPS = [
    # in order, one reader at a time, and one that waits for a put
    [("put", 1), ("put", 2), ("read", "a"), RUN, ("read", "b"), RUN,
     ("read", "c"), RUN, ("put", 3), RUN],
    # two wait; the first is woken, then cancelled before it runs: the
    # item goes to the other, none is lost
    [("read", "a"), ("read", "b"), RUN, ("put", 1), ("cancel", "a"), RUN],
    # a waiting reader cancelled: the next put goes to the one after
    [("read", "a"), RUN, ("cancel", "a"), ("read", "b"), RUN, ("put", 1),
     ("put", 2), RUN],
]  # fmt: skip


@pytest.mark.parametrize("steps", STEPS)
async def test_the_queue_daphne_gets_reads_as_asyncio_queue_does(steps):
    # Daphne's own asyncio.Queue is the reference, step by step.
    assert await drive(daphne.ApplicationQueue(), steps) == await drive(
        asyncio.Queue(), steps
    )


async def test_the_queue_holds_nothing_once_read():
    queue = daphne.ApplicationQueue()
    for item in range(1000):
        queue.put_nowait(item)
    assert [await queue.get() for _ in range(1000)] == list(range(1000))
    assert queue.empty()
    assert sys.getsizeof(queue._items) == sys.getsizeof([])  # storage freed
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


@pytest.mark.django_db(transaction=True)
async def test_a_connection_has_no_task_of_its_own_waiting_to_receive():
    """Channels' run loop waits on ``receive()`` in a task per connection
    (and makes one per event); the consumers await it themselves."""
    await database_sync_to_async(RoomFactory)(slug="lobby")
    async with connected("lobby") as ws:
        await send_json(ws, {"type": "ping"})
        await receive_until(ws, lambda f: f["type"] == "pong")
        receiving = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "Queue.get"
        ]
        assert receiving == []
