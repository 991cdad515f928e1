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
import json
import logging
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

from . import db as dbm
from .db import Database, Run, State

log = logging.getLogger("enclave.pipeline")


class StepFailed(Exception):
    """A step could not succeed; the message is shown to people as it is."""


@dataclasses.dataclass
class Step:
    name: str            # for logs and time-limit messages
    source: State        # the state the run must be in
    target: State        # the state after success
    failed: State        # the state after failure
    limit: float         # seconds
    doing: str           # words for "while <doing>"


def run_to_dict(run: Run) -> dict:
    return {c.name: getattr(run, c.name) for c in Run.__table__.columns}


def _cutoff_from_main_r(project: Path) -> str:
    """The data cutoff the researcher chose in main.r (`cutoff_date = "YYYY-MM-DD"`), else today."""
    main = project / "main.r"
    try:
        text = main.read_text(errors="replace")
    except OSError:
        text = ""
    m = re.search(r'cutoff_date\s*(?:=|<-)\s*["\'](\d{4}-\d{2}-\d{2})["\']', text)
    return m.group(1) if m else time.strftime("%Y-%m-%d")


class Pipeline:
    def __init__(self, *, db: Database, runs_dir: Path, kinetic, runner, mailer, public_url: str,
                 service_prefix: str = "/services/enclave/", limits: dict | None = None,
                 archive_limits=None, run_limits=None, output_rules=None, max_parallel: int = 2,
                 ensure_base_image=None, build_image=None, run_command=None, remove_image=None,
                 retention_days: float = 30, release_retention_days: float = 90):
        from . import retention
        self.db = db
        self.runs_dir = Path(runs_dir)
        self.kinetic = kinetic          # KineticSync (the real-data client is kinetic.client)
        self.runner = runner
        self.mailer = mailer
        self.public_url = public_url.rstrip("/")
        self.service_prefix = service_prefix
        self.archive_limits = archive_limits
        self.run_limits = run_limits
        self.output_rules = output_rules
        self.run_command = run_command
        self._ensure_base_image = ensure_base_image
        self._build_image = build_image
        self.remove_image = remove_image or retention.default_remove_image
        self.image_guard = retention.ImageGuard()   # builds vs. removal of a shared image
        self.retention_days = retention_days
        self.release_retention_days = release_retention_days
        self.janitor_task: asyncio.Task | None = None
        run_wall = getattr(run_limits, "wall_seconds", 3600)
        # The runner stops the container at its wall-clock limit; the step's limit adds a margin
        # for image start, log collection and clean-up.
        self.limits = {"archive": 120, "code": 120, "build": 1800, "run": run_wall + 300,
                       "outputs": 300, "review": 60, "release": 300, **(limits or {})}
        self.steps = [
            Step("archive", State.SUBMITTED, State.ARCHIVED, State.FAILED_ARCHIVED,
                 self.limits["archive"], "unpacking the code archive"),
            Step("code", State.ARCHIVED, State.CODE_CHECKED, State.FAILED_CODE_CHECKED,
                 self.limits["code"], "checking the code"),
            Step("build", State.CODE_CHECKED, State.BUILT, State.FAILED_BUILT,
                 self.limits["build"], "building the image and staging the data"),
            Step("run", State.BUILT, State.RAN, State.FAILED_RAN,
                 self.limits["run"], "running the analysis"),
            Step("outputs", State.RAN, State.OUTPUTS_CHECKED, State.FAILED_OUTPUTS_CHECKED,
                 self.limits["outputs"], "checking the outputs"),
            Step("review", State.OUTPUTS_CHECKED, State.IN_REVIEW, State.FAILED_OUTPUTS_CHECKED,
                 self.limits["review"], "asking for review"),
            Step("release", State.APPROVED, State.RELEASED, State.FAILED_RELEASED,
                 self.limits["release"], "packaging the release"),
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
        ids = await self.db.run(dbm.run_ids_in, dbm.PIPELINE_STATES)
        for run_id in ids:
            log.info("resuming run %s", run_id)
            self.kick(run_id)

        def pending(session):
            q = session.query(Run).filter(Run.state.in_([s.value for s in dbm.TERMINAL]))
            return [r.id for r in q if (self.kinetic.enabled and r.kinetic_run_key and not r.kinetic_completed)
                    or (r.state == State.RELEASED.value and not r.mail_sent)]
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
        needs_data = {State.CODE_CHECKED.value, State.BUILT.value}
        if self.runner is not None:
            try:
                for run_id in await self.runner.list_run_ids():
                    if run_id in known and known[run_id] != State.BUILT.value:
                        log.info("removing the leftover container of run %s", run_id)
                        await self.runner.cleanup(self.make_job({"id": run_id, "image": ""}))
            except Exception:
                log.exception("could not reconcile the runner's containers")
        for data in self.runs_dir.glob("*/data"):
            if known.get(data.parent.name) not in needs_data:
                await asyncio.to_thread(shutil.rmtree, data, True)

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

    async def load(self, run_id: str) -> dict | None:
        def q(session):
            run = session.get(Run, run_id)
            return run_to_dict(run) if run else None
        return await self.db.run(q)

    async def drive(self, run_id: str) -> None:
        async with self.semaphore:
            while True:
                run = await self.load(run_id)
                if run is None:
                    return
                state = State(run["state"])
                step = self.by_source.get(state)
                if step is None:   # terminal, or waiting for people
                    if state.terminal:
                        await self.finish(run_id)
                    return
                ok = await self.do_step(step, run)
                if not ok:
                    return

    async def do_step(self, step: Step, run: dict) -> bool:
        run_id = run["id"]
        await self.kinetic.log(run["kinetic_run_key"], step.target, "debug", f"started: {step.doing}")
        try:
            fn = getattr(self, f"step_{step.name}")
            message = await asyncio.wait_for(fn(run), timeout=step.limit)
            target = step.target
            failure = ""
        except asyncio.TimeoutError:
            target, failure = step.failed, f"{step.doing.capitalize()} took longer than the limit of {step.limit:g} s."
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
            failure = message = f"The enclave service hit an unexpected error while {step.doing}: {type(e).__name__}: {e}"
        moved = await self.transition(run_id, step.source, target, message, failure=failure)
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

    async def transition(self, run_id: str, source: State | frozenset, target: State, message: str,
                         *, actor: str = "system", failure: str = "", kind: str = "state") -> bool:
        """Move a run from ``source`` to ``target`` and record the event, in one transaction.
        False when the run was no longer in ``source`` (withdrawn meanwhile, decided by another)."""
        sources = {source} if isinstance(source, State) else set(source)

        def tx(session):
            run = session.get(Run, run_id, with_for_update=True)
            if run is None or State(run.state) not in sources:
                return None
            run.state = target.value
            if failure:
                run.failure = failure
            dbm.add_event(session, run_id, kind, message, actor=actor, state=target.value)
            return run.kinetic_run_key
        key = await self.db.run(tx)
        if key is None:
            return False
        log.info("run %s → %s: %s", run_id, target.value, message)
        level = "error" if target.failed or target in (State.REJECTED, State.WITHDRAWN) else "info"
        err = await self.kinetic.log(key, target, level, f"{target.message} {message}".strip())
        if err:
            await self.db.run(lambda s: dbm.add_event(s, run_id, "kinetic", f"Kinetic was not told: {err}"))
        return True

    async def _on_timeout(self, step: Step, run: dict) -> None:
        if step.name == "run" and self.runner is not None:
            job = self.make_job(run)
            try:
                await self.runner.terminate(job)
            except Exception:
                log.exception("run %s: terminate after timeout failed", run["id"])

    async def update(self, run_id: str, **fields) -> None:
        def tx(session):
            run = session.get(Run, run_id)
            for k, v in fields.items():
                setattr(run, k, v)
        await self.db.run(tx)

    async def note(self, run_id: str, kind: str, message: str, actor: str = "system") -> None:
        await self.db.run(lambda s: dbm.add_event(s, run_id, kind, message, actor=actor))

    # -- the steps ----------------------------------------------------------------------------
    async def step_archive(self, run: dict) -> str:
        from .archive import ArchiveError, ArchiveLimits, extract_archive
        run_id = run["id"]
        if self.kinetic.enabled and not run["kinetic_run_key"]:
            created = await self.kinetic.create_run(run["analysis_id"], run["message"])
            key = created.get("api_key", "")
            await self.update(run_id, kinetic_run_key=key, kinetic_run_id=str(created.get("id", "")),
                              analysis_api_key=run["analysis_api_key"] or created.get("analysis_api_key", ""))
            run["kinetic_run_key"] = key
            await self.kinetic.log(key, State.SUBMITTED, "info", f"Enclave run {run_id} submitted: {run['message']}")
        code = self.code_dir(run_id)
        if code.exists():
            await asyncio.to_thread(shutil.rmtree, code)
        try:
            info = await extract_archive(self.archive_path(run_id), code, self.archive_limits or ArchiveLimits())
        except ArchiveError as e:
            raise StepFailed(f"The code archive was refused: {e}") from None
        except FileNotFoundError:
            raise StepFailed("The code archive is missing from the enclave's store.") from None
        if not (code / "kinetic").is_dir():
            raise StepFailed("The archive has no kinetic/ project folder (expected kinetic/main.r).")
        return f"Unpacked {info.files} files ({info.total_bytes} bytes)."

    async def step_code(self, run: dict) -> str:
        from .code_checks import check_code
        report = await check_code(self.code_dir(run["id"]) / "kinetic")
        await self.update(run["id"], code_report=json.dumps(report.to_dict()))
        findings = len(getattr(report, "findings", []) or [])
        if report.verdict == "fail":
            raise StepFailed(f"The code checks refused the analysis ({findings} finding(s)); see the code report.")
        if report.verdict == "review":
            return f"Code checks passed with {findings} finding(s) for the reviewers to look at."
        return "Code checks passed."

    async def step_build(self, run: dict) -> str:
        from . import images
        run_id = run["id"]
        ensure = self._ensure_base_image or images.ensure_base_image
        build = self._build_image or images.build_analysis_image
        async with self._base_lock:
            if self.base_image is None:
                self.base_image = await ensure()
        async with self.image_guard:   # a finished run sharing the tag cannot remove it meanwhile
            try:
                tag = await build(self.code_dir(run_id), self.base_image)
            except Exception as e:
                raise StepFailed(f"The analysis image could not be built: {e}") from None
            await self.update(run_id, image=tag)
        staged = await self.stage_data(run)
        return f"Image {tag} built; {staged} real data file(s) staged."

    async def stage_data(self, run: dict) -> int:
        """Fetch the real responses from Kinetic with the enclave key, into the run's data folder.
        Only the service holds the key; the container sees files, never the key."""
        run_id = run["id"]
        data = self.data_dir(run_id)
        if not self.kinetic.enabled:
            data.mkdir(parents=True, exist_ok=True)
            return 0
        api_key = run["analysis_api_key"]
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
        return len(list(data.iterdir()))

    def make_job(self, run: dict):
        from .runners import RunJob, RunLimits
        fields = {f.name for f in dataclasses.fields(RunJob)}
        kwargs = dict(run_id=run["id"], image=run["image"], code_dir=self.code_dir(run["id"]),
                      data_dir=self.data_dir(run["id"]), output_dir=self.output_dir(run["id"]),
                      limits=self.run_limits or RunLimits())
        if self.run_command and "command" in fields:
            kwargs["command"] = self.run_command
        return RunJob(**{k: v for k, v in kwargs.items() if k in fields})

    async def step_run(self, run: dict) -> str:
        run_id = run["id"]
        job = self.make_job(run)
        self.output_dir(run_id).mkdir(parents=True, exist_ok=True)
        try:
            await self.runner.prepare(job)
            await self.runner.execute(job)
            result = await self.runner.wait(job)   # wait() ends with finalize(): exit code, logs
        except asyncio.CancelledError:
            raise   # service stopping: leave the container; the next start re-attaches
        except StepFailed:
            raise
        except Exception as e:
            log.exception("run %s: runner error", run_id)
            raise StepFailed(f"The runner could not run the analysis: {e}") from None
        logs = result.logs or ""   # already truncated by the runner (head + tail)
        await self.update(run_id, logs=logs, exit_code=result.exit_code)
        if not result.succeeded:
            reason = result.failure_reason()
            raise StepFailed(f"The analysis did not finish: {reason}.")
        return f"The analysis finished in {result.duration_s:.0f} s (exit code {result.exit_code})."

    async def cleanup_run(self, run: dict) -> None:
        """After the run (finished, failed, withdrawn): remove its container and the staged real
        data. The real data never outlives the run that needed it. Once the run is in a final
        state, its code folder and its image go too (the image only when no unfinished run shares
        it). Idempotent; failures are logged, never raised."""
        from .retention import cleanup_finished
        try:
            current = await self.load(run["id"]) or run
        except Exception:
            log.exception("run %s: could not read its state for clean-up", run["id"])
            current = run
        if self.runner is not None and current.get("image"):
            try:
                await self.runner.cleanup(self.make_job(current))
            except Exception:
                log.exception("run %s: runner cleanup failed", run["id"])
        for d in (self.data_dir(run["id"]), self.run_dir(run["id"]) / "data.partial"):
            if d.exists():
                await asyncio.to_thread(shutil.rmtree, d, True)
        if State(current["state"]).terminal:
            await cleanup_finished(self, run["id"], current.get("image") or "")

    async def released_hashes(self, analysis_id: str) -> frozenset:
        def q(session):
            out = set()
            rows = session.query(dbm.Release).join(Run, Run.id == dbm.Release.run_id)\
                .filter(Run.analysis_id == analysis_id)
            for rel in rows:
                out.update(json.loads(rel.manifest).values())
            return frozenset(out)
        return await self.db.run(q)

    async def step_outputs(self, run: dict) -> str:
        from .output_checks import OutputRules, check_outputs
        run_id = run["id"]
        released = await self.released_hashes(run["analysis_id"])
        report = await check_outputs(self.output_dir(run_id), self.output_rules or OutputRules(),
                                     released_sha256=released, context=None)
        await self.update(run_id, output_report=json.dumps(report.to_dict()))
        files = getattr(report, "files", [])
        if report.verdict == "fail":
            bad = [f.path for f in files if f.verdict == "fail"]
            raise StepFailed("The output checks refused " + (", ".join(bad[:5]) or "the outputs")
                             + "; see the output report.")
        if not report.manifest:
            raise StepFailed("The analysis wrote no output files (nothing in output/).")
        return f"Output checks: {report.verdict}, {len(report.manifest)} file(s)."

    async def step_review(self, run: dict) -> str:
        return f"Waiting for {run['required_approvals']} independent approval(s)."

    async def step_release(self, run: dict) -> str:
        from .release import package_release
        rel = await package_release(self, run)
        return f"Released {len(rel['manifest'])} file(s), zip sha256 {rel['sha256'][:12]}…"

    # -- after a terminal state ---------------------------------------------------------------
    async def finish(self, run_id: str) -> None:
        """Side effects of a final state, each once: Kinetic upload + completion, mail; then the
        run's container, code folder and image are removed."""
        run = await self.load(run_id)
        if run is None or not State(run["state"]).terminal:
            return
        await self._report_end(run)
        await self.cleanup_run(run)

    async def _report_end(self, run: dict) -> None:
        run_id = run["id"]
        state = State(run["state"])
        if self.kinetic.enabled and run["kinetic_run_key"] and not run["kinetic_completed"]:
            status = "success" if state == State.RELEASED else "failure"
            try:
                signed = run["kinetic_signed_id"]
                if status == "success" and not signed:
                    data = await asyncio.to_thread(self.release_path(run_id).read_bytes)
                    signed = await self.kinetic.upload(run["kinetic_run_key"], data)
                    await self.update(run_id, kinetic_signed_id=signed)
                await self.kinetic.log(run["kinetic_run_key"], state, "info" if status == "success" else "error",
                                       f"Run finished: {state.message}")
                await self.kinetic.complete(run["kinetic_run_key"], status, signed)
                await self.update(run_id, kinetic_completed=status)
                await self.note(run_id, "kinetic", f"Kinetic was told the run finished: {status}.")
            except Exception as e:
                log.warning("run %s: Kinetic completion failed: %s", run_id, e)
                await self.note(run_id, "kinetic", f"Kinetic could not be told the outcome yet ({e}); "
                                "it is retried when the service starts.")
        if state in (State.RELEASED, State.REJECTED) and not run["mail_sent"] and self.mailer is not None:
            from .mail import decision_mail
            if not run["author_email"]:
                await self.note(run_id, "mail", "No e-mail address is known for the author; no mail sent.")
                await self.update(run_id, mail_sent=True)
                return
            subject, body = decision_mail(run, self.run_url(run_id))
            try:
                await self.mailer.send(run["author_email"], subject, body)
                await self.update(run_id, mail_sent=True)
                await self.note(run_id, "mail", "The author was e-mailed a link to this page.")
            except Exception as e:
                log.warning("run %s: mail failed: %s", run_id, e)
                await self.note(run_id, "mail", f"The mail to the author could not be sent ({type(e).__name__}); "
                                "it is retried when the service starts.")
