"""WorkspaceSpawner: one workspace per Kinetic analysis — the JupyterHub glue only.

A workspace is the named server ``a-<analysisId>`` (see ``slugs``). The spawner checks the start
request (the analysis handed over by the authenticator), keeps one workspace per analysis, reports
progress, and saves a versioned state; *where* the workspace runs is its backend's business
(``backends/``: ``container`` by default, ``process`` for development, ``aws`` later)::

    reserve_address → start(request, on_step): host → storage → provision → server

After ``start`` returns, JupyterHub's own readiness wait (``Spawner.http_timeout``) waits until the
server answers. The researcher lands in RStudio (``/rstudio``) where RStudio Server exists in the
workspace, else in JupyterLab (``/lab``) with the R kernel.

What the authenticator must hand over
-------------------------------------
``KineticAuthenticator.pre_spawn_start`` sets ``spawner.analysis`` to the analysis as Kinetic gave
it *to this researcher* (at least ``id`` and ``api_key``; ``title`` is used in messages). It is kept
in memory only: the api key is never written to the hub database (see ``get_state``).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
from dataclasses import dataclass, field
from typing import ClassVar

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Any, CaselessStrEnum, Unicode, default, validate

from .backends import (
    STEP_WAIT,
    BackendError,
    ProvisionInputs,
    WorkspaceBackend,
    WorkspaceRequest,
    backend_class,
)
from .slugs import analysis_id_from_server_name, check_analysis_id

# get_state's layout; load_state reads every earlier one (1: the flat state of the "local" backend).
STATE_VERSION = 2


@dataclass
class _Run:
    """The progress events of one start(); progress() readers follow it as it grows."""

    events: list = field(default_factory=list)
    done: bool = False
    changed: asyncio.Future | None = None

    def __post_init__(self):
        self.changed = asyncio.get_running_loop().create_future()

    def _wake(self):
        fut, self.changed = self.changed, asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(None)

    def emit(self, progress: int, message: str):
        self.events.append({"progress": progress, "message": message})
        self._wake()

    def finish(self):
        self.done = True
        self._wake()


class WorkspaceSpawner(Spawner):
    """Start, find and stop the workspace of one Kinetic analysis."""

    # analysis id -> the spawner holding that analysis's workspace in this hub (pending or running).
    # Rebuilt after a hub restart by load_state. The hub's analysis page joins a running workspace
    # through sharing; this registry is the safety net against a second instance on one storage.
    _active: ClassVar[dict[str, WorkspaceSpawner]] = {}

    # -- configuration ------------------------------------------------------------------------------
    backend = Unicode(
        "container",
        config=True,
        help="""Where workspaces run.

        ``container`` (default): one podman container of the workspace image per analysis, uid
        1010, only the analysis home mounted, memory/CPU/process limits, its own network
        (``c.ContainerBackend.*``). ``process``: FOR DEVELOPMENT ONLY — a process of the hub's own
        user, which can read everything the hub can (``c.ProcessBackend.*``). ``aws``: an EC2
        instance per analysis with its home on EFS (not implemented yet: starting raises a clear
        error). A workspace started by one backend is always stopped by that backend, whatever this
        says after a restart (the backend is part of the saved state). A deployment can add its
        own backend by name to ``kinetic_spawner.backends.BACKENDS`` (``"module:Class"``).
        """,
    )

    @validate("backend")
    def _check_backend(self, proposal):
        kind = proposal["value"].strip().lower()
        from .backends import BACKENDS

        if kind not in BACKENDS and kind != "aws":
            raise ValueError(
                f"WorkspaceSpawner.backend must be one of {sorted([*BACKENDS, 'aws'])}, "
                f"not {proposal['value']!r}"
            )
        return kind

    kinetic_url = Unicode(
        config=True,
        help="""Base URL of Kinetic (or of the stand-in), from which provisioning downloads the
        analysis's synthetic data. Default: the ``KINETIC_URL`` environment variable. (The
        container backend rewrites a loopback host to its network's gateway.)
        """,
    )

    @default("kinetic_url")
    def _default_kinetic_url(self):
        return os.environ.get("KINETIC_URL", "")

    interface = CaselessStrEnum(
        ["auto", "rstudio", "lab"],
        default_value="auto",
        config=True,
        help="""What the researcher lands in.

        ``auto`` (default): RStudio (``/rstudio``, via jupyter-rsession-proxy) where the workspace
        has an ``rserver``, else JupyterLab (``/lab``) with the R kernel. ``rstudio`` / ``lab``
        force one. Ignored when ``Spawner.default_url`` is set.
        """,
    )

    cutoff_date = Unicode(
        "",
        config=True,
        help="""``YYYY-MM-DD`` written into ``main.r`` when a blank project is seeded (existing
        projects keep theirs). Empty (default): the hub's date on the day of seeding.
        """,
    )

    @validate("cutoff_date")
    def _check_cutoff(self, proposal):
        value = proposal["value"].strip()
        if value:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"cutoff_date must look like 2026-01-31, not {value!r}")
            datetime.date.fromisoformat(value)
        return value

    @default("start_timeout")
    def _default_start_timeout(self):
        return 300  # provisioning downloads data before the server even starts

    # -- set by the authenticator for each start (memory only) -------------------------------------
    analysis = Any(
        None,
        allow_none=True,
        help="""The analysis being opened, as Kinetic returned it to this researcher:
        ``{"id", "title", "api_key", ...}``. Set by ``KineticAuthenticator.pre_spawn_start`` before
        every start; held in memory only (the api key is never saved in the hub's state).""",
    )

    failure_message = Any(
        None,
        allow_none=True,
        help="""Why the last start failed, in words for the researcher (None while it has not
        failed). Read by the hub's progress page.""",
    )

    # -- internals ----------------------------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._backend: WorkspaceBackend | None = None
        self._run: _Run | None = None
        self._starting = False

    @classmethod
    def active_for(cls, analysis_id: str | int) -> WorkspaceSpawner | None:
        """The spawner holding this analysis's workspace in this hub (starting or running), if any.

        For the hub's analysis page: a co-researcher is sent to share that one
        (``spawner.user.name`` / ``spawner.name``) instead of starting a second."""
        spawner = cls._active.get(str(analysis_id))
        return spawner if spawner is not None and spawner._occupies() else None

    @property
    def analysis_id(self) -> str | None:
        return analysis_id_from_server_name(self.name)

    @property
    def _who(self) -> str:
        return f"{self.user.name}/{self.name or '(default)'}"

    @property
    def workspace_backend(self) -> WorkspaceBackend | None:
        """The backend holding (or last holding) this workspace, if one was made."""
        return self._backend

    def _backend_impl(self, kind: str | None = None) -> WorkspaceBackend:
        kind = kind or self.backend
        if self._backend is None or self._backend.kind != kind:
            self._backend = backend_class(kind)(self)
        return self._backend

    def _occupies(self) -> bool:
        return self._starting or (self._backend is not None and self._backend.running)

    def _claim(self, analysis_id: str) -> None:
        other = self._active.get(analysis_id)
        if other is not None and other is not self and other._occupies():
            owner = getattr(other.user, "name", "?")
            self.log.warning(
                "[%s] refused: analysis %s already has a workspace (%s/%s)",
                self._who,
                analysis_id,
                owner,
                other.name,
            )
            raise web.HTTPError(409, f"this analysis already has a workspace running (owned by {owner})")
        self._active[analysis_id] = self

    def _release(self) -> None:
        aid = self.analysis_id
        if aid and self._active.get(aid) is self:
            del self._active[aid]

    def _emit(self, progress: int, message: str) -> None:
        """The backends' step callback (``backends.StepCallback``)."""
        self.log.info("[%s] %s", self._who, message)
        if self._run is not None:
            self._run.emit(progress, message)

    def _check_request(self) -> tuple[str, dict]:
        aid = self.analysis_id
        if aid is None:
            raise web.HTTPError(
                400,
                f"{self.name or 'the default server'!r} is not an analysis workspace: workspaces are "
                f"named servers a-<analysisId>, opened from /hub/analysis/<analysisId>",
            )
        analysis = self.analysis
        if not isinstance(analysis, dict) or not analysis.get("api_key"):
            raise web.HTTPError(
                400,
                f"analysis {aid} was not handed over by the sign-in: open it from Kinetic "
                f"(/hub/analysis/{aid}) rather than starting the server directly",
            )
        try:
            given = check_analysis_id(analysis.get("id", ""))
        except ValueError:
            given = None
        if given != aid:
            raise web.HTTPError(400, f"server {self.name} is for analysis {aid}, not {given}")
        if not self.kinetic_url:
            raise web.HTTPError(500, "WorkspaceSpawner.kinetic_url is not configured (or KINETIC_URL)")
        return aid, analysis

    def _landing(self) -> str:
        if self.default_url:
            return ""  # JupyterHub passes Spawner.default_url itself
        return {"rstudio": "/rstudio", "lab": "/lab"}.get(self.interface, "")

    # -- the Spawner API ----------------------------------------------------------------------------
    async def start(self):
        """Start the analysis's workspace through the backend; returns (ip, port) for the proxy."""
        self._run = _Run()  # first: progress() readers must never wait for a start that failed
        self.failure_message = None
        try:
            aid, analysis = self._check_request()
            self._claim(aid)
        except BaseException as e:
            self._fail(e)
            raise
        self._starting = True
        try:
            return await self._start(aid, analysis)
        except BackendError as e:
            self.log.error("[%s] start failed: %s", self._who, e)
            await self._cleanup_failed_start()
            words = f"The workspace for analysis {aid} could not start: {e}"
            error = web.HTTPError(500, words)
            error.jupyterhub_message = words  # what JupyterHub's progress page shows, as is
            self._fail(error)
            raise error from None
        except BaseException as e:
            await self._cleanup_failed_start()
            self._fail(e)
            raise
        finally:
            self._starting = False
            self._run.finish()

    def _fail(self, error: BaseException) -> None:
        self.failure_message = (
            getattr(error, "log_message", None) or str(error) or "the workspace could not start"
        )
        self._run.finish()

    async def _cleanup_failed_start(self):
        if self._backend is not None and self._backend.running:
            await self._backend.stop(now=True)
            self._backend.clear_state()
        self._release()

    async def _start(self, aid: str, analysis: dict):
        try:
            backend = self._backend_impl()
        except NotImplementedError as e:
            raise web.HTTPError(501, str(e)) from None
        address = await backend.reserve_address()
        self.ip, self.port = address.bind_ip, address.port
        if address.hub_connect_url:
            self.hub_connect_url = address.hub_connect_url
        request = WorkspaceRequest(
            analysis_id=aid,
            title=str(analysis.get("title") or f"analysis {aid}"),
            user=self.user.name,
            server_name=self.name,
            provision=ProvisionInputs(
                analysis_id=aid,
                api_key=str(analysis["api_key"]),
                kinetic_url=self.kinetic_url,
                cutoff_date=self.cutoff_date or datetime.date.today().isoformat(),
            ),
            hub_env=self.get_env(),
            args=self.get_args(),
            default_url=self._landing(),
        )
        ip, port = await backend.start(request, self._emit)
        self._emit(STEP_WAIT, "Waiting for the workspace server to answer")
        return ip, port

    async def progress(self):
        """Yield ``{"progress", "message"}`` for each start step, as it happens.

        JupyterHub may ask before ``start()`` has begun: wait (bounded) for the run to exist.
        """
        for _ in range(300):
            if self._run is not None:
                break
            await asyncio.sleep(0.1)
        else:
            return
        run, seen = self._run, 0
        while True:
            changed = run.changed  # taken before reading, so no event can slip between
            while seen < len(run.events):
                yield run.events[seen]
                seen += 1
            if run.done:
                return
            await changed

    async def poll(self):
        """None while the workspace server runs; its exit status (0 when unknown) otherwise.
        An error asking the backend means "unknown", which is "still running"."""
        if self._backend is None:
            return 0
        status = await self._backend.poll()
        if status is not None and not self._starting:
            self._release()
        return status

    async def stop(self, now=False):
        """Stop the workspace: the compute goes; the analysis home (files and data) is kept."""
        if self._backend is not None:
            self.log.info("[%s] stopping workspace", self._who)
            await self._backend.stop(now=now)
            self._backend.clear_state()
        self._release()
        self._run = None

    def get_state(self):
        """What survives a hub restart, saved in the hub database (versioned, STATE_VERSION)::

            {"version": 2, "backend": "container", "analysis_id": "101",
             "workspace": {...the backend's handle: container name/id and address, or pid...}}

        The hub runs with ``cleanup_servers = False``, so workspaces keep running while it restarts;
        with this state ``load_state`` + ``poll`` find each one again, the proxy route is restored,
        and a later ``stop`` reaches the right container or process. ``load_state`` also reads the
        flat version-1 state of earlier releases.

        Deliberately *not* saved: the analysis api key (``analysis``) and anything else secret. The
        workspace does not need it again (provisioning wrote it to ``~/.Renviron``), and the next
        start gets a fresh one from Kinetic via the authenticator.
        """
        state = super().get_state()
        if self._backend is not None:
            backend_state = self._backend.get_state()
            if backend_state:
                state.update(
                    {"version": STATE_VERSION, "backend": self._backend.kind, "workspace": backend_state}
                )
                if self.analysis_id:
                    state["analysis_id"] = self.analysis_id
        return state

    @staticmethod
    def _upgrade_state(state: dict) -> dict | None:
        """Any saved layout -> the current one (None: nothing to restore)."""
        if not state or not state.get("backend"):
            return None
        version = state.get("version", 1)
        if version == 1:  # flat: {"backend": "local", "home", "ip", "port", "pid", "pid_start"}
            kind = "process" if state["backend"] == "local" else state["backend"]
            inner = {k: v for k, v in state.items() if k not in ("backend", "analysis_id")}
            return {
                "version": STATE_VERSION,
                "backend": kind,
                "analysis_id": state.get("analysis_id"),
                "workspace": inner,
            }
        if version == STATE_VERSION:
            return state
        raise ValueError(
            f"saved state version {version} is newer than this release understands ({STATE_VERSION})"
        )

    def load_state(self, state):
        """Restore the handle saved by ``get_state`` (after a hub restart, or when the hub builds
        this spawner from its database). A running workspace is registered again as its analysis's
        one workspace, so no second one can start on the same storage."""
        super().load_state(state)
        try:
            state = self._upgrade_state(state)
        except ValueError as e:
            self.log.error("[%s] cannot restore the workspace state: %s", self._who, e)
            return
        if state is None:
            return
        try:
            backend = self._backend_impl(state["backend"])
        except (NotImplementedError, ValueError) as e:
            self.log.error("[%s] cannot restore the workspace state: %s", self._who, e)
            return
        backend.load_state(state.get("workspace") or {})
        aid = state.get("analysis_id") or self.analysis_id
        if aid and backend.running:
            self._active[aid] = self

    def clear_state(self):
        """Forget the server handle (after stop); the analysis home stays where it is."""
        super().clear_state()
        if self._backend is not None:
            self._backend.clear_state()
        self._release()
