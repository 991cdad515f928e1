"""One watcher for all of a hub's workspace containers (KubeSpawner's reflector, for podman).

``poll()`` of thirty workspaces must not start thirty ``podman inspect`` processes: every backend
asks the hub's one ``ContainerReflector`` instead, which answers from a snapshot of
``podman ps -a --filter label=<instance>`` no older than asked for. Concurrent askers share one
refresh (single flight). The same loop reaps orphans: a container of this hub that no workspace
wants (no spawner starting it, no server recorded for it) for ``grace`` seconds is removed. Such
containers are what a hub killed in the middle of a start leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..commands import run_command

LABEL_PREFIX = "org.kinetic.workspace"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_USER = f"{LABEL_PREFIX}.user"
LABEL_SERVER = f"{LABEL_PREFIX}.server"
LABEL_ANALYSIS = f"{LABEL_PREFIX}.analysis"
LABEL_ROLE = f"{LABEL_PREFIX}.role"


@dataclass
class ContainerInfo:
    name: str
    id: str
    state: str  # running, exited, created, ...
    exit_code: int
    created: float  # unix time
    labels: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.state in ("running", "created", "configured", "initialized", "paused", "stopping")


class ReflectorError(RuntimeError):
    pass


class ContainerReflector:
    """Snapshots of one hub's workspace containers, shared by all its spawners."""

    _instances: dict[tuple, ContainerReflector] = {}

    def __init__(self, podman: str, instance: str, log):
        self.podman = podman
        self.instance = instance
        self.log = log
        self.containers: dict[str, ContainerInfo] = {}
        self.taken_at = 0.0
        self._refreshing: asyncio.Future | None = None
        self._reaper: asyncio.Task | None = None
        self._unwanted_since: dict[str, float] = {}

    @classmethod
    def for_instance(cls, podman: str, instance: str, log) -> ContainerReflector:
        key = (podman, instance, id(asyncio.get_running_loop()))
        if key not in cls._instances:
            cls._instances[key] = cls(podman, instance, log)
        return cls._instances[key]

    # -- snapshots ------------------------------------------------------------------------------
    async def _list(self) -> dict[str, ContainerInfo]:
        argv = [
            "nice",
            "-n",
            "10",
            self.podman,
            "ps",
            "-a",
            "--filter",
            f"label={LABEL_INSTANCE}={self.instance}",
            "--format",
            "json",
        ]
        rc, out, err = await run_command(argv, 60, merge_stderr=False)
        if rc != 0:
            raise ReflectorError(f"podman ps failed: {err[-300:]}")
        found = {}
        for c in json.loads(out or b"[]") or []:
            names = c.get("Names") or []
            if not names:
                continue
            found[names[0]] = ContainerInfo(
                name=names[0],
                id=c.get("Id", ""),
                state=str(c.get("State", "")).lower(),
                exit_code=int(c.get("ExitCode") or 0),
                created=float(c.get("Created") or 0),
                labels=c.get("Labels") or {},
            )
        return found

    async def snapshot(self, max_age: float) -> dict[str, ContainerInfo]:
        """Containers by name, from a listing taken at most ``max_age`` seconds ago.

        Raises ReflectorError when podman cannot be asked (callers treat that as "unknown")."""
        if time.monotonic() - self.taken_at <= max_age:
            return self.containers
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh())
        fut = self._refreshing
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._refreshing is fut:
                self._refreshing = None

    async def _refresh(self) -> dict[str, ContainerInfo]:
        started = time.monotonic()
        containers = await self._list()
        self.containers, self.taken_at = containers, started
        return containers

    def forget(self) -> None:
        """The next snapshot must be fresh (after this process created or removed a container)."""
        self.taken_at = 0.0

    # -- orphans --------------------------------------------------------------------------------
    def start_reaper(
        self, wanted: Callable[[ContainerInfo], bool], remove, interval: float, grace: float
    ) -> None:
        """Every ``interval`` s: a container ``wanted`` has said no to for ``grace`` s is removed
        with ``await remove(name)``. Started once per hub; runs until the loop ends."""
        if self._reaper is not None and not self._reaper.done():
            return
        self._reaper = asyncio.ensure_future(self._reap_forever(wanted, remove, interval, grace))

    async def _reap_forever(self, wanted, remove, interval, grace):
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once(wanted, remove, grace)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the reaper must outlive any one bad pass
                self.log.warning("workspace reaper: %s", e)

    async def reap_once(self, wanted, remove, grace: float) -> list[str]:
        containers = await self.snapshot(max_age=0)
        now = time.monotonic()
        removed = []
        for name in list(self._unwanted_since):
            if name not in containers:
                del self._unwanted_since[name]
        for name, info in containers.items():
            if wanted(info):
                self._unwanted_since.pop(name, None)
                continue
            since = self._unwanted_since.setdefault(name, now)
            if now - since >= grace:
                self.log.warning(
                    "removing workspace container %s: no server of this hub owns it "
                    "(left by a hub that stopped during a start?)",
                    name,
                )
                await remove(name)
                self._unwanted_since.pop(name, None)
                removed.append(name)
        if removed:
            self.forget()
        return removed


__all__ = [
    "ContainerReflector",
    "ContainerInfo",
    "ReflectorError",
    "LABEL_INSTANCE",
    "LABEL_USER",
    "LABEL_SERVER",
    "LABEL_ANALYSIS",
    "LABEL_ROLE",
]
