"""Where a workspace runs: one interface, one module per world.

``WorkspaceSpawner`` is the JupyterHub glue (traits, progress, saved state, the analysis handed
over by the authenticator). Everything that depends on *where* the workspace runs is a backend:

=============  ==========================================================================
``container``  default. One podman container of the workspace image per analysis, uid 1010,
               limits, only the analysis home mounted (``backends/container.py``)
``process``    development only: a process of the hub's own user (``backends/process.py``)
``aws``        EC2 + Route53 + EFS over SSH, the same image (a later issue)
=============  ==========================================================================

A backend is a ``LoggingConfigurable`` created with ``parent=spawner`` (so ``c.ContainerBackend.x``
configures it, like the enclave's runners) and driven through::

    reserve_address()        -> Address: where the server will listen, and how it reaches the hub
    start(request, on_step)  -> (ip, port) the proxy connects to; the hub's own readiness wait
                                (``Spawner.http_timeout``) then waits for it to answer
    poll()                   -> None while running, else an exit status (0 when unknown)
    stop(now)                compute gone, storage kept
    get_state()/load_state() JSON-able handle a restarted hub uses to find the workspace again

``on_step(percent, message)`` is the one progress callback (``StepCallback``): ``percent`` 0-100,
``message`` a sentence for the researcher (no secrets). Every step is idempotent, so a start that
failed halfway (or a hub killed during it) is simply run again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from traitlets import Any
from traitlets.config import LoggingConfigurable

# (percent 0-100, message for the researcher) -> None
StepCallback = Callable[[int, str], None]

# The steps every backend reports, with the same wording in every world.
STEP_HOST = 5
STEP_STORAGE = 15
STEP_PROVISION = 25
STEP_SEEDED = 40
STEP_DOWNLOAD = 50
STEP_DATA = 65
STEP_SERVER = 75
STEP_WAIT = 85


class BackendError(Exception):
    """A step failed; the message is meant for the researcher and the hub log (no secrets)."""


@dataclass
class ProvisionInputs:
    """The inputs of provision.sh. Passed as environment variables, never as arguments."""

    analysis_id: str
    api_key: str = field(repr=False)
    kinetic_url: str
    cutoff_date: str = ""

    def env(self) -> dict[str, str]:
        env = {
            "ANALYSIS_ID": self.analysis_id,
            "ANALYSIS_API_KEY": self.api_key,
            "KINETIC_URL": self.kinetic_url,
        }
        if self.cutoff_date:
            env["CUTOFF_DATE"] = self.cutoff_date
        return env


@dataclass
class ProvisionResult:
    seeded: bool
    steps: list[str]
    output: str  # stdout + stderr, secrets removed


@dataclass
class Address:
    """Where the single-user server listens (``bind_ip``:``port`` as seen inside its host) and the
    hub API URL it must use (``hub_connect_url``; None = the hub's own ``hub.api_url``)."""

    bind_ip: str
    port: int
    hub_connect_url: str | None = None


@dataclass
class WorkspaceRequest:
    """Everything a backend needs to start one workspace; built by the spawner per start."""

    analysis_id: str
    title: str
    user: str  # hub user name (the owner)
    server_name: str  # a-<analysisId>
    provision: ProvisionInputs
    hub_env: dict = field(repr=False)  # Spawner.get_env(): JUPYTERHUB_* incl. the server's token
    args: list[str] = field(default_factory=list)  # Spawner.get_args()
    default_url: str = ""  # "" = the workspace chooses (/rstudio where rserver exists, else /lab)


def report_provision_step(step: str, on_step: StepCallback) -> None:
    """Turn one ``::step`` line of provision.sh into the researcher's progress message."""
    if step.startswith("seeded"):
        on_step(STEP_SEEDED, "Provisioning: seeded the blank project")
    elif step.startswith("kept"):
        on_step(STEP_SEEDED, "Provisioning: kept your existing project")
    elif step.startswith("downloading"):
        on_step(STEP_DOWNLOAD, f"Downloading synthetic data ({step.split('(', 1)[-1].rstrip(')')})")
    elif step.startswith("synthetic data ready"):
        on_step(STEP_DATA, "Synthetic data downloaded")
    elif step.startswith("WARNING"):
        on_step(STEP_DATA, "Could not refresh the synthetic data; kept the data from last time")


def redact(text: str, *secrets: str) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "<secret>")
    return text


class WorkspaceBackend(LoggingConfigurable):
    """One workspace's compute and storage. One instance per spawner (``parent=spawner``)."""

    kind: ClassVar[str] = "abstract"

    spawner = Any(help="The WorkspaceSpawner this backend serves (its parent).")

    def __init__(self, spawner, **kwargs):
        super().__init__(parent=spawner, spawner=spawner, **kwargs)

    @property
    def who(self) -> str:
        """``user/server`` for log lines."""
        user = getattr(getattr(self.spawner, "user", None), "name", "?")
        return f"{user}/{getattr(self.spawner, 'name', '') or '(default)'}"

    async def reserve_address(self) -> Address:
        raise NotImplementedError

    async def start(self, request: WorkspaceRequest, on_step: StepCallback) -> tuple[str, int]:
        raise NotImplementedError

    async def poll(self) -> int | None:
        raise NotImplementedError

    async def stop(self, now: bool = False) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether this backend holds a server (cheap, no I/O): guards one workspace per analysis."""
        raise NotImplementedError

    def home_path(self) -> str:
        """The analysis home on the hub's machine, where there is one ("" otherwise)."""
        return ""

    def get_state(self) -> dict:
        """JSON-able handle to find the server again after a hub restart (no secrets)."""
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def clear_state(self) -> None:
        pass


BACKENDS = {
    "container": "kinetic_spawner.backends.container:ContainerBackend",
    "process": "kinetic_spawner.backends.process:ProcessBackend",
}


def backend_class(kind: str) -> type[WorkspaceBackend]:
    if kind == "aws":
        raise NotImplementedError(
            "WorkspaceSpawner.backend = 'aws' (EC2 + Route53 + EFS, provisioned over SSH) is not "
            "implemented yet; use backend = 'container'"
        )
    if kind not in BACKENDS:
        raise ValueError(f"unknown workspace backend {kind!r}: expected one of {sorted(BACKENDS)} or 'aws'")
    module, name = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Address",
    "BackendError",
    "ProvisionInputs",
    "ProvisionResult",
    "StepCallback",
    "WorkspaceBackend",
    "WorkspaceRequest",
    "backend_class",
    "redact",
    "report_provision_step",
]
