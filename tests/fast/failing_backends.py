"""Tiny workspace backends that fail one way each, for the in-process failure-path tests
(JupyterHub's own idiom: its tests plug ``BadSpawner``, ``SlowSpawner``, ``NeverSpawner`` into a
MockHub). They sit behind ``WorkspaceSpawner``'s real backend seam (``kinetic_spawner.backends``),
registered by the tests in ``BACKENDS``; nothing in the package knows them.

``TinyBackend`` works: its "workspace server" is a small HTTP server inside the test process that
answers every request. The others derive from it and break one thing. Each fails only
``failures`` times (class attribute, set by the test), so a second start shows that a failure
left nothing behind that blocks the next one.
"""

from __future__ import annotations

import asyncio
import socket
from typing import ClassVar

from kinetic_spawner.backends import (
    STEP_HOST,
    STEP_PROVISION,
    STEP_SERVER,
    STEP_STORAGE,
    Address,
    BackendError,
    WorkspaceBackend,
    WorkspaceRequest,
)

# the steps a backend goes through, in order, with the words the real backends use
STEPS = [
    ("reserve", None, None),
    ("host", STEP_HOST, "Acquiring a host"),
    ("storage", STEP_STORAGE, "Preparing storage for the analysis home"),
    ("provision", STEP_PROVISION, "Provisioning the workspace"),
    ("server", STEP_SERVER, "Starting the workspace server"),
]

# every tiny server still listening, by port: "nothing left running" is an empty dict
LISTENING: dict[int, asyncio.AbstractServer] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"tiny": "workspace"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # the connection opens, and closes without a word


class TinyBackend(WorkspaceBackend):
    """A backend that works, in the test process: the server is a tiny HTTP server."""

    kind: ClassVar[str] = "tiny"
    failures: ClassVar[int] = 0  # how many starts still fail (the failing subclasses)
    # when set, a failing step waits for it before raising: the test first attaches to the
    # progress stream, as the researcher's page does, so it sees every step before the failure
    gate: ClassVar[asyncio.Event | None] = None
    starts: ClassVar[int] = 0  # starts attempted, all instances
    stops: ClassVar[int] = 0  # stops, all instances

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    @classmethod
    def reset(cls, failures: int = 0) -> None:
        cls.failures, cls.starts, cls.stops, cls.gate = failures, 0, 0, None

    def _failing(self) -> bool:
        return type(self).failures > 0

    async def _failed(self) -> None:
        type(self).failures -= 1
        if type(self).gate is not None:
            await type(self).gate.wait()

    async def reserve_address(self) -> Address:
        self.port = free_port()
        return Address("127.0.0.1", self.port)

    async def step(self, name: str, on_step) -> None:
        """Report one step (the real backends' words); subclasses break here."""
        for step, percent, message in STEPS:
            if step == name and percent is not None:
                on_step(percent, message)

    async def start(self, request: WorkspaceRequest, on_step) -> tuple[str, int]:
        type(self).starts += 1
        for name in ("host", "storage", "provision"):
            await self.step(name, on_step)
        await self.step("server", on_step)
        self.server = await asyncio.start_server(self.connection_handler(), "127.0.0.1", self.port)
        LISTENING[self.port] = self.server
        await self.after_server(on_step)
        return "127.0.0.1", self.port

    def connection_handler(self):
        return _answer

    async def after_server(self, on_step) -> None:
        pass

    async def poll(self) -> int | None:
        return None if self.server is not None else 0

    async def stop(self, now: bool = False) -> None:
        type(self).stops += 1
        if self.server is not None:
            LISTENING.pop(self.port, None)
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None

    def get_state(self) -> dict:
        return {"port": self.port} if self.server is not None else {}


class RaisesAtStep(TinyBackend):
    """Raises at one step (``fail_at``, one of ``STEPS``' names) with ``error()``: by default a
    ``BackendError``, the way backends report a step that failed."""

    kind = "raises"
    fail_at: ClassVar[str] = "host"
    error: ClassVar = staticmethod(lambda step: BackendError(f"the {step} step failed (test backend)"))

    async def reserve_address(self) -> Address:
        address = await super().reserve_address()
        if self.fail_at == "reserve" and self._failing():
            await self._failed()
            raise self.error("reserve")
        return address

    async def step(self, name: str, on_step) -> None:
        await super().step(name, on_step)
        if name == self.fail_at and self._failing():
            await self._failed()
            raise self.error(name)

    async def after_server(self, on_step) -> None:
        # "server": the server process was started, then the step failed: it must be stopped
        if self.fail_at == "server-started" and self._failing():
            await self._failed()
            raise self.error("server")


class NeverAnswers(TinyBackend):
    """The server starts and accepts connections but never answers: the hub's own readiness wait
    (``Spawner.http_timeout``) gives up."""

    kind = "never-answers"

    def connection_handler(self):
        if not self._failing():
            return _answer
        type(self).failures -= 1
        return _hang_up


class Hangs(TinyBackend):
    """Provisioning never finishes (a host that never boots, a download that never ends): the
    hub's ``Spawner.start_timeout`` gives up and cancels the start."""

    kind = "hangs"

    async def step(self, name: str, on_step) -> None:
        await super().step(name, on_step)
        if name == "provision" and self._failing():
            type(self).failures -= 1
            await asyncio.Event().wait()  # forever, until cancelled


TEST_BACKENDS = {cls.kind: cls for cls in (TinyBackend, RaisesAtStep, NeverAnswers, Hangs)}
