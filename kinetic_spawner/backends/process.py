"""The process backend — for developing the kit only, never for researchers.

The workspace is a process group of the hub's own user on the hub's machine: it can read the hub's
files, keys and processes. It exists because it starts without building the workspace image, for
working on the hub pages; the container backend (the default) is what isolates a workspace.

Host = this machine; storage = ``<workspaces_root>/<analysisId>`` (mode 0700); provisioning =
``bash provision.sh`` as the hub's own user; the server = ``jupyterhub-singleuser`` started in its
own session (so stop can signal the whole group: the server, RStudio, kernels).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from traitlets import Bool, Float, List, Unicode

from ..provisioning import restore_default_sigint, run_provision
from . import (
    STEP_HOST,
    STEP_PROVISION,
    STEP_SERVER,
    STEP_STORAGE,
    Address,
    WorkspaceRequest,
    report_provision_step,
)
from .homes import HomesOnThisHost

VENV_BIN = Path(sys.executable).parent


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None when the
    process is gone or a zombie. Together with the pid it names one process: a pid reused by
    another process after a hub restart has a different start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may itself contain spaces or ')'
    rest = stat[stat.rfind(")") + 2 :].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return int(rest[19])  # rest[0] is field 3; field 22 is rest[19]


RSTUDIO_SYSTEM_PATHS = ("/usr/lib/rstudio-server/bin/rserver", "/usr/lib/rstudio/bin/rserver")


class ProcessBackend(HomesOnThisHost):
    """DEVELOPMENT ONLY: the workspace as a process group of the hub's own user (see the module).

    State kept (see WorkspaceSpawner.get_state): home, ip, port, pid, pid_start.
    """

    kind = "process"

    singleuser_cmd = List(
        Unicode(),
        config=True,
        help="""The single-user server command, without arguments carrying secrets (there are none:
        the hub token and all settings go in the environment). ``--allow-root`` is added when the
        hub runs as root. Default: ``jupyterhub-singleuser`` from the hub's own environment.""",
    )

    def _default_singleuser_cmd(self):
        return [str(VENV_BIN / "jupyterhub-singleuser")]

    run_as_root = Bool(
        False,
        help="""Let this backend start workspaces when the hub runs as root. Off by default, and a
        start is refused: a workspace runs its researchers' code, and a process of the hub's own user
        (root, with ``--allow-root``) gives that code the whole machine — every key, every other
        analysis. Only for developing the kit on a machine holding nothing of value; use the
        container backend (uid 1010) otherwise.""",
    ).tag(config=True)

    rserver_path = Unicode(
        "",
        config=True,
        help="""Full path of RStudio Server's ``rserver``. Empty (default): look on ``PATH`` and in
        ``/usr/lib/rstudio-server/bin``. When set, its directory is put first on the workspace's
        ``PATH`` so that jupyter-rsession-proxy finds the same program.""",
    )

    jupyter_path = List(
        Unicode(),
        ["/usr/local/share/jupyter", "/usr/share/jupyter"],
        config=True,
        help="""Directories added to the workspace's ``JUPYTER_PATH``, so that kernels installed by
        the system (Debian's ``r-cran-irkernel``) appear in JupyterLab started from a virtualenv.""",
    )

    provision_timeout = Float(
        300.0,
        config=True,
        help="""Seconds provisioning (provision.sh, including the data download) may take.""",
    )

    stop_timeout = Float(
        10.0, config=True, help="""Seconds to wait after SIGTERM before the whole process group is killed."""
    )

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        if not self.singleuser_cmd:
            self.singleuser_cmd = self._default_singleuser_cmd()
        self.ip = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self.pid_start: int | None = None
        self.proc: asyncio.subprocess.Process | None = None

    # -- steps ------------------------------------------------------------------------------------
    async def reserve_address(self) -> Address:
        self.ip = "127.0.0.1"
        self.port = free_port(self.ip)
        return Address(self.ip, self.port)

    def find_rserver(self, path: str) -> str | None:
        if self.rserver_path:
            return self.rserver_path if os.access(self.rserver_path, os.X_OK) else None
        found = shutil.which("rserver", path=path)
        return found or next((p for p in RSTUDIO_SYSTEM_PATHS if os.access(p, os.X_OK)), None)

    async def start(self, request: WorkspaceRequest, on_step) -> tuple[str, int]:
        if os.geteuid() == 0 and not self.run_as_root:
            raise RuntimeError(
                "The process backend would run this workspace as root, giving its code the whole "
                "machine: use the container backend (ProcessBackend.run_as_root is for developing "
                "the kit only)."
            )
        on_step(STEP_HOST, f"Acquiring a host for “{request.title}”: this machine ({socket.gethostname()})")
        on_step(STEP_STORAGE, "Preparing storage for the analysis home")
        home = await self.prepare_home(request.analysis_id)
        on_step(STEP_PROVISION, "Provisioning the workspace")
        await run_provision(
            home,
            request.provision,
            lambda step: report_provision_step(step, on_step),
            timeout=self.provision_timeout,
            log=self.log,
        )

        path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
        rserver = await asyncio.to_thread(self.find_rserver, path)
        if rserver and self.rserver_path:
            path = os.pathsep.join([os.path.dirname(self.rserver_path), path])
        env = dict(request.hub_env)
        env.update(
            {
                "HOME": home,
                "USER": "workspace",
                "LOGNAME": "workspace",
                "SHELL": "/bin/bash",
                "PATH": path,
                "ANALYSIS_ID": request.analysis_id,
            }
        )
        jupyter_path = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p] + list(
            self.jupyter_path
        )
        env["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(jupyter_path))
        env["JUPYTERHUB_DEFAULT_URL"] = request.default_url or ("/rstudio" if rserver else "/lab")
        cmd = list(self.singleuser_cmd)
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        cmd.extend(request.args)
        label = "RStudio" if rserver else "JupyterLab"
        on_step(STEP_SERVER, f"Starting the workspace server ({label})")
        log_path = self.log_path(request.analysis_id)
        logf = await asyncio.to_thread(open, log_path, "ab")
        try:
            os.chmod(log_path, 0o600)
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=home,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=restore_default_sigint,
            )
        finally:
            logf.close()  # the child holds its own copy
        self.pid = self.proc.pid
        self.pid_start = process_start_time(self.pid)
        self.log.info("[%s] workspace server pid %s on %s:%s", self.who, self.pid, self.ip, self.port)
        return self.ip, self.port

    # -- lifecycle --------------------------------------------------------------------------------
    def _ours_alive(self) -> bool:
        """Is the process recorded in our state alive, and the same process (pid + start time)?"""
        if not self.pid:
            return False
        start = process_start_time(self.pid)
        return start is not None and (self.pid_start is None or start == self.pid_start)

    async def poll(self) -> int | None:
        if self.proc is not None:  # our own child: the exit status is known
            if self.proc.returncode is None and self._ours_alive():
                return None
            if self.proc.returncode is None:
                try:
                    await asyncio.wait_for(self.proc.wait(), 2)
                except TimeoutError:
                    return None
            return self.proc.returncode
        if self._ours_alive():
            return None
        return 0

    async def stop(self, now: bool = False) -> None:
        timeout = min(1.0, self.stop_timeout) if now else self.stop_timeout
        if not self.pid:
            return
        if not self._ours_alive():
            self.log.info("[%s] workspace process %s already gone", self.who, self.pid)
            await self._reap()
            return
        pgid = self.pid  # started with start_new_session: the leader's pid is the group id
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._ours_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._ours_alive():
            self.log.warning(
                "[%s] workspace process %s ignored SIGTERM for %.0f s; killing it", self.who, pgid, timeout
            )
        # the leader is gone or stubborn: anything left in its group (RStudio, kernels) goes too
        self._signal_group(pgid, signal.SIGKILL)
        await self._reap()

    def _signal_group(self, pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    async def _reap(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                pass

    @property
    def running(self) -> bool:
        if not self.pid:
            return False
        if self.proc is not None:  # our child: the event loop knows when it exits
            return self.proc.returncode is None
        return self._ours_alive()  # found again after a restart: one small read of /proc

    # -- state ------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        if not self.pid:
            return {"home": self.home} if self.home else {}
        return {
            "home": self.home,
            "ip": self.ip,
            "port": self.port,
            "pid": self.pid,
            "pid_start": self.pid_start,
        }

    def load_state(self, state: dict) -> None:
        self.home = state.get("home", self.home) or ""
        self.ip = state.get("ip", self.ip) or "127.0.0.1"
        self.port = int(state.get("port") or 0)
        self.pid = int(state.get("pid") or 0)
        self.pid_start = state.get("pid_start")

    def clear_state(self) -> None:
        self.pid = 0
        self.pid_start = None
        self.port = 0
        self.proc = None


__all__ = ["ProcessBackend", "process_start_time", "restore_default_sigint", "free_port"]
