"""Where a workspace runs: one small interface, one module per world.

``WorkspaceSpawner`` drives a backend through the same steps in both worlds::

    acquire_host()      a machine for this analysis (local: this one; aws: an EC2 instance + DNS name)
    prepare_storage()   the analysis home (local: a directory; aws: an EFS access point mounted there)
    run_provisioning()  run provision.sh as the workspace user with its inputs in the environment
    start_server()      start jupyterhub-singleuser there; returns (ip, port) for the proxy
    poll() / stop()     None while running, else an exit status / compute gone, data kept
    get_state() / load_state()   what a restarted hub needs to find the workspace again

Every step is idempotent, so a start that failed halfway can simply be run again.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable

# progress callback: (percent, message) -> None
StepCallback = Callable[[int, str], None]


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
        env = {"ANALYSIS_ID": self.analysis_id, "ANALYSIS_API_KEY": self.api_key,
               "KINETIC_URL": self.kinetic_url}
        if self.cutoff_date:
            env["CUTOFF_DATE"] = self.cutoff_date
        return env


@dataclass
class ProvisionResult:
    seeded: bool
    steps: list[str]
    output: str  # stdout + stderr, secrets removed


class Backend(abc.ABC):
    """One workspace's compute and storage. Created per spawner; state via get/load_state."""

    name = "abstract"

    def __init__(self, spawner):
        self.spawner = spawner
        self.log = spawner.log

    @abc.abstractmethod
    async def acquire_host(self, analysis_id: str) -> str:
        """Find or create the host; returns a short description for progress messages."""

    @abc.abstractmethod
    async def prepare_storage(self, analysis_id: str) -> str:
        """Create (or find) the analysis home, mode 0700; returns its path on the host."""

    @abc.abstractmethod
    async def run_provisioning(self, inputs: ProvisionInputs, on_step: StepCallback) -> ProvisionResult:
        """Run provision.sh on the host as the workspace user; raises BackendError on failure."""

    @abc.abstractmethod
    async def reserve_address(self) -> tuple[str, int]:
        """The (ip, port) the server will listen on (needed before its environment is built)."""

    @abc.abstractmethod
    async def start_server(self, cmd: list[str], env: dict[str, str]) -> tuple[str, int]:
        """Start the single-user server (cmd, env: no secrets in cmd); returns (ip, port)."""

    @abc.abstractmethod
    async def wait_until_answering(self, url_path: str, timeout: float) -> None:
        """Return when the server answers HTTP at url_path; raise BackendError if it died."""

    @abc.abstractmethod
    async def poll(self) -> int | None:
        """None while the server runs; an exit status (0 when unknown) once it is gone."""

    @abc.abstractmethod
    async def stop(self, timeout: float) -> None:
        """Remove the compute (bounded wait), keep the storage."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether this backend holds a server (cheap, no I/O): used to guard one per analysis."""

    @abc.abstractmethod
    def get_state(self) -> dict:
        """JSON-able state to find the server again after a hub restart (no secrets)."""

    @abc.abstractmethod
    def load_state(self, state: dict) -> None:
        ...

    @abc.abstractmethod
    def clear_state(self) -> None:
        ...


def backend_class(name: str) -> type[Backend]:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend
    if name == "aws":
        raise NotImplementedError(
            "WorkspaceSpawner.backend = 'aws' (EC2 + Route53 + EFS, provisioned over SSH) is not "
            "implemented yet; use backend = 'local'")
    raise ValueError(f"unknown workspace backend {name!r}: expected 'local' or 'aws'")


__all__ = ["Backend", "BackendError", "ProvisionInputs", "ProvisionResult", "StepCallback",
           "backend_class"]
