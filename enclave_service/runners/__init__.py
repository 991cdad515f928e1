"""The enclave's executor interface: how one analysis run is started, watched and removed.

Shaped like OpenSAFELY job-runner's executor: ``prepare / execute / get_status / wait /
finalize / terminate / cleanup``, each keyed by ``run_id`` and idempotent, so the service
can call any step again after a crash and the runner rebuilds what it needs from the
container engine (or the cloud) rather than from memory.

Two implementations: :class:`~enclave_service.runners.podman.PodmanRunner` (this machine)
and :class:`~enclave_service.runners.ec2.EC2Runner` (an ephemeral EC2 instance with docker).
Both run the same :class:`~enclave_service.container.ContainerSpec`.
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from traitlets.config import LoggingConfigurable

__all__ = [
    "DEFAULT_COMMAND",
    "JobState",
    "RunJob",
    "RunLimits",
    "RunResult",
    "Runner",
    "RunnerError",
    "truncate_logs",
    "validate_run_id",
    "with_backoff",
]

DEFAULT_COMMAND = ["R", "--no-save", "--no-restore", "-f", "main.r"]
RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class RunnerError(RuntimeError):
    """A runner step failed for a reason outside the analysis itself (engine, cloud, SSH)."""


def validate_run_id(run_id: str) -> str:
    """run ids become container names, labels and remote paths: keep them boring."""
    if not RUN_ID_RE.match(run_id or ""):
        raise ValueError(f"run id {run_id!r} must be 1-63 characters of a-z, 0-9 and '-'")
    return run_id


@dataclass
class RunLimits:
    """Resource limits of one run. Swap is never granted beyond memory (memory-swap == memory)."""

    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 256
    wall_seconds: int = 3600
    file_size_mb: int = 256
    nofile: int = 1024
    nproc: int = 512  # per-uid process limit, a second fence behind pids
    tmpfs_mb: int = 64
    log_bytes: int = 64 * 1024


@dataclass
class RunJob:
    """One run. ``code_dir`` is the extracted analysis home (``/home/editor`` in the workspace);
    the project is ``code_dir / "kinetic"``. Real data is mounted read-only at ``<workdir>/data``
    (shadowing any synthetic data in the archive); ``output_dir`` is the only writable place."""

    run_id: str
    image: str
    code_dir: Path
    data_dir: Path
    output_dir: Path
    limits: RunLimits = field(default_factory=RunLimits)
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    workdir: str = "/home/editor/kinetic"
    # Extra harmless environment variables (e.g. TZ). Never a secret: it is visible in `inspect`.
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        validate_run_id(self.run_id)
        self.code_dir, self.data_dir, self.output_dir = (
            Path(self.code_dir),
            Path(self.data_dir),
            Path(self.output_dir),
        )

    @property
    def container_name(self) -> str:
        return f"kinetic-run-{self.run_id}"


class JobState(enum.Enum):
    UNKNOWN = "unknown"  # nothing exists for this run id (never prepared, or cleaned up)
    PREPARED = "prepared"  # container created, not started
    RUNNING = "running"
    EXITED = "exited"  # finished; finalize() collects the result


@dataclass
class RunResult:
    exit_code: int | None
    oom_killed: bool
    timed_out: bool
    logs: str
    duration_s: float
    limits: RunLimits = field(default_factory=RunLimits)
    logs_cut_bytes: int = 0  # how many bytes of log were dropped by truncation
    error: str | None = None  # runner-level problem (the run could not be observed)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.oom_killed and not self.timed_out and not self.error

    def failure_reason(self) -> str:
        """Why the run failed, in words a researcher can act on ('' when it succeeded)."""
        if self.succeeded:
            return ""
        if self.timed_out:
            return f"stopped at the time limit of {self.limits.wall_seconds} s"
        if self.oom_killed:
            return f"out of memory (limit {self.limits.memory_mb} MB)"
        if self.error:
            return f"the run could not be completed: {self.error}"
        if self.exit_code is None:
            return "the run ended without an exit code"
        if self.exit_code > 128:
            return f"the R script was killed by signal {self.exit_code - 128} (exit code {self.exit_code})"
        return f"the R script exited with code {self.exit_code}"


def truncate_logs(data: bytes, limit: int) -> tuple[str, int]:
    """Keep the head (what started) and the tail (where errors are) of a long log, and say
    how much was cut in between. Returns (text, bytes cut)."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), 0
    head_n = limit // 4
    tail_n = limit - head_n
    cut = len(data) - head_n - tail_n
    marker = f"\n[... log truncated: {cut} bytes cut ...]\n"
    text = (
        data[:head_n].decode("utf-8", "replace")
        + marker
        + data[len(data) - tail_n :].decode("utf-8", "replace")
    )
    return text, cut


async def with_backoff(
    make_call,
    *,
    attempts: int = 4,
    base: float = 0.5,
    cap: float = 8.0,
    retry_on: tuple = (RunnerError, OSError),
    log=None,
):
    """Await ``make_call()`` up to ``attempts`` times with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return await make_call()
        except retry_on as e:
            if attempt == attempts:
                raise
            delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
            if log:
                log.warning("attempt %d/%d failed (%s); retrying in %.1fs", attempt, attempts, e, delay)
            await asyncio.sleep(delay)


class _RunnerMeta(ABCMeta, type(LoggingConfigurable)):
    """traitlets' metaclass and ABC's, combined so a Runner is both configurable and abstract."""


class Runner(LoggingConfigurable, metaclass=_RunnerMeta):
    """Executor interface. Every step is idempotent and keyed by ``job.run_id``."""

    @abstractmethod
    async def prepare(self, job: RunJob) -> None:
        """Make the run ready to start (mountpoints, ownership, container created)."""

    async def execute(self, job: RunJob) -> None:
        """Start the run; returns once it has started (no-op if already running or exited)."""
        state = await self.get_status(job)
        if state is JobState.UNKNOWN:
            await self.prepare(job)
            state = JobState.PREPARED
        if state is JobState.PREPARED:
            await self._start(job)
            self.log.info("run %s: started", job.run_id)

    @abstractmethod
    async def _start(self, job: RunJob) -> None:
        """Start the prepared container (the engine-specific part of execute)."""

    @abstractmethod
    async def get_status(self, job: RunJob) -> JobState:
        """Where the run is, read from the engine (survives a service restart)."""

    async def wait(self, job: RunJob) -> RunResult:
        """Wait for the run to end, stopping it at ``limits.wall_seconds`` (timed_out), then finalize.

        The deadline counts from the container's own start time (read from the engine), so it
        holds across service restarts. Runners supply ``_inspect``, ``_stop_at_time_limit`` and
        (to see the exit without polling) ``_until_exit``."""
        while True:
            cs = await self._inspect(job)
            if cs is None:
                raise RunnerError(f"run {job.run_id}: container is gone")
            if cs.state is JobState.EXITED:
                return await self.finalize(job)
            if cs.state is JobState.PREPARED:
                raise RunnerError(f"run {job.run_id}: wait() before execute()")
            started = cs.started_at or datetime.now(UTC)
            remaining = job.limits.wall_seconds - (datetime.now(UTC) - started).total_seconds()
            if remaining <= 0:
                self.log.warning("run %s: wall-clock limit reached, stopping", job.run_id)
                self._stopped_for_time.add(job.run_id)
                await self._stop_at_time_limit(job)
                continue
            await self._until_exit(job, remaining)

    async def _until_exit(self, job: RunJob, timeout: float) -> None:
        """Return when the run may have exited, at the latest after ``timeout`` seconds."""
        await asyncio.sleep(min(self.poll_interval, timeout))

    @abstractmethod
    async def finalize(self, job: RunJob) -> RunResult:
        """Collect exit code, OOM flag, logs (and outputs) of an exited run."""

    @abstractmethod
    async def terminate(self, job: RunJob) -> None:
        """Stop the run now (withdrawn, time limit, shutdown)."""

    @abstractmethod
    async def cleanup(self, job: RunJob) -> None:
        """Remove everything the run left in the engine/cloud. Idempotent."""

    async def list_run_ids(self) -> list[str]:
        """Run ids this runner can still find (for reconcile / orphan reaping)."""
        return []
