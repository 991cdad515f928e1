"""The local backend: the workspace runs on this machine, one process group per analysis.

Host = this machine; storage = ``<workspaces_root>/<analysisId>`` (mode 0700); provisioning =
``bash provision.sh`` as the hub's own user; the server = ``jupyterhub-singleuser`` started in its
own session (so stop can signal the whole group: the server, RStudio, kernels).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from . import Backend, BackendError, ProvisionInputs, ProvisionResult, StepCallback

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROVISION_SH = PACKAGE_DIR / "provision.sh"
BLANK_PROJECT = PACKAGE_DIR / "blank_project"
VENV_BIN = Path(sys.executable).parent


def restore_default_sigint() -> None:
    """preexec_fn: a hub started from a non-interactive shell has SIGINT ignored, and children
    inherit that; restore the default so the workspace can be interrupted like any process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def redact(text: str, *secrets: str) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "<secret>")
    return text


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
    rest = stat[stat.rfind(")") + 2:].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return int(rest[19])  # rest[0] is field 3; field 22 is rest[19]


def provision_env(home: str, inputs: ProvisionInputs) -> dict[str, str]:
    """A small, explicit environment for provision.sh: the hub's own environment (which may hold
    its secrets) is not handed on."""
    fetch = VENV_BIN / "kinetic-fetch-data"
    env = {
        "HOME": home,
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)]),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "KINETIC_BLANK_PROJECT": str(BLANK_PROJECT),
        "KINETIC_FETCH_DATA": str(fetch) if fetch.exists() else f"{sys.executable} -m kinetic_spawner.fetch_data",
    }
    # the fetch tool imports this package: make it importable however the hub was installed
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")] if p)
    env.update(inputs.env())
    return env


async def run_provision(home: str, inputs: ProvisionInputs, on_step: StepCallback | None = None,
                        timeout: float = 300.0, script: Path = PROVISION_SH, log=None) -> ProvisionResult:
    """Run provision.sh for one analysis home on this machine (inputs in the environment only).

    Streams the script's ``::step`` lines to ``on_step`` as they come. Raises BackendError with
    the script's own error text (secrets removed) when it fails or runs past ``timeout``.
    """
    proc = await asyncio.create_subprocess_exec(
        "bash", str(script), cwd=home, env=provision_env(home, inputs),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=restore_default_sigint)
    steps: list[str] = []
    out: list[str] = []
    errors: list[str] = []

    async def read(stream, sink, is_stdout):
        async for raw in stream:
            line = redact(raw.decode(errors="replace").rstrip("\n"), inputs.api_key)
            sink.append(line)
            if is_stdout and line.startswith("::step "):
                step = line[len("::step "):]
                steps.append(step)
                if on_step:
                    on_step(step)
            if log:
                log.debug("provision[%s]: %s", inputs.analysis_id, line)

    try:
        await asyncio.wait_for(asyncio.gather(read(proc.stdout, out, True),
                                              read(proc.stderr, errors, False), proc.wait()),
                               timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise BackendError(f"provisioning did not finish within {timeout:.0f} s") from None
    output = "\n".join(out + errors)
    if proc.returncode != 0:
        detail = "; ".join(line for line in errors if line.strip())[-600:] or f"exit status {proc.returncode}"
        raise BackendError(f"provisioning failed: {detail}")
    return ProvisionResult(seeded=any(s.startswith("seeded") for s in steps), steps=steps, output=output)


class LocalBackend(Backend):
    """State kept (see WorkspaceSpawner.get_state): home, ip, port, pid, pid_start."""

    name = "local"

    def __init__(self, spawner):
        super().__init__(spawner)
        self.root = Path(spawner.workspaces_root)
        self.home: str = ""
        self.ip = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self.pid_start: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None

    # -- steps ------------------------------------------------------------------------------------
    async def acquire_host(self, analysis_id: str) -> str:
        return f"this machine ({socket.gethostname()})"

    async def prepare_storage(self, analysis_id: str) -> str:
        home = self.root / analysis_id

        def make():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            home.mkdir(exist_ok=True, mode=0o700)
            os.chmod(home, 0o700)  # mkdir's mode is filtered by the umask; the home must be 0700
            (self.root / "logs").mkdir(exist_ok=True, mode=0o700)

        await asyncio.to_thread(make)
        self.home = str(home)
        self.log_path = self.root / "logs" / f"{analysis_id}.log"
        return self.home

    async def run_provisioning(self, inputs: ProvisionInputs, on_step: StepCallback) -> ProvisionResult:
        return await run_provision(self.home, inputs, on_step, timeout=self.spawner.provision_timeout,
                                   log=self.log)

    async def reserve_address(self) -> tuple[str, int]:
        self.ip = "127.0.0.1"
        self.port = free_port(self.ip)
        return self.ip, self.port

    async def start_server(self, cmd: list[str], env: dict[str, str]) -> tuple[str, int]:
        log_path = self.log_path or self.root / "logs" / "workspace.log"
        logf = await asyncio.to_thread(open, log_path, "ab")
        try:
            os.chmod(log_path, 0o600)
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=self.home, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=restore_default_sigint)
        finally:
            logf.close()  # the child holds its own copy
        self.pid = self.proc.pid
        self.pid_start = process_start_time(self.pid)
        return self.ip, self.port

    async def wait_until_answering(self, url_path: str, timeout: float) -> None:
        url = f"http://{self.ip}:{self.port}{url_path}"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + timeout
        while True:
            if await self.poll() is not None:
                raise BackendError(f"the workspace server exited during start-up{await self._log_tail()}")
            try:
                await client.fetch(HTTPRequest(url, request_timeout=5, follow_redirects=False),
                                   raise_error=False)
                return  # any HTTP answer: the server is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BackendError(f"the workspace server did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def _log_tail(self, lines: int = 8) -> str:
        if not self.log_path:
            return ""

        def tail():
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 4000))
                    return f.read().decode(errors="replace").splitlines()[-lines:]
            except OSError:
                return []

        text = " | ".join(await asyncio.to_thread(tail))
        return f"; last log lines: {text}" if text else ""

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
                except asyncio.TimeoutError:
                    return None
            return self.proc.returncode
        if self._ours_alive():
            return None
        return 0

    async def stop(self, timeout: float) -> None:
        if not self.pid:
            return
        if not self._ours_alive():
            self.log.info("workspace process %s already gone", self.pid)
            await self._reap()
            return
        pgid = self.pid  # started with start_new_session: the leader's pid is the group id
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._ours_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._ours_alive():
            self.log.warning("workspace process %s ignored SIGTERM for %.0f s; killing it", pgid, timeout)
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
            except asyncio.TimeoutError:
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
        return {"home": self.home, "ip": self.ip, "port": self.port, "pid": self.pid,
                "pid_start": self.pid_start}

    def load_state(self, state: dict) -> None:
        self.home = state.get("home", self.home) or ""
        self.ip = state.get("ip", self.ip) or "127.0.0.1"
        self.port = int(state.get("port") or 0)
        self.pid = int(state.get("pid") or 0)
        self.pid_start = state.get("pid_start")
        if self.home:
            self.log_path = self.root / "logs" / f"{Path(self.home).name}.log"

    def clear_state(self) -> None:
        self.pid = 0
        self.pid_start = None
        self.port = 0
        self.proc = None


__all__ = ["LocalBackend", "run_provision", "provision_env", "process_start_time", "PROVISION_SH",
           "BLANK_PROJECT", "restore_default_sigint", "free_port"]
