"""PodmanRunner: runs an analysis in a hardened podman container on this machine.

State lives in podman, not in this object: the container is named ``kinetic-run-<id>`` and
labelled ``kinetic.run_id=<id>``, so a new runner (after a service restart) finds it again
and can finalize or clean it up.
"""

from __future__ import annotations

import asyncio
import json
import os

from traitlets import Bool, Float, Int, Unicode

from .. import proc
from ..container import (
    APP,
    LABEL_APP,
    LABEL_RUN_ID,
    ContainerSpec,
    ContainerState,
    kernel_log_shows_oom,
    parse_inspect,
    stage_job,
)
from . import JobState, RunJob, Runner, RunnerError, RunResult, truncate_logs, with_backoff

NOT_FOUND = ("no such container", "no container with name or id", "no such object")


async def run_cmd(argv: list[str], timeout: float = 120.0) -> tuple[int, bytes, bytes]:
    """Run a local command without blocking the event loop; kill it when it overstays."""
    try:
        return await proc.run(argv, timeout)
    except proc.CommandTimeout as e:
        raise RunnerError(str(e)) from None


class PodmanRunner(Runner):
    podman = Unicode("podman", config=True, help="The podman executable.")
    runtime = Unicode(
        "runc",
        config=True,
        allow_none=True,
        help="""OCI runtime passed as --runtime. runc by default: crun fails on hosts with
        hybrid cgroups. Empty/None uses podman's default (e.g. to try runsc/gVisor).""",
    )
    hub_name = Unicode("local", config=True, help="Value of the kinetic.hub label on containers.")
    chown_inputs = Bool(
        True,
        config=True,
        help="""chown the staged code and data copies to uid 1010 so the run can read them
        (mounts stay read-only). Turn off if the service stages them readable already.""",
    )
    poll_interval_max = Float(
        30.0,
        config=True,
        help="""Longest wait() blocks in `podman wait` before it
        re-inspects the container (to enforce the wall-clock limit). The exit itself is seen at once.""",
    )
    stop_grace_seconds = Int(
        5, config=True, help="Seconds between SIGTERM and SIGKILL when a run is stopped."
    )
    sigkill_means_oom = Bool(
        True,
        config=True,
        help="""When the engine does not flag OOM and the kernel log cannot be read, report a
        SIGKILL (exit 137) we did not send as out of memory. The cgroup's memory limit is by
        far the likeliest sender; the message then tells the researcher what to change.""",
    )
    command_timeout = Float(
        120.0, config=True, help="Seconds any single podman command may take before it is killed."
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Runs this process stopped at the time limit. After a restart the same fact is
        # re-derived from the container's start/finish times (see _timed_out).
        self._stopped_for_time: set[str] = set()

    # ---- engine helpers -------------------------------------------------------------
    def _base(self) -> list[str]:
        return [self.podman]

    async def _podman(self, *args: str, ok_if_missing: bool = False) -> bytes:
        rc, out, err = await run_cmd(self._base() + list(args), self.command_timeout)
        if rc != 0:
            msg = err.decode("utf-8", "replace").strip()
            if ok_if_missing and any(s in msg.lower() for s in NOT_FOUND):
                return b""
            raise RunnerError(f"podman {args[0]} failed ({rc}): {msg[-500:]}")
        return out

    async def _inspect(self, job: RunJob) -> ContainerState | None:
        async def once():
            rc, out, err = await run_cmd(
                self._base() + ["container", "inspect", job.container_name], self.command_timeout
            )
            if rc != 0:
                if any(s in err.decode(errors="replace").lower() for s in NOT_FOUND):
                    return None
                raise RunnerError(f"podman inspect failed ({rc}): {err.decode(errors='replace')}")
            data = json.loads(out or b"[]")
            return parse_inspect(data[0]) if data else None

        return await with_backoff(once, attempts=3, base=0.2, log=self.log)

    def spec(self, job: RunJob) -> ContainerSpec:
        return ContainerSpec.from_job(job, hub=self.hub_name)

    def create_argv(self, job: RunJob) -> list[str]:
        return self.spec(job).create_argv("podman", self._base(), self.runtime or None)

    # ---- the executor interface -----------------------------------------------------
    async def prepare(self, job: RunJob) -> None:
        if await self._inspect(job) is not None:
            return  # already created (by us, before a restart): nothing to do
        await asyncio.to_thread(stage_job, job, self.chown_inputs)
        if self.chown_inputs and os.geteuid() != 0:
            # rootless podman: uid 1010 in the container is a sub-uid on the host
            await self._podman("unshare", "chown", "1010:1010", str(job.output_dir))
        rc, _, err = await run_cmd(self.create_argv(job), self.command_timeout)
        if rc != 0 and "already in use" not in err.decode(errors="replace"):
            raise RunnerError(
                f"could not create the run container: {err.decode(errors='replace').strip()[-500:]}"
            )
        self.log.info("run %s: container %s created", job.run_id, job.container_name)

    async def _start(self, job: RunJob) -> None:
        await self._podman("start", job.container_name)

    async def get_status(self, job: RunJob) -> JobState:
        cs = await self._inspect(job)
        return cs.state if cs else JobState.UNKNOWN

    async def _stop_at_time_limit(self, job: RunJob) -> None:
        await self.terminate(job)

    async def _until_exit(self, job: RunJob, timeout: float) -> None:
        """Return as soon as the container exits (``podman wait``), or after ``timeout``:
        no polling delay on the hot path, and the caller re-checks the wall clock in between."""
        try:
            await run_cmd(self._base() + ["wait", job.container_name], min(self.poll_interval_max, timeout))
        except (TimeoutError, RunnerError, OSError):
            pass  # the loop inspects the container again either way

    async def finalize(self, job: RunJob) -> RunResult:
        cs = await self._inspect(job)
        if cs is None or cs.state is not JobState.EXITED:
            raise RunnerError(
                f"run {job.run_id}: cannot finalize, state is "
                f"{cs.state.value if cs else 'unknown (no container)'}"
            )
        logs, cut = await self._logs(job)
        timed_out = self._timed_out(job, cs)
        oom = not timed_out and (cs.oom_killed or (cs.exit_code == 137 and await self._oom_seen(cs)))
        return RunResult(
            exit_code=cs.exit_code,
            oom_killed=oom,
            timed_out=timed_out,
            logs=logs,
            logs_cut_bytes=cut,
            duration_s=round(cs.ran_seconds, 3),
            limits=job.limits,
        )

    def _timed_out(self, job: RunJob, cs: ContainerState) -> bool:
        if job.run_id in self._stopped_for_time:
            return True
        # After a restart: killed by a signal having run for the whole allowance.
        return (cs.exit_code or 0) > 128 and cs.ran_seconds >= job.limits.wall_seconds

    async def _oom_seen(self, cs: ContainerState) -> bool:
        try:
            rc, out, _ = await run_cmd(["dmesg"], 30)
        except (OSError, RunnerError):
            rc, out = 1, b""
        if rc != 0:
            return self.sigkill_means_oom
        return kernel_log_shows_oom(out.decode("utf-8", "replace"), cs.id)

    async def _logs(self, job: RunJob) -> tuple[str, int]:
        try:
            _, out, _ = await proc.run(
                self._base() + ["logs", job.container_name], self.command_timeout, merge_stderr=True
            )
        except proc.CommandTimeout as e:
            raise RunnerError(f"run {job.run_id}: could not read its logs ({e})") from None
        return truncate_logs(out, job.limits.log_bytes)

    async def terminate(self, job: RunJob) -> None:
        await self._podman(
            "stop", "--time", str(self.stop_grace_seconds), job.container_name, ok_if_missing=True
        )

    async def cleanup(self, job: RunJob) -> None:
        await self._podman(
            "rm",
            "--force",
            "--ignore",
            "--time",
            str(self.stop_grace_seconds),
            job.container_name,
            ok_if_missing=True,
        )
        self._stopped_for_time.discard(job.run_id)

    async def list_run_ids(self) -> list[str]:
        out = await self._podman("ps", "--all", "--filter", f"label={LABEL_APP}={APP}", "--format", "json")
        return sorted({c.get("Labels", {}).get(LABEL_RUN_ID) for c in json.loads(out or b"[]")} - {None})
