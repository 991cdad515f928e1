"""The container backend (default): each workspace is one podman container of the workspace image.

What a workspace gets, and nothing more (each item is tried by ``tests/test_workspace_isolation.py``):

* uid/gid 1010, every capability dropped, ``no-new-privileges``, a read-only image, a tmpfs
  ``/tmp``; the analysis home bind-mounted at ``/home/editor`` and nothing else of this machine;
* ``--memory`` (= ``--memory-swap``), ``--cpus`` and ``--pids-limit`` from traits, and a niceness,
  so one R session cannot take the machine's memory, cores or process table from the hub or the
  other workspaces;
* its own network (``container_network``): the internet, the hub API and Kinetic; nothing else of
  this machine, no cloud metadata, no other workspace;
* secrets (the hub token, the analysis key) only in the environment of ``podman`` itself, passed on
  as ``-e NAME`` (no value on any command line).

Start = storage (the home, chowned to 1010) → provisioning in a throw-away container of the same
image as uid 1010 (the same ``provision.sh`` as every world) → the server container
(``kinetic-workspace --ip=0.0.0.0 --port=8888``) → the proxy is pointed at the container's address
and the hub's own readiness wait takes over.

Restart safety: containers are named ``kinetic-<instance>-<server>`` (podman refuses a second
container of one name, so never two servers on one analysis home) and labelled with the hub
instance, user, server and analysis. A restarted hub finds the servers it recorded by name
(``load_state``) and adopts them; the shared ``ContainerReflector`` removes containers that no
server of the hub owns after ``orphan_grace_seconds``; a new start first removes what a crashed
start left behind under its names.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
from urllib.parse import urlparse, urlunparse

from jupyterhub.utils import exponential_backoff
from traitlets import Bool, Float, Integer, List, Unicode, default

from ..commands import run_command
from ..provisioning import run_script
from . import (
    STEP_HOST,
    STEP_PROVISION,
    STEP_SERVER,
    STEP_STORAGE,
    Address,
    BackendError,
    WorkspaceRequest,
    redact,
    report_provision_step,
)
from .container_network import ensure_firewall, ensure_network, firewall_available
from .container_reflector import (
    LABEL_ANALYSIS,
    LABEL_INSTANCE,
    LABEL_ROLE,
    LABEL_SERVER,
    LABEL_USER,
    ContainerReflector,
    ReflectorError,
)
from .homes import HomesOnThisHost

WORKSPACE_UID = 1010
HOME_IN_CONTAINER = "/home/editor"
SERVER_PORT = 8888
PROVISION_IN_IMAGE = "/opt/kinetic/provision/provision.sh"
ENTRY_IN_IMAGE = "kinetic-workspace"
# Environment variables the hub hands a single-user server that the container may see. The hub's
# own PATH, PYTHONPATH, VIRTUAL_ENV (Spawner.env_keep) describe the hub's machine, not the image.
PASSED_PREFIXES = ("JUPYTERHUB_", "JPY_")
PASSED_NAMES = ("LANG", "LC_ALL")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_start_slots: dict[tuple, asyncio.Semaphore] = {}
_prepared: dict[tuple, asyncio.Future] = {}


@functools.lru_cache(maxsize=1)
def _default_image_tag() -> str:
    from ..image import workspace_image_tag

    return workspace_image_tag()


class ContainerBackend(HomesOnThisHost):
    """A podman container of the workspace image per analysis (see the module docstring).

    State kept (see WorkspaceSpawner.get_state): container name and id, its address, the home.
    """

    kind = "container"

    podman = Unicode("podman", config=True, help="The podman command (rootful: the hub runs as root).")

    runtime = Unicode(
        "runc",
        config=True,
        help="OCI runtime for podman (``runc``: crun fails on these hosts' hybrid cgroups).",
    )

    image = Unicode(
        config=True,
        help="""The workspace image. Default: the content-fingerprinted tag of the image built
        from ``kinetic_spawner/image`` (``python -m kinetic_spawner.image`` builds it; the first
        start builds it too if it is missing).""",
    )

    @default("image")
    def _default_image(self):
        # hashing the recipe's inputs takes ~0.1 s: once per hub process, not once per start
        return _default_image_tag()

    memory_limit = Unicode(
        "2g",
        config=True,
        help="""Memory of one workspace (podman ``--memory``; swap is not allowed on top). An R
        session that takes more is killed inside its container; the hub and the other workspaces
        keep theirs.""",
    )

    cpu_limit = Float(
        1.0,
        config=True,
        help="""CPUs one workspace may use (podman ``--cpus``). Together with ``nice`` this keeps
        the hub responsive while many workspaces start or compute.""",
    )

    pids_limit = Integer(
        512,
        config=True,
        help="Processes and threads one workspace may have (podman ``--pids-limit``): a fork bomb stays inside.",
    )

    nice = Integer(
        10,
        config=True,
        help="""Scheduling niceness of the workspaces (podman and everything it starts inherit it):
        the hub, its proxy and its services win the CPU when the machine is busy. 0 disables.""",
    )

    tmp_size = Unicode("1g", config=True, help="Size of the tmpfs mounted at ``/tmp`` in a workspace.")

    network = Unicode(
        "kinetic-workspaces",
        config=True,
        help="""The podman bridge network of the workspaces (created when missing). Workspaces reach
        the hub API and Kinetic through its gateway address.""",
    )

    subnet = Unicode(
        "10.89.64.0/24",
        config=True,
        help="Subnet used when the ``network`` has to be created (an existing network keeps its own).",
    )

    firewall = Bool(
        True,
        config=True,
        help="""Install the iptables rules of ``container_network`` (root only): a workspace reaches
        only the hub API and Kinetic on this machine, no cloud metadata, no other workspace. Off
        only for a machine whose own firewall does the same.""",
    )

    blocked_networks = List(
        Unicode(),
        ["169.254.0.0/16"],
        config=True,
        help="Destinations no workspace may reach (cloud metadata services by default).",
    )

    extra_allowed_ports = List(
        Integer(),
        config=True,
        help="""Further TCP ports of this machine workspaces may reach (beyond the hub API and a
        Kinetic on this machine).""",
    )

    kinetic_url = Unicode(
        config=True,
        help="""Kinetic's URL as a workspace reaches it. Default: the spawner's ``kinetic_url``
        with a loopback host replaced by the network's gateway address (the stand-in then has to
        listen beyond loopback, which ``make demo`` does).""",
    )

    extra_volumes = List(
        Unicode(),
        config=True,
        help="""Extra ``host:container[:options]`` bind mounts for every workspace. For development
        and tests only (the tests mount a fake ``rserver``); never a path holding secrets.""",
    )

    provision_timeout = Float(
        300.0,
        config=True,
        help="Seconds provisioning (a throw-away container running provision.sh) may take.",
    )

    stop_timeout = Integer(
        10, config=True, help="Seconds a workspace has to exit after SIGTERM before it is killed and removed."
    )

    concurrent_starts = Integer(
        4,
        config=True,
        help="""Workspaces provisioned and started at the same time by this hub; further opens wait
        their turn (their progress says so) instead of competing for the same cores.""",
    )

    reflect_interval = Float(
        5.0,
        config=True,
        help="""How old (seconds) the shared listing of this hub's containers may be when a
        server is polled; one ``podman ps`` serves every workspace.""",
    )

    orphan_grace_seconds = Float(
        60.0,
        config=True,
        help="""A container of this hub that no server owns (left by a hub stopped during a start)
        is removed after this many seconds; a new start of its analysis removes it at once.""",
    )

    instance = Unicode(
        config=True,
        help="""Label value naming this hub's containers, so two hubs on one machine never touch
        each other's. Default: a hash of ``workspaces_root``.""",
    )

    @default("instance")
    def _default_instance(self):
        return hashlib.sha256(os.path.realpath(self.workspaces_root).encode()).hexdigest()[:10]

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self.container = ""  # name
        self.container_id = ""
        self.ip = ""
        self.port = SERVER_PORT
        self.gateway = ""
        self._start_reaper()

    def _start_reaper(self) -> None:
        """The hub's one orphan reaper starts with its first workspace backend: at hub start for
        every recorded server, on the home page for every listed workspace, at every start."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not inside the hub (a unit test building a backend by hand)
        self.reflector.start_reaper(
            self._wanted,
            self._remove,
            interval=max(1.0, self.reflect_interval),
            grace=self.orphan_grace_seconds,
        )

    # -- names ----------------------------------------------------------------------------------
    def container_name(self, role: str = "server") -> str:
        base = f"kinetic-{self.instance}-{self.spawner.user.name}-{self.spawner.name}"
        return base if role == "server" else f"{base}-{role}"

    @property
    def reflector(self) -> ContainerReflector:
        return ContainerReflector.for_instance(self.podman, self.instance, self.log)

    # -- podman ---------------------------------------------------------------------------------
    def _podman_argv(self, *args: str) -> list[str]:
        argv = [self.podman, "--runtime", self.runtime, *args]
        return ["nice", "-n", str(self.nice), *argv] if self.nice else argv

    async def _podman(self, *args: str, timeout: float = 120, env: dict | None = None) -> tuple[int, str]:
        rc, out, _ = await run_command(self._podman_argv(*args), timeout, env=env)
        return rc, out

    async def _remove(self, name: str) -> None:
        rc, out = await self._podman(
            "rm",
            "--force",
            "--ignore",
            "--time",
            str(self.stop_timeout),
            name,
            timeout=self.stop_timeout + 60,
        )
        if rc != 0:
            self.log.warning("[%s] podman rm %s: %s", self.who, name, out[-300:])

    def _base_env(self) -> dict:
        """podman's own environment: PATH and podman's settings; never the hub's secrets."""
        keep = (
            "PATH",
            "HOME",
            "LANG",
            "TMPDIR",
            "XDG_RUNTIME_DIR",
            "CONTAINERS_CONF",
            "CONTAINERS_STORAGE_CONF",
        )
        return {k: os.environ[k] for k in keep if k in os.environ}

    def _security_args(self, role: str, home: str) -> list[str]:
        labels = {
            LABEL_INSTANCE: self.instance,
            LABEL_USER: self.spawner.user.name,
            LABEL_SERVER: self.spawner.name,
            LABEL_ROLE: role,
            LABEL_ANALYSIS: self.spawner.analysis_id or "",
        }
        args = []
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        args += [
            "--user",
            f"{WORKSPACE_UID}:{WORKSPACE_UID}",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--tmpfs",
            f"/tmp:rw,nosuid,nodev,size={self.tmp_size}",
            "--memory",
            self.memory_limit,
            "--memory-swap",
            self.memory_limit,
            "--cpus",
            str(self.cpu_limit),
            "--pids-limit",
            str(self.pids_limit),
            # runc on these hosts must be given both limits explicitly (it cannot keep podman's
            # defaults). nproc counts every uid-1010 task on the machine, so it is set high and
            # --pids-limit (per container) is the real bound.
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=20000:20000",
            "--network",
            self.network,
            "--hostname",
            f"workspace-{self.spawner.analysis_id or 'x'}",
            "--volume",
            f"{home}:{HOME_IN_CONTAINER}:rw",
            "--workdir",
            HOME_IN_CONTAINER,
            "--log-driver",
            "k8s-file",
            "--log-opt",
            "max-size=10mb",
        ]
        for volume in self.extra_volumes:
            args += ["--volume", volume]
        return args

    @staticmethod
    def _env_args(env: dict) -> list[str]:
        """``-e NAME`` per variable: podman copies the value from its own environment, so no value
        (the hub token, the analysis key) ever appears in an argument list."""
        args = []
        for name in sorted(env):
            args += ["--env", name]
        return args

    # -- the network ----------------------------------------------------------------------------
    def _hub_api_port(self) -> int:
        url = urlparse(self.spawner.hub.api_url)
        return url.port or (443 if url.scheme == "https" else 80)

    def _workspace_kinetic_url(self) -> str:
        if self.kinetic_url:
            return self.kinetic_url
        url = urlparse(self.spawner.kinetic_url)
        if url.hostname in LOOPBACK_HOSTS:
            netloc = f"{self.gateway}:{url.port}" if url.port else self.gateway
            return urlunparse(url._replace(netloc=netloc))
        return self.spawner.kinetic_url

    async def _prepare_host(self) -> None:
        """Network + firewall + image, once per hub process (shared by all starts)."""
        key = (self.podman, self.network, self.instance)
        fut = _prepared.get(key)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = _prepared[key] = asyncio.ensure_future(self._prepare_host_once())
        await asyncio.shield(fut)
        self.gateway = fut.result()

    async def _prepare_host_once(self) -> str:
        if "image" not in self._trait_values:
            await asyncio.to_thread(_default_image_tag)  # the first computation, off the loop
        try:
            subnet, gateway = await ensure_network(self.podman, self.network, self.subnet)
        except Exception as e:
            raise BackendError(f"the workspaces' network could not be set up: {e}") from None
        self.gateway = gateway
        if self.firewall:
            if firewall_available():
                ports = {self._hub_api_port(), *self.extra_allowed_ports}
                kinetic = urlparse(self._workspace_kinetic_url())
                if kinetic.hostname == gateway and kinetic.port:
                    ports.add(kinetic.port)
                try:
                    await ensure_firewall(subnet, gateway, ports, self.blocked_networks)
                except Exception as e:
                    raise BackendError(f"the workspaces' firewall could not be installed: {e}") from None
            else:
                self.log.warning(
                    "workspace firewall NOT installed (needs root and iptables): "
                    "workspaces can reach every port of this machine beyond loopback"
                )
        rc, _ = await self._podman("image", "exists", self.image, timeout=60)
        if rc != 0:
            from ..image import ensure_workspace_image, workspace_image_tag

            if self.image != workspace_image_tag():
                raise BackendError(f"the workspace image {self.image} does not exist on this machine")
            self.log.info("building the workspace image %s (first start on this machine)", self.image)
            try:
                await ensure_workspace_image()
            except Exception as e:
                raise BackendError(f"the workspace image could not be built: {e}") from None
        return gateway

    def _wanted(self, info) -> bool:
        """Does a live server or start of this hub own this container?"""
        aid = info.labels.get(LABEL_ANALYSIS, "")
        holder = type(self.spawner)._active.get(aid)
        if holder is None or not holder._occupies():
            return False
        backend = holder._backend
        if not isinstance(backend, ContainerBackend):
            return False
        return info.name in (backend.container_name("server"), backend.container_name("provision"))

    # -- the steps ------------------------------------------------------------------------------
    async def reserve_address(self) -> Address:
        await self._prepare_host()
        # JupyterHub appends its API path to hub_connect_url
        scheme = urlparse(self.spawner.hub.api_url).scheme
        return Address(
            "0.0.0.0", SERVER_PORT, hub_connect_url=f"{scheme}://{self.gateway}:{self._hub_api_port()}"
        )

    async def start(self, request: WorkspaceRequest, on_step) -> tuple[str, int]:
        on_step(STEP_HOST, f"Acquiring a host for “{request.title}”: a container on {socket.gethostname()}")
        await self._prepare_host()
        loop_key = (self.instance, id(asyncio.get_running_loop()))
        slots = _start_slots.setdefault(loop_key, asyncio.Semaphore(max(1, self.concurrent_starts)))
        if slots.locked():
            on_step(STEP_HOST, "Waiting for a free start slot (other workspaces are starting)")
        async with slots:
            return await self._start(request, on_step)

    async def _start(self, request: WorkspaceRequest, on_step) -> tuple[str, int]:
        server, provision = self.container_name("server"), self.container_name("provision")
        # What a start killed halfway (hub SIGKILLed) left under these names goes first: this
        # spawner holds the analysis's claim, so nothing live can own them.
        for name in (provision, server):
            await self._remove(name)
        self.reflector.forget()

        on_step(STEP_STORAGE, "Preparing storage for the analysis home")
        home = await self.prepare_home(request.analysis_id, owner=(WORKSPACE_UID, WORKSPACE_UID))

        on_step(STEP_PROVISION, "Provisioning the workspace")
        inputs = request.provision
        prov_env = inputs.env()
        prov_env["KINETIC_URL"] = self._workspace_kinetic_url()
        argv = self._podman_argv(
            "run",
            "--rm",
            "--name",
            provision,
            *self._security_args("provision", home),
            *self._env_args(prov_env),
            self.image,
            "bash",
            PROVISION_IN_IMAGE,
        )
        await run_script(
            argv,
            {**self._base_env(), **prov_env},
            inputs,
            lambda step: report_provision_step(step, on_step),
            timeout=self.provision_timeout,
            log=self.log,
            on_timeout=lambda: self._remove(provision),
        )

        env = {k: v for k, v in request.hub_env.items() if k.startswith(PASSED_PREFIXES) or k in PASSED_NAMES}
        env["ANALYSIS_ID"] = request.analysis_id  # not secret; the key is in ~/.Renviron only
        if request.default_url:
            env["JUPYTERHUB_DEFAULT_URL"] = request.default_url
        on_step(STEP_SERVER, "Starting the workspace server")
        rc, out = await self._podman(
            "run",
            "--detach",
            "--name",
            server,
            *self._security_args("server", home),
            *self._env_args(env),
            self.image,
            ENTRY_IN_IMAGE,
            "--ip=0.0.0.0",
            f"--port={SERVER_PORT}",
            *request.args,
            env={**self._base_env(), **env},
            timeout=120,
        )
        if rc != 0:
            raise BackendError(
                f"the workspace container did not start: "
                f"{redact(out, env.get('JUPYTERHUB_API_TOKEN', ''))[-500:]}"
            )
        self.container, self.container_id = server, out.strip().splitlines()[-1][:64]
        self.reflector.forget()
        rc, ip = await self._podman(
            "inspect",
            "--format",
            f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
            server,
            timeout=60,
        )
        if rc != 0 or not ip.strip():
            raise BackendError(f"the workspace container has no address on {self.network}: {ip[-300:]}")
        self.ip = ip.strip()
        self.log.info("[%s] workspace container %s at %s:%s", self.who, server, self.ip, self.port)
        # Hold this start's slot until the server listens: starting a JupyterLab server is the
        # CPU-heavy part, and thirty at once on two cores delay every one of them. This is pacing
        # only; JupyterHub's own readiness wait (http_timeout) decides whether the start worked.
        await self._until_listening(self.ip, self.port)
        return self.ip, self.port

    async def _until_listening(self, ip: str, port: int) -> None:
        async def listening():
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
            except (TimeoutError, OSError):
                return False
            writer.close()
            return True

        try:
            await exponential_backoff(
                listening,
                "workspace server not listening yet",
                start_wait=0.1,
                max_wait=1,
                timeout=self.spawner.http_timeout,
            )
        except TimeoutError:
            pass  # the hub's readiness wait reports it

    # -- lifecycle ------------------------------------------------------------------------------
    async def poll(self) -> int | None:
        if not self.container:
            return 0
        try:
            containers = await self.reflector.snapshot(max_age=self.reflect_interval)
        except ReflectorError as e:
            self.log.warning("[%s] cannot list containers (%s): taken as still running", self.who, e)
            return None
        info = containers.get(self.container)
        if info is None:
            return 0
        if self.container_id and info.id and not info.id.startswith(self.container_id[:12]):
            return 0  # a container of the same name that is not ours
        return None if info.alive else (info.exit_code or 1)

    async def stop(self, now: bool = False) -> None:
        if self.container:
            self.log.info("[%s] removing workspace container %s", self.who, self.container)
            await self._remove(self.container)
            self.reflector.forget()

    @property
    def running(self) -> bool:
        return bool(self.container)

    # -- state ----------------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = {"home": self.home} if self.home else {}
        if self.container:
            state.update(
                {
                    "container": self.container,
                    "container_id": self.container_id,
                    "ip": self.ip,
                    "port": self.port,
                }
            )
        return state

    def load_state(self, state: dict) -> None:
        self.home = state.get("home", self.home) or ""
        self.container = state.get("container", "") or ""
        self.container_id = state.get("container_id", "") or ""
        self.ip = state.get("ip", "") or ""
        self.port = int(state.get("port") or SERVER_PORT)

    def clear_state(self) -> None:
        self.container = ""
        self.container_id = ""
        self.ip = ""


__all__ = ["ContainerBackend", "WORKSPACE_UID", "HOME_IN_CONTAINER"]
