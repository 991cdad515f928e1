"""The enclave pipeline: a persisted state machine, one function per step.

    submitted → archived → code_checked → built → ran → outputs_checked → in_review
              → (reviewers) → approved → released

Every step reads what it needs from the database and the run's folder, does its work, and the
driver records the next state (or ``failed_<step>`` with a plain-words reason) in one transaction
with its audit event. A step is idempotent: run it twice and the result is the same (extraction
starts from an empty folder, image builds are content-addressed, the runner is keyed by run id,
the release is rebuilt from the checked outputs). So after a crash or a restart the service simply
calls the step of the state each run is in (:meth:`Pipeline.resume_all`). Each step has a time limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

from . import db as dbm
from .db import Database, Run, RunRecord
from .runs import Runs
from .states import NEEDS_DATA, PIPELINE, RUNNING, TERMINAL, State, StepFailed, values

log = logging.getLogger("enclave.pipeline")
__all__ = ["Pipeline", "Step", "StepFailed"]


@dataclasses.dataclass
class Step:
    name: str  # for logs and time-limit messages
    source: State  # the state the run must be in
    target: State  # the state after success
    failed: State  # the state after failure
    limit: float  # seconds
    doing: str  # words for "while <doing>"


def _cutoff_from_main_r(project: Path) -> str:
    """The data cutoff the researcher chose in main.r (`cutoff_date = "YYYY-MM-DD"`), else today."""
    main = project / "main.r"
    try:
        text = main.read_text(errors="replace")
    except OSError:
        text = ""
    m = re.search(r'cutoff_date\s*(?:=|<-)\s*["\'](\d{4}-\d{2}-\d{2})["\']', text)
    return m.group(1) if m else time.strftime("%Y-%m-%d")


def _count_records(data: Path) -> int:
    """Data rows (lines after the header) of the staged CSV files, summed."""
    n = 0
    for p in sorted(data.glob("*.csv")):
        with open(p, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        n += max(lines - 1, 0)
    return n


class Pipeline:
    def __init__(
        self,
        *,
        db: Database,
        runs_dir: Path,
        kinetic,
        runner,
        mailer,
        public_url: str,
        service_prefix: str = "/services/enclave/",
        limits: dict | None = None,
        archive_limits=None,
        run_limits=None,
        output_rules=None,
        code_rules=None,
        output_volume=None,
        max_parallel: int = 2,
        ensure_base_image=None,
        build_image=None,
        run_command=None,
        remove_image=None,
        retention_days: float = 30,
        release_retention_days: float = 90,
        metrics=None,
    ):
        from . import retention
        from .output_volume import OutputVolume

        self.db = db
        self.runs = Runs(db, kinetic, metrics)  # the owner of every state change (and its counts)
        self.metrics = self.runs.metrics
        self.runs.driver = self
        self.runs_dir = Path(runs_dir)
        self.kinetic = kinetic  # KineticSync (the real-data client is kinetic.client)
        self.runner = runner
        self.mailer = mailer
        self.public_url = public_url.rstrip("/")
        self.service_prefix = service_prefix
        self.archive_limits = archive_limits
        self.run_limits = run_limits
        self.output_rules = output_rules
        self.code_rules = code_rules
        self.output_volume = output_volume or OutputVolume()
        self.run_command = run_command
        self._ensure_base_image = ensure_base_image
        self._build_image = build_image
        self.remove_image = remove_image or retention.default_remove_image
        self.image_guard = retention.ImageGuard()  # builds vs. removal of a shared image
        self.retention_days = retention_days
        self.release_retention_days = release_retention_days
        self.janitor_task: asyncio.Task | None = None
        run_wall = getattr(run_limits, "wall_seconds", 3600)
        # The runner stops the container at its wall-clock limit; the step's limit adds a margin
        # for image start, log collection and clean-up.
        self.limits = {
            "archive": 120,
            "code": 120,
            "build": 1800,
            "run": run_wall + 300,
            "outputs": 300,
            "review": 60,
            "release": 300,
            **(limits or {}),
        }
        self.steps = [
            Step(
                "archive",
                State.SUBMITTED,
                State.ARCHIVED,
                State.FAILED_ARCHIVED,
                self.limits["archive"],
                "unpacking the code archive",
            ),
            Step(
                "code",
                State.ARCHIVED,
                State.CODE_CHECKED,
                State.FAILED_CODE_CHECKED,
                self.limits["code"],
                "checking the code",
            ),
            Step(
                "build",
                State.CODE_CHECKED,
                State.BUILT,
                State.FAILED_BUILT,
                self.limits["build"],
                "building the image and staging the data",
            ),
            Step("run", State.BUILT, State.RAN, State.FAILED_RAN, self.limits["run"], "running the analysis"),
            Step(
                "outputs",
                State.RAN,
                State.OUTPUTS_CHECKED,
                State.FAILED_OUTPUTS_CHECKED,
                self.limits["outputs"],
                "checking the outputs",
            ),
            Step(
                "review",
                State.OUTPUTS_CHECKED,
                State.IN_REVIEW,
                State.FAILED_OUTPUTS_CHECKED,
                self.limits["review"],
                "asking for review",
            ),
            Step(
                "release",
                State.APPROVED,
                State.RELEASED,
                State.FAILED_RELEASED,
                self.limits["release"],
                "packaging the release",
            ),
        ]
        self.by_source = {s.source: s for s in self.steps}
        self.tasks: dict[str, asyncio.Task] = {}
        self.semaphore = asyncio.Semaphore(max_parallel)
        self.base_image: str | None = None
        self._base_lock = asyncio.Lock()

    # -- folders ----------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def archive_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "archive.tar.zst"

    def code_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "code"

    def data_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "data"

    def output_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "output"

    def volume_dir(self, run_id: str) -> Path:
        """Where the run writes (the bounded output volume); ``output_dir`` holds what it wrote
        once the run step has passed."""
        return self.run_dir(run_id) / "output.volume"

    def release_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "release.zip"

    def run_url(self, run_id: str) -> str:
        return f"{self.public_url}{self.service_prefix}runs/{run_id}"

    # -- driving ----------------------------------------------------------------------------
    def kick(self, run_id: str) -> None:
        """Make sure a driver task is working on this run (no-op when one is)."""
        task = self.tasks.get(run_id)
        if task and not task.done():
            return
        self.tasks[run_id] = asyncio.create_task(self.drive(run_id), name=f"run-{run_id}")

    async def resume_all(self) -> list[str]:
        """At start-up: drive every run that the pipeline owns, and finish side effects
        (Kinetic completion, mail) that a crash may have left undone."""
        ids = await self.runs.ids_in(PIPELINE)
        for run_id in ids:
            log.info("resuming run %s", run_id)
            self.kick(run_id)

        def pending(session):
            q = session.query(Run).filter(Run.state.in_(values(TERMINAL)))
            return [
                r.id
                for r in q
                if (self.kinetic.enabled and r.kinetic_run_key and not r.kinetic_completed)
                or (r.state == State.RELEASED.value and not r.mail_sent)
            ]

        for run_id in await self.db.run(pending):
            asyncio.create_task(self.finish(run_id))
        await self.reconcile()
        return ids

    async def reconcile(self) -> None:
        """Remove what no live run owns (W7): containers the runner still finds for runs of this
        service that are past their run step, and staged real data of such runs. Containers whose
        run id this database does not know are left alone: they may belong to another service
        sharing the engine."""

        def states(session):
            return {r.id: r.state for r in session.query(Run.id, Run.state)}

        known = await self.db.run(states)
        needs_data = set(values(NEEDS_DATA))
        if self.runner is not None:
            try:
                for run_id in await self.runner.list_run_ids():
                    if run_id in known and known[run_id] not in values(RUNNING):
                        log.info("removing the leftover container of run %s", run_id)
                        await self.runner.cleanup(self.make_job(run_id, ""))
            except Exception:
                log.exception("could not reconcile the runner's containers")
        for data in self.runs_dir.glob("*/data"):
            if known.get(data.parent.name) not in needs_data:
                await asyncio.to_thread(shutil.rmtree, data, True)
        # an output volume outlives a crash; only a run in its run step still needs it
        for run_id, state in known.items():
            if state not in values(RUNNING) and await self.output_volume.mounted(self.volume_dir(run_id)):
                await self.output_volume.discard(self.volume_dir(run_id))

    async def prune(self, now: float | None = None) -> dict:
        """Delete the archives, outputs and (later) release zips of runs finished long ago; see
        :mod:`enclave_service.retention`. The database rows stay as the audit trail."""
        from .retention import prune

        return await prune(self, now)

    def start_janitor(self, interval: float) -> asyncio.Task:
        """Prune now and every ``interval`` seconds in the background."""
        from .retention import janitor

        if self.janitor_task is None or self.janitor_task.done():
            self.janitor_task = asyncio.create_task(janitor(self, interval), name="enclave-janitor")
        return self.janitor_task

    async def stop(self) -> None:
        tasks = list(self.tasks.values()) + ([self.janitor_task] if self.janitor_task else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def load(self, run_id: str) -> RunRecord | None:
        return await self.runs.load(run_id)

    async def drive(self, run_id: str) -> None:
        async with self.semaphore:
            while True:
                run = await self.load(run_id)
                if run is None:
                    return
                state = run.state
                step = self.by_source.get(state)
                if step is None:  # terminal, or waiting for people
                    if state.terminal:
                        await self.finish(run_id)
                    return
                ok = await self.do_step(step, run)
                if not ok:
                    return

    async def do_step(self, step: Step, run: RunRecord) -> bool:
        run_id = run.id
        await self.kinetic.log(run.kinetic_run_key, step.target, "debug", f"started: {step.doing}")
        started = time.monotonic()
        try:
            fn = getattr(self, f"step_{step.name}")
            message = await asyncio.wait_for(fn(run), timeout=step.limit)
            target = step.target
            failure = ""
        except TimeoutError:
            target, failure = (
                step.failed,
                f"{step.doing.capitalize()} took longer than the limit of {step.limit:g} s.",
            )
            message = failure
            await self._on_timeout(step, run)
        except StepFailed as e:
            target, failure = step.failed, str(e)
            message = failure
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unexpected error: say so in words, keep the trace in the log
            log.exception("run %s: step %s crashed", run_id, step.name)
            target = step.failed
            failure = message = (
                f"The enclave service hit an unexpected error while {step.doing}: {type(e).__name__}: {e}"
            )
        moved = await self.runs.transition(
            run_id,
            step.source,
            target,
            message,
            failure=failure,
            step=step.name,
            seconds=time.monotonic() - started,
        )
        if step.name == "run":
            # Only once the outcome is recorded: a crash before this point re-runs the step,
            # which needs the container (to re-attach) or the data (to run again).
            await self.cleanup_run(run)
        if not moved:
            return False
        if target.terminal:
            await self.finish(run_id)
            return False
        return True

    async def _on_timeout(self, step: Step, run: RunRecord) -> None:
        if step.name == "run" and self.runner is not None:
            job = self.make_job(run.id, run.image)
            try:
                await self.runner.terminate(job)
            except Exception:
                log.exception("run %s: terminate after timeout failed", run.id)

    async def update(self, run_id: str, **fields) -> None:
        await self.runs.update(run_id, **fields)

    async def note(self, run_id: str, kind: str, message: str, actor: str = "system") -> None:
        await self.runs.note(run_id, kind, message, actor)

    # -- what the owner (runs.Runs) asks of the pipeline ---------------------------------------
    async def store_archive(self, run_id: str, archive: bytes | str) -> tuple[str, int]:
        """Keep a submission's archive (the bytes sent, or a snapshot of the workspace folder);
        (sha256, bytes). On any failure the run's folder is removed again."""
        import hashlib
        import os

        from .archive import ArchiveError, create_archive

        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True)
        dest = self.archive_path(run_id)
        try:
            if isinstance(archive, bytes):

                def write():
                    tmp = dest.with_suffix(".partial")
                    tmp.write_bytes(archive)
                    os.replace(tmp, dest)
                    return hashlib.sha256(archive).hexdigest(), len(archive)

                return await asyncio.to_thread(write)
            try:
                info = await create_archive(archive, dest)
            except ArchiveError as e:
                from .states import RunError

                raise RunError(400, f"the workspace could not be archived: {e}") from None
            return info.sha256, info.bytes
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, run_dir, True)
            raise

    def finish_soon(self, run_id: str) -> None:
        asyncio.create_task(self.finish(run_id), name=f"finish-{run_id}")

    async def stop_run(self, run: RunRecord) -> None:
        """A withdrawn run: its driver stops, its container stops, its staged data goes."""
        task = self.tasks.get(run.id)
        if task and not task.done():
            task.cancel()
        if self.runner is not None and run.image:
            try:
                await self.runner.terminate(self.make_job(run.id, run.image))
            except Exception:
                log.exception("run %s: stopping the container after withdrawal failed", run.id)
        await self.cleanup_run(run)

    # -- the steps ----------------------------------------------------------------------------
    async def step_archive(self, run: RunRecord) -> str:
        from .archive import ArchiveError, ArchiveLimits, extract_archive

        run_id = run.id
        if self.kinetic.enabled and not run.kinetic_run_key:
            created = await self.kinetic.create_run(run.analysis_id, run.message)
            key = created.get("api_key", "")
            await self.update(
                run_id,
                kinetic_run_key=key,
                kinetic_run_id=str(created.get("id", "")),
                analysis_api_key=run.analysis_api_key or created.get("analysis_api_key", ""),
            )
            run.kinetic_run_key = key
            await self.kinetic.log(
                key, State.SUBMITTED, "info", f"Enclave run {run_id} submitted: {run.message}"
            )
        code = self.code_dir(run_id)
        if code.exists():
            await asyncio.to_thread(shutil.rmtree, code)
        try:
            info = await extract_archive(
                self.archive_path(run_id), code, self.archive_limits or ArchiveLimits()
            )
        except ArchiveError as e:
            raise StepFailed(f"The code archive was refused: {e}") from None
        except FileNotFoundError:
            raise StepFailed("The code archive is missing from the enclave's store.") from None
        if not (code / "kinetic").is_dir():
            raise StepFailed("The archive has no kinetic/ project folder (expected kinetic/main.r).")
        return f"Unpacked {info.files} files ({info.total_bytes} bytes)."

    async def step_code(self, run: RunRecord) -> str:
        from .code_checks import check_code

        report = await check_code(self.code_dir(run.id) / "kinetic", self.code_rules)
        await self.update(run.id, code_report=report.to_dict())
        findings = len(getattr(report, "findings", []) or [])
        if report.verdict == "fail":
            raise StepFailed(
                f"The code checks refused the analysis ({findings} finding(s)); see the code report."
            )
        if report.verdict == "review":
            return f"Code checks passed with {findings} finding(s) for the reviewers to look at."
        return "Code checks passed."

    async def step_build(self, run: RunRecord) -> str:
        from . import images

        run_id = run.id
        ensure = self._ensure_base_image or images.ensure_base_image
        build = self._build_image or images.build_analysis_image
        async with self._base_lock:
            if self.base_image is None:
                self.base_image = await ensure()
        async with self.image_guard:  # a finished run sharing the tag cannot remove it meanwhile
            try:
                tag = await build(self.code_dir(run_id), self.base_image)
            except Exception as e:
                raise StepFailed(f"The analysis image could not be built: {e}") from None
            await self.update(run_id, image=tag)
        staged = await self.stage_data(run)
        return f"Image {tag} built; {staged} real data file(s) staged."

    async def stage_data(self, run: RunRecord) -> int:
        """Fetch the real responses from Kinetic with the enclave key, into the run's data folder.
        Only the service holds the key; the container sees files, never the key."""
        run_id = run.id
        data = self.data_dir(run_id)
        if not self.kinetic.enabled:
            data.mkdir(parents=True, exist_ok=True)
            return 0
        api_key = run.analysis_api_key
        if not api_key:
            raise StepFailed("The analysis key is unknown, so the real data cannot be fetched.")
        cutoff = _cutoff_from_main_r(self.code_dir(run_id) / "kinetic")
        from kinetic_auth.kinetic import KineticError

        try:
            reply = await self.kinetic.client.responses(api_key, cutoff, real=True)
            if reply.get("status") != "complete":
                raise StepFailed("Kinetic has not finished preparing the real data; submit again later.")
            tmp = self.run_dir(run_id) / "data.partial"
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp)
            tmp.mkdir(parents=True)
            for i, url in enumerate(reply.get("response_urls", [])):
                name = Path(urlparse(url).path).name or f"responses-{i + 1}.csv"
                if (tmp / name).exists():
                    name = f"{Path(name).stem}-{i + 1}{Path(name).suffix}"
                body = await self.kinetic.client.download(url)
                await asyncio.to_thread((tmp / name).write_bytes, body)
        except KineticError as e:
            raise StepFailed(f"The real data could not be fetched from Kinetic: {e}") from None
        if data.exists():
            await asyncio.to_thread(shutil.rmtree, data)
        tmp.rename(data)
        # how many records the run sees: an output table with that many rows is the data itself
        records = await asyncio.to_thread(_count_records, data)
        await self.update(run_id, input_records=records or None)
        return len(list(data.iterdir()))

    def make_job(self, run_id: str, image: str):
        from .runners import RunJob, RunLimits

        fields = {f.name for f in dataclasses.fields(RunJob)}
        kwargs = dict(
            run_id=run_id,
            image=image,
            code_dir=self.code_dir(run_id),
            data_dir=self.data_dir(run_id),
            output_dir=self.volume_dir(run_id),
            limits=self.run_limits or RunLimits(),
        )
        if self.run_command and "command" in fields:
            kwargs["command"] = self.run_command
        return RunJob(**{k: v for k, v in kwargs.items() if k in fields})

    async def step_run(self, run: RunRecord) -> str:
        run_id = run.id
        job = self.make_job(run.id, run.image)
        volume = self.volume_dir(run_id)
        try:
            await self.output_volume.create(volume)
        except Exception as e:
            raise StepFailed(f"The output folder of the run could not be prepared: {e}") from None
        try:
            await self.runner.prepare(job)
            await self.runner.execute(job)
            result = await self.runner.wait(job)  # wait() ends with finalize(): exit code, logs
        except asyncio.CancelledError:
            raise  # service stopping: leave the container; the next start re-attaches
        except StepFailed:
            raise
        except Exception as e:
            log.exception("run %s: runner error", run_id)
            raise StepFailed(f"The runner could not run the analysis: {e}") from None
        logs = result.logs or ""  # already truncated by the runner (head + tail)
        await self.update(run_id, logs=logs, exit_code=result.exit_code)
        # The limits first: a run that filled output/ or was cut at the file size limit may well
        # have exited 0 (R warns and goes on), and its outputs are incomplete either way.
        usage = await self.output_volume.usage(volume, job.limits.file_size_mb * 2**20)
        over = self.output_volume.over_limit_words(usage)
        if over:
            raise StepFailed(f"The analysis broke a limit: {over}. Its outputs were deleted.")
        if not result.succeeded:
            reason = result.failure_reason()
            raise StepFailed(f"The analysis did not finish: {reason}.")
        await self.output_volume.persist(volume, self.output_dir(run_id))
        return f"The analysis finished in {result.duration_s:.0f} s (exit code {result.exit_code})."

    async def cleanup_run(self, run: RunRecord) -> None:
        """After the run (finished, failed, withdrawn): remove its container and the staged real
        data. The real data never outlives the run that needed it. Once the run is in a final
        state, its code folder and its image go too (the image only when no unfinished run shares
        it). Idempotent; failures are logged, never raised."""
        from .retention import cleanup_finished

        try:
            current = await self.load(run.id) or run
        except Exception:
            log.exception("run %s: could not read its state for clean-up", run.id)
            current = run
        if self.runner is not None and current.image:
            try:
                await self.runner.cleanup(self.make_job(current.id, current.image))
            except Exception:
                log.exception("run %s: runner cleanup failed", run.id)
        for d in (self.data_dir(run.id), self.run_dir(run.id) / "data.partial"):
            if d.exists():
                await asyncio.to_thread(shutil.rmtree, d, True)
        if current.state not in RUNNING:
            try:
                await self.output_volume.discard(self.volume_dir(run.id))
            except Exception:
                log.exception("run %s: removing its output volume failed", run.id)
        if current.state.failed or current.state == State.WITHDRAWN:
            # nothing of a failed or withdrawn run will be released: its outputs go now, not
            # after the retention period
            await asyncio.to_thread(shutil.rmtree, self.output_dir(run.id), True)
        if current.state.terminal:
            await cleanup_finished(self, run.id, current.image or "")

    async def released_hashes(self, analysis_id: str) -> frozenset:
        def q(session):
            out = set()
            rows = (
                session.query(dbm.Release)
                .join(Run, Run.id == dbm.Release.run_id)
                .filter(Run.analysis_id == analysis_id)
            )
            for rel in rows:
                out.update((rel.manifest or {}).values())
            return frozenset(out)

        return await self.db.run(q)

    async def step_outputs(self, run: RunRecord) -> str:
        from .output_checks import OutputRules, check_outputs

        run_id = run.id
        released = await self.released_hashes(run.analysis_id)
        report = await check_outputs(
            self.output_dir(run_id),
            self.output_rules or OutputRules(),
            released_sha256=released,
            input_records=run.input_records,
        )
        await self.update(run_id, output_report=report.to_dict())
        files = getattr(report, "files", [])
        if report.verdict == "fail":
            bad = [f.path for f in files if f.verdict == "fail"]
            raise StepFailed(
                "The output checks refused "
                + (", ".join(bad[:5]) or "the outputs")
                + "; see the output report."
            )
        if not report.manifest:
            raise StepFailed("The analysis wrote no output files (nothing in output/).")
        return f"Output checks: {report.verdict}, {len(report.manifest)} file(s)."

    async def step_review(self, run: RunRecord) -> str:
        return f"Waiting for {run.required_approvals} independent approval(s)."

    async def step_release(self, run: RunRecord) -> str:
        from .release import package_release

        rel = await package_release(self, run)
        return f"Released {len(rel['manifest'])} file(s), zip sha256 {rel['sha256'][:12]}…"

    # -- after a terminal state ---------------------------------------------------------------
    async def finish(self, run_id: str) -> None:
        """Side effects of a final state, each once: Kinetic upload + completion, mail; then the
        run's container, code folder and image are removed."""
        run = await self.load(run_id)
        if run is None or not run.state.terminal:
            return
        await self._report_end(run)
        await self.cleanup_run(run)

    async def _report_end(self, run: RunRecord) -> None:
        run_id = run.id
        state = run.state
        if self.kinetic.enabled and run.kinetic_run_key and not run.kinetic_completed:
            status = "success" if state == State.RELEASED else "failure"
            try:
                signed = run.kinetic_signed_id
                if status == "success" and not signed:
                    data = await asyncio.to_thread(self.release_path(run_id).read_bytes)
                    signed = await self.kinetic.upload(run.kinetic_run_key, data)
                    await self.update(run_id, kinetic_signed_id=signed)
                await self.kinetic.log(
                    run.kinetic_run_key,
                    state,
                    "info" if status == "success" else "error",
                    f"Run finished: {state.message}",
                )
                await self.kinetic.complete(run.kinetic_run_key, status, signed)
                await self.update(run_id, kinetic_completed=status)
                await self.note(run_id, "kinetic", f"Kinetic was told the run finished: {status}.")
            except Exception as e:
                log.warning("run %s: Kinetic completion failed: %s", run_id, e)
                await self.note(
                    run_id,
                    "kinetic",
                    f"Kinetic could not be told the outcome yet ({e}); "
                    "it is retried when the service starts.",
                )
        if state in (State.RELEASED, State.REJECTED) and not run.mail_sent and self.mailer is not None:
            from .mail import decision_mail

            if not run.author_email:
                await self.note(run_id, "mail", "No e-mail address is known for the author; no mail sent.")
                await self.update(run_id, mail_sent=True)
                return
            subject, body = decision_mail(run, self.run_url(run_id))
            try:
                await self.mailer.send(run.author_email, subject, body)
                await self.update(run_id, mail_sent=True)
                await self.note(run_id, "mail", "The author was e-mailed a link to this page.")
            except Exception as e:
                log.warning("run %s: mail failed: %s", run_id, e)
                await self.note(
                    run_id,
                    "mail",
                    f"The mail to the author could not be sent ({type(e).__name__}); "
                    "it is retried when the service starts.",
                )
