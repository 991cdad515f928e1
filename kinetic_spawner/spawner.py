"""WorkspaceSpawner: one workspace per Kinetic analysis.

A workspace is the named server ``a-<analysisId>`` (see ``slugs``). Starting it:

    acquire host → prepare storage (the analysis home) → provision (provision.sh: ~/.Renviron key,
    blank project if new, synthetic data) → start jupyterhub-singleuser → wait until it answers

with each step reported by ``progress()``. The researcher lands in RStudio (``/rstudio``, through
jupyter-rsession-proxy) where RStudio Server exists, else in JupyterLab (``/lab``) with the R kernel.

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
import pwd
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from jupyterhub.spawner import Spawner
from jupyterhub.traitlets import Command
from tornado import web
from traitlets import Any, CaselessStrEnum, Float, List, Unicode, default, validate

from .backends import Backend, BackendError, ProvisionInputs, backend_class
from .slugs import analysis_id_from_server_name, check_analysis_id

VENV_BIN = os.path.dirname(sys.executable)
RSTUDIO_SYSTEM_PATHS = ("/usr/lib/rstudio-server/bin/rserver", "/usr/lib/rstudio/bin/rserver")


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
    _active: ClassVar[dict[str, "WorkspaceSpawner"]] = {}

    # -- configuration ------------------------------------------------------------------------------
    backend = CaselessStrEnum(
        ["local", "aws"], default_value="local", config=True,
        help="""Where workspaces run.

        ``local`` (default): on the hub's machine, one process group per analysis, the analysis home
        a directory under ``workspaces_root``. ``aws``: an EC2 instance per analysis with its home on
        EFS, provisioned over SSH (not implemented yet: starting raises a clear error).
        A workspace started by one backend is always stopped by that backend, whatever this says
        after a restart (the backend is part of the saved state).
        """)

    workspaces_root = Unicode(
        config=True,
        help="""Directory holding one home per analysis, ``<workspaces_root>/<analysisId>`` (mode 0700).

        Local backend only. Homes are never deleted by the spawner: stopping a workspace removes the
        compute and keeps the data. Default: ``state/workspaces`` under the hub's working directory.
        """)

    @default("workspaces_root")
    def _default_workspaces_root(self):
        return os.path.abspath(os.path.join("state", "workspaces"))

    kinetic_url = Unicode(
        config=True,
        help="""Base URL of Kinetic (or of the stand-in), from which provisioning downloads the
        analysis's synthetic data. Default: the ``KINETIC_URL`` environment variable.
        """)

    @default("kinetic_url")
    def _default_kinetic_url(self):
        return os.environ.get("KINETIC_URL", "")

    interface = CaselessStrEnum(
        ["auto", "rstudio", "lab"], default_value="auto", config=True,
        help="""What the researcher lands in.

        ``auto`` (default): RStudio (``/rstudio``, via jupyter-rsession-proxy) when an ``rserver``
        is found (``rserver_path``, then ``PATH``, then RStudio's install directories), else
        JupyterLab (``/lab``) with the R kernel. ``rstudio`` fails the start when no ``rserver`` is
        found; ``lab`` always uses JupyterLab. Ignored when ``Spawner.default_url`` is set.
        """)

    rserver_path = Unicode(
        "", config=True,
        help="""Full path of RStudio Server's ``rserver``. Empty (default): look on the workspace's
        ``PATH`` and in ``/usr/lib/rstudio-server/bin``. When set, its directory is put first on the
        workspace's ``PATH`` so that jupyter-rsession-proxy finds the same program.
        """)

    provision_timeout = Float(
        300.0, config=True,
        help="""Seconds provisioning (provision.sh, including the data download) may take before
        the start is failed. The script is idempotent, so the next start simply runs it again.
        """)

    cutoff_date = Unicode(
        "", config=True,
        help="""``YYYY-MM-DD`` written into ``main.r`` when a blank project is seeded (existing
        projects keep theirs). Empty (default): the hub's date on the day of seeding.
        """)

    @validate("cutoff_date")
    def _check_cutoff(self, proposal):
        value = proposal["value"].strip()
        if value:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"cutoff_date must look like 2026-01-31, not {value!r}")
            datetime.date.fromisoformat(value)
        return value

    singleuser_cmd = Command(
        minlen=1, config=True,
        help="""The single-user server command, without arguments carrying secrets (there are none:
        the hub token and all settings go in the environment). ``--allow-root`` is added when the
        workspace runs as root; ``Spawner.args`` are appended. Default: ``jupyterhub-singleuser``
        from the hub's own environment, where jupyter-server-proxy and jupyter-rsession-proxy are
        installed and enabled as server extensions.
        """)

    @default("singleuser_cmd")
    def _default_singleuser_cmd(self):
        return [os.path.join(VENV_BIN, "jupyterhub-singleuser")]

    jupyter_path = List(
        Unicode(), ["/usr/local/share/jupyter", "/usr/share/jupyter"], config=True,
        help="""Directories added to the workspace's ``JUPYTER_PATH``, so that kernels installed by
        the system (Debian's ``r-cran-irkernel`` puts the ``ir`` kernelspec in
        ``/usr/share/jupyter``) appear in JupyterLab started from a virtualenv.
        """)

    stop_timeout = Float(
        10.0, config=True,
        help="""Seconds to wait after SIGTERM for the workspace to exit before its whole process
        group is killed with SIGKILL.""")

    @default("start_timeout")
    def _default_start_timeout(self):
        return 180  # provisioning downloads data before the server even starts

    # -- set by the authenticator for each start (memory only) -------------------------------------
    analysis = Any(
        None, allow_none=True,
        help="""The analysis being opened, as Kinetic returned it to this researcher:
        ``{"id", "title", "api_key", ...}``. Set by ``KineticAuthenticator.pre_spawn_start`` before
        every start; held in memory only (the api key is never saved in the hub's state).""")

    # -- internals ----------------------------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._backend: Backend | None = None
        self._run: _Run | None = None
        self._starting = False
        self._interface = ""

    @classmethod
    def active_for(cls, analysis_id: str | int) -> "WorkspaceSpawner | None":
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

    def _backend_impl(self, kind: str | None = None) -> Backend:
        kind = kind or self.backend
        if self._backend is None or self._backend.name != kind:
            self._backend = backend_class(kind)(self)
        return self._backend

    def _occupies(self) -> bool:
        return self._starting or (self._backend is not None and self._backend.running)

    def _claim(self, analysis_id: str) -> None:
        other = self._active.get(analysis_id)
        if other is not None and other is not self and other._occupies():
            owner = getattr(other.user, "name", "?")
            self.log.warning("[%s] refused: analysis %s already has a workspace (%s/%s)",
                             self._who, analysis_id, owner, other.name)
            raise web.HTTPError(409, f"this analysis already has a workspace running (owned by {owner})")
        self._active[analysis_id] = self

    def _release(self) -> None:
        aid = self.analysis_id
        if aid and self._active.get(aid) is self:
            del self._active[aid]

    def _emit(self, progress: int, message: str) -> None:
        self.log.info("[%s] %s", self._who, message)
        if self._run is not None:
            self._run.emit(progress, message)

    def _check_request(self) -> tuple[str, dict]:
        aid = self.analysis_id
        if aid is None:
            raise web.HTTPError(
                400, f"{self.name or 'the default server'!r} is not an analysis workspace: workspaces are "
                     f"named servers a-<analysisId>, opened from /hub/analysis/<analysisId>")
        analysis = self.analysis
        if not isinstance(analysis, dict) or not analysis.get("api_key"):
            raise web.HTTPError(
                400, f"analysis {aid} was not handed over by the sign-in: open it from Kinetic "
                     f"(/hub/analysis/{aid}) rather than starting the server directly")
        try:
            given = check_analysis_id(analysis.get("id", ""))
        except ValueError:
            given = None
        if given != aid:
            raise web.HTTPError(400, f"server {self.name} is for analysis {aid}, not {given}")
        if not self.kinetic_url:
            raise web.HTTPError(500, "WorkspaceSpawner.kinetic_url is not configured (or KINETIC_URL)")
        return aid, analysis

    async def _detect_interface(self, path: str) -> tuple[str, str | None]:
        if self.interface == "lab":
            return "lab", None

        def find():
            if self.rserver_path:
                return self.rserver_path if os.access(self.rserver_path, os.X_OK) else None
            found = shutil.which("rserver", path=path)
            return found or next((p for p in RSTUDIO_SYSTEM_PATHS if os.access(p, os.X_OK)), None)

        rserver = await asyncio.to_thread(find)
        if rserver:
            return "rstudio", rserver
        if self.interface == "rstudio":
            raise web.HTTPError(500, "RStudio was configured (interface='rstudio') but no rserver was found")
        return "lab", None

    def _workspace_env(self, home: str, path: str) -> dict[str, str]:
        env = self.get_env()  # JUPYTERHUB_API_TOKEN, service URL/prefix, OAuth client, ...
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = "workspace"
        jupyter_path = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p] + list(self.jupyter_path)
        env.update({
            "HOME": home, "USER": user, "LOGNAME": user, "SHELL": "/bin/bash", "PATH": path,
            "JUPYTER_PATH": os.pathsep.join(dict.fromkeys(jupyter_path)),
        })
        if not self.default_url:
            env["JUPYTERHUB_DEFAULT_URL"] = "/rstudio" if self._interface == "rstudio" else "/lab"
        if self.analysis_id:
            env["ANALYSIS_ID"] = self.analysis_id  # not secret; the key is in ~/.Renviron only
        return env

    # -- the Spawner API ----------------------------------------------------------------------------
    async def start(self):
        """Provision the analysis home and start its workspace server; returns (ip, port)."""
        self._run = _Run()  # first: progress() readers must never wait for a start that failed
        try:
            aid, analysis = self._check_request()
            self._claim(aid)
        except BaseException:
            self._run.finish()
            raise
        self._starting = True
        try:
            return await self._start(aid, analysis)
        except BackendError as e:
            self.log.error("[%s] start failed: %s", self._who, e)
            await self._cleanup_failed_start()
            raise web.HTTPError(500, f"The workspace for analysis {aid} could not start: {e}") from None
        except BaseException:
            await self._cleanup_failed_start()
            raise
        finally:
            self._starting = False
            self._run.finish()

    async def _cleanup_failed_start(self):
        if self._backend is not None and self._backend.running:
            await self._backend.stop(self.stop_timeout)
            self._backend.clear_state()
        self._release()

    async def _start(self, aid: str, analysis: dict):
        title = analysis.get("title") or f"analysis {aid}"
        try:
            backend = self._backend_impl()
        except NotImplementedError as e:
            raise web.HTTPError(501, str(e)) from None
        self._emit(5, f"Acquiring a host for “{title}”")
        host = await backend.acquire_host(aid)
        self._emit(10, f"Host: {host}")
        self._emit(15, "Preparing storage for the analysis home")
        home = await backend.prepare_storage(aid)

        self._emit(25, "Provisioning the workspace")
        inputs = ProvisionInputs(analysis_id=aid, api_key=str(analysis["api_key"]),
                                 kinetic_url=self.kinetic_url,
                                 cutoff_date=self.cutoff_date or datetime.date.today().isoformat())

        def on_step(step: str):
            if step.startswith("seeded"):
                self._emit(40, "Provisioning: seeded the blank project")
            elif step.startswith("kept"):
                self._emit(40, "Provisioning: kept your existing project")
            elif step.startswith("downloading"):
                self._emit(50, f"Downloading synthetic data ({step.split('(', 1)[-1].rstrip(')')})")
            elif step.startswith("synthetic data ready"):
                self._emit(65, "Synthetic data downloaded")
            elif step.startswith("WARNING"):
                self._emit(65, "Could not refresh the synthetic data; kept the data from last time")

        await backend.run_provisioning(inputs, on_step)

        ip, port = await backend.reserve_address()
        self.ip, self.port = ip, port
        path = os.pathsep.join([VENV_BIN, os.environ.get("PATH", os.defpath)])
        self._interface, rserver = await self._detect_interface(path)
        if rserver and self.rserver_path:
            path = os.pathsep.join([os.path.dirname(self.rserver_path), path])
        env = self._workspace_env(home, path)
        cmd = list(self.singleuser_cmd)
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        cmd.extend(self.get_args())
        label = "RStudio" if self._interface == "rstudio" else "JupyterLab"
        self._emit(75, f"Starting the workspace server ({label})")
        await backend.start_server(cmd, env)
        self.log.info("[%s] workspace server pid %s on %s:%s", self._who,
                      getattr(backend, "pid", "?"), ip, port)

        self._emit(85, "Waiting for the workspace server to answer")
        prefix = self.server.base_url if self.server else "/"
        await backend.wait_until_answering(prefix + "api", timeout=self.http_timeout)
        self._emit(95, f"Workspace server is up; opening {label}")
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

        Local: our own child reports its exit status; a server found again after a hub restart is
        checked by pid *and* start time, so a recycled pid is never mistaken for the workspace.
        """
        if self._backend is None:
            return 0
        status = await self._backend.poll()
        if status is not None and not self._starting:
            self._release()
        return status

    async def stop(self, now=False):
        """Stop the workspace: SIGTERM to its process group, then SIGKILL after ``stop_timeout``.
        The compute goes; the analysis home (the researcher's files and data) is kept."""
        if self._backend is not None:
            self.log.info("[%s] stopping workspace", self._who)
            await self._backend.stop(min(1.0, self.stop_timeout) if now else self.stop_timeout)
            self._backend.clear_state()
        self._release()
        self._run = None

    def get_state(self):
        """What survives a hub restart, saved in the hub database.

        ``backend``, ``analysis_id``, and the backend's handle on the server: for local, ``home``,
        ``ip``, ``port``, ``pid`` and ``pid_start`` (the process start time from ``/proc``). The hub
        runs with ``cleanup_servers = False``, so workspaces keep running while it restarts; with
        this state ``load_state`` + ``poll`` find each one again (and a recycled pid is not taken
        for it), the proxy route is restored, and a later ``stop`` signals the right process group.

        Deliberately *not* saved: the analysis api key (``analysis``) and anything else secret. The
        workspace does not need it again (provisioning wrote it to ``~/.Renviron``), and the next
        start gets a fresh one from Kinetic via the authenticator.
        """
        state = super().get_state()
        if self._backend is not None:
            backend_state = self._backend.get_state()
            if backend_state:
                state.update(backend_state)
                state["backend"] = self._backend.name
                if self.analysis_id:
                    state["analysis_id"] = self.analysis_id
        return state

    def load_state(self, state):
        """Restore the handle saved by ``get_state`` (after a hub restart, or when the hub builds
        this spawner from its database). A running workspace is registered again as its analysis's
        one workspace, so no second one can start on the same storage."""
        super().load_state(state)
        if not state or not state.get("backend"):
            return
        try:
            backend = self._backend_impl(state["backend"])
        except NotImplementedError as e:
            self.log.error("[%s] cannot restore the workspace state: %s", self._who, e)
            return
        backend.load_state(state)
        aid = state.get("analysis_id") or self.analysis_id
        if aid and backend.running:
            self._active[aid] = self

    def clear_state(self):
        """Forget the server handle (after stop); the analysis home stays where it is."""
        super().clear_state()
        if self._backend is not None:
            self._backend.clear_state()
        self._release()
