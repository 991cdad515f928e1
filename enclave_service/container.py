"""The one description of an enclave container.

A :class:`ContainerSpec` is built from a :class:`RunJob` and rendered to the argv of
``podman create`` *or* ``docker create``. Both runners use it, so the hardening flags
cannot drift between the local and the aws world. The only differences between the two
renderings are the program name, the OCI runtime and :data:`ENGINE_FLAGS` (flags one
engine has and the other lacks); a test holds them to that.

Also here: staging of the host directories the container mounts, and parsing of the
``inspect`` JSON both engines return.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from .runners import JobState, RunJob, RunLimits

RUN_UID = 1010
RUN_GID = 1010
HOME = "/home/editor"
LABEL_RUN_ID = "kinetic.run_id"
LABEL_HUB = "kinetic.hub"
LABEL_APP = "kinetic.app"
APP = "KineticWorkspaces"

# Harmless variables every run gets. Nothing else from the service's environment enters.
BASE_ENV = {"HOME": HOME, "LANG": "C.UTF-8", "TZ": "UTC", "TMPDIR": "/tmp"}
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
SECRETISH_RE = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AWS_", re.I)

# Flags only one engine understands. podman's --read-only would otherwise add writable,
# exec-allowed tmpfs mounts on /run and /var/tmp, and --http-proxy would copy the host's
# proxy variables in. docker has neither behaviour, so needs neither flag.
ENGINE_FLAGS = {
    "podman": ["--read-only-tmpfs=false", "--http-proxy=false", "--log-driver=k8s-file"],
    "docker": ["--log-driver=json-file"],
}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    readonly: bool = True

    def arg(self) -> str:
        # --mount (not -v): a path with ':' cannot be misparsed, and a missing source is an
        # error instead of being silently created as an empty directory.
        opts = f"type=bind,source={self.source},target={self.target}"
        return opts + (",readonly" if self.readonly else "")


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    workdir: str
    mounts: list[Mount]
    limits: RunLimits
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    user: str = f"{RUN_UID}:{RUN_GID}"

    @classmethod
    def from_job(cls, job: RunJob, hub: str = "local") -> ContainerSpec:
        workdir = PurePosixPath(job.workdir)
        if not workdir.is_relative_to(HOME) or workdir == PurePosixPath(HOME):
            raise ValueError(f"workdir {job.workdir} must be a directory under {HOME}")
        env = dict(BASE_ENV)
        for k, v in job.env.items():
            if not ENV_NAME_RE.match(k) or SECRETISH_RE.search(k):
                raise ValueError(f"environment variable {k!r} is not allowed in a run")
            env[k] = v
        return cls(
            name=job.container_name,
            image=job.image,
            command=list(job.command),
            workdir=str(workdir),
            mounts=[
                Mount(str(job.code_dir), HOME, readonly=True),
                Mount(str(job.data_dir), str(workdir / "data"), readonly=True),
                Mount(str(job.output_dir), str(workdir / "output"), readonly=False),
            ],
            limits=job.limits,
            env=env,
            labels={LABEL_RUN_ID: job.run_id, LABEL_HUB: hub, LABEL_APP: APP},
        )

    def common_args(self) -> list[str]:
        """Flags both engines share: this list *is* the isolation policy."""
        lim = self.limits
        fsize = lim.file_size_mb * 1024 * 1024  # RLIMIT_FSIZE is in bytes
        args = [
            "--name",
            self.name,
            "--pull",
            "never",  # run only what we built, never fetch
            "--network",
            "none",
            "--hostname",
            "enclave",
            "--user",
            self.user,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--tmpfs",
            f"/tmp:rw,noexec,nosuid,nodev,mode=1777,size={lim.tmpfs_mb}m",
            "--shm-size",
            f"{lim.tmpfs_mb}m",
            "--memory",
            f"{lim.memory_mb}m",
            "--memory-swap",
            f"{lim.memory_mb}m",  # equal: no swap on top of memory
            "--cpus",
            f"{lim.cpus:g}",
            "--pids-limit",
            str(lim.pids),
            "--ulimit",
            f"fsize={fsize}:{fsize}",
            "--ulimit",
            f"nofile={lim.nofile}:{lim.nofile}",
            "--ulimit",
            f"nproc={lim.nproc}:{lim.nproc}",
            # bound the engine's log file on disk; we truncate further when reading
            "--log-opt",
            f"max-size={max(lim.log_bytes * 16, 1 << 20)}",
            "--workdir",
            self.workdir,
        ]
        for m in self.mounts:
            args += ["--mount", m.arg()]
        for k, v in sorted(self.env.items()):
            args += ["--env", f"{k}={v}"]
        for k, v in sorted(self.labels.items()):
            args += ["--label", f"{k}={v}"]
        return args

    def create_argv(
        self, engine: str = "podman", program: list[str] | None = None, runtime: str | None = None
    ) -> list[str]:
        """argv of ``<engine> create``; ``program`` may be e.g. ``["sudo", "docker"]``."""
        if engine not in ENGINE_FLAGS:
            raise ValueError(f"unknown container engine {engine!r}")
        argv = list(program or [engine]) + ["create"] + self.common_args() + ENGINE_FLAGS[engine]
        if runtime:
            argv += ["--runtime", runtime]
        return argv + [self.image] + self.command

    def create_command(
        self, engine: str, program: list[str] | None = None, runtime: str | None = None
    ) -> str:
        """The same argv as one shell-quoted string (for running over SSH)."""
        return shlex.join(self.create_argv(engine, program, runtime))


def project_dir(job: RunJob) -> Path:
    """Host path of the directory mounted at ``job.workdir``."""
    return job.code_dir / PurePosixPath(job.workdir).relative_to(HOME)


def stage_job(job: RunJob, chown: bool = True) -> None:
    """Make the host directories mountable (blocking: call via ``asyncio.to_thread``).

    The code is mounted read-only, so the nested mountpoints ``data/`` and ``output/`` must
    already exist in the staged copy: we create them, replacing a symlink or file of that
    name (a symlink would otherwise be followed *on the host* by mkdir). The output dir is
    handed to uid 1010 with mode 0700 by chown rather than podman's ``:U`` option, because
    ``:U`` has no docker equivalent and would make the two renderings differ. Inputs are
    chowned to 1010 (without following links) so the run can read them; their mounts stay
    read-only, so ownership grants no write.
    """
    for d in (job.code_dir, job.data_dir):
        if d.is_symlink() or not d.is_dir():
            raise ValueError(f"{d} must be a directory")
    project = project_dir(job)
    if project.is_symlink() or (project.exists() and not project.is_dir()):
        raise ValueError(f"the analysis project {project} must be a directory, not a link")
    project.mkdir(parents=True, exist_ok=True)
    for name in ("data", "output"):
        p = project / name
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            p.unlink()
        p.mkdir(exist_ok=True)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    if chown and os.geteuid() == 0:
        for d in (job.code_dir, job.data_dir):
            _lchown_tree(d)
        os.chown(job.output_dir, RUN_UID, RUN_GID)
        os.chmod(job.output_dir, 0o700)


def _lchown_tree(root: Path) -> None:
    os.lchown(root, RUN_UID, RUN_GID)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), RUN_UID, RUN_GID)


@dataclass
class ContainerState:
    """What both engines' ``inspect`` tell us about a container."""

    state: JobState
    id: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ran_seconds(self) -> float:
        if self.started_at and self.finished_at and self.finished_at >= self.started_at:
            return (self.finished_at - self.started_at).total_seconds()
        return 0.0


_STATUS = {
    "created": JobState.PREPARED,
    "configured": JobState.PREPARED,
    "initialized": JobState.PREPARED,
    "running": JobState.RUNNING,
    "paused": JobState.RUNNING,
    "stopping": JobState.RUNNING,
    "restarting": JobState.RUNNING,
    "exited": JobState.EXITED,
    "stopped": JobState.EXITED,
    "dead": JobState.EXITED,
    "removing": JobState.EXITED,
}


def parse_inspect(data: dict) -> ContainerState:
    st = data.get("State") or {}
    state = _STATUS.get(str(st.get("Status", "")).lower(), JobState.UNKNOWN)
    exited = state is JobState.EXITED
    return ContainerState(
        state=state,
        id=str(data.get("Id") or data.get("ID") or ""),
        exit_code=int(st["ExitCode"]) if exited and "ExitCode" in st else None,
        oom_killed=bool(st.get("OOMKilled")),
        started_at=parse_time(st.get("StartedAt")),
        finished_at=parse_time(st.get("FinishedAt")),
    )


def kernel_log_shows_oom(kernel_log: str, container_id: str) -> bool:
    """Did the kernel's OOM killer act in this container's memory cgroup? With runc on
    cgroup v1 podman does not set State.OOMKilled, but the kernel log names the cgroup
    ('oom-kill:...oom_memcg=/.../libpod-<id>' or '.../docker-<id>.scope')."""
    if len(container_id) < 12:
        return False
    return any(
        "oom_memcg=" in line
        and container_id in line
        or "out of memory" in line.lower()
        and container_id in line
        for line in kernel_log.splitlines()
    )


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def parse_time(value) -> datetime | None:
    """RFC 3339 with nanoseconds (both engines); zero times ('0001-01-01...') mean unset."""
    m = _TIME_RE.match(str(value or ""))
    if not m or m.group(1).startswith("0001"):
        return None
    frac = (m.group(2) or ".0")[:7]
    tz = m.group(3) or "Z"
    tz = "+00:00" if tz == "Z" else tz
    return datetime.fromisoformat(m.group(1) + frac + tz).astimezone(UTC)
