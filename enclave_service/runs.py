"""The one owner of enclave runs and their states.

Every change of a run's ``state`` happens here, in one transaction with its audit event: the
submission, each pipeline step's outcome (:meth:`Runs.transition`, called by the pipeline), a
review, a withdrawal. Retention (prune) changes no state; it records what it deleted through
:meth:`Runs.note`. The web layer parses a request, calls a method here and renders what comes
back; a refusal is a :class:`~enclave_service.states.RunError` with an HTTP status and words.

The owner does not import the pipeline (no cycle): the pipeline hands itself in, and the owner
uses only its small driving surface (``kick``, ``stop_run``, ``finish``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy.exc import IntegrityError

from . import db as dbm
from .db import Database, Review, Run, RunRecord
from .metrics import Metrics
from .states import DECIDED, UNSUCCESSFUL, WITHDRAWABLE, RunError, State

log = logging.getLogger("enclave.runs")
DECISIONS = ("approve", "reject")
ANALYSIS_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RUN_ID_RE = re.compile(r"^[a-z0-9-]{1,63}$")
MAX_MESSAGE = 2000
MAX_COMMENT = 5000
# Columns only this module writes; update() refuses them.
OWNED_FIELDS = frozenset({"state", "failure", "id"})


class Driver(Protocol):
    """What the owner needs of the pipeline."""

    def kick(self, run_id: str) -> None: ...
    async def store_archive(self, run_id: str, archive: bytes | str) -> tuple[str, int]: ...
    async def stop_run(self, run: RunRecord) -> None: ...
    def finish_soon(self, run_id: str) -> None: ...


class Runs:
    def __init__(self, db: Database, kinetic, metrics: Metrics | None = None):
        self.db = db
        self.kinetic = kinetic  # KineticSync: every transition becomes a Kinetic log line
        self.driver: Driver | None = None
        # step outcomes and submissions are counted here, where they are recorded
        self.metrics = metrics or Metrics()

    # -- reading --------------------------------------------------------------------------------
    async def load(self, run_id: str) -> RunRecord | None:
        def q(session):
            run = session.get(Run, run_id)
            return RunRecord.of(run) if run else None

        return await self.db.run(q)

    async def ids_in(self, states) -> list[str]:
        return await self.db.run(dbm.run_ids_in, states)

    # -- writing what is not a state --------------------------------------------------------------
    async def update(self, run_id: str, **fields) -> None:
        """Record facts a step learned (image tag, logs, reports…). Never the state."""
        owned = OWNED_FIELDS & fields.keys()
        if owned:
            raise ValueError(f"{', '.join(sorted(owned))} can only change through a transition")

        def tx(session):
            run = session.get(Run, run_id)
            for k, v in fields.items():
                setattr(run, k, v)

        await self.db.run(tx)

    async def note(self, run_id: str, kind: str, message: str, actor: str = "system") -> None:
        await self.db.run(lambda s: dbm.add_event(s, run_id, kind, message, actor=actor))

    # -- transitions ----------------------------------------------------------------------------
    async def submit_request(
        self,
        *,
        author: str,
        author_email: str,
        analysis_id: str,
        message: str,
        archive: bytes | None,
        authorize: Callable[[str], Awaitable[dict | None]],
        workspaces_root: str = "",
        max_archive_bytes: int,
        required_approvals: int,
    ) -> RunRecord:
        """A researcher's submission: checked, authorized (``authorize(analysis_id)`` asks Kinetic
        as the researcher), the archive stored, the run created. Nothing is kept when any check fails."""
        import os

        analysis_id, message = analysis_id.strip(), message.strip()
        if not ANALYSIS_ID_RE.match(analysis_id):
            raise RunError(400, "analysis_id is missing or not an analysis id")
        if len(message) > MAX_MESSAGE:
            raise RunError(400, f"the message is longer than {MAX_MESSAGE} characters")
        if archive is None and not workspaces_root:
            raise RunError(
                400, "send the archive (field 'archive'); this enclave does not snapshot workspaces"
            )
        analysis = await authorize(analysis_id)
        if analysis is None:
            raise RunError(404, "no such analysis, or you are not one of its researchers")
        if archive is not None and len(archive) > max_archive_bytes:
            raise RunError(413, "the archive is larger than this enclave accepts")
        source: bytes | str = archive
        if archive is None:
            source = os.path.join(workspaces_root, analysis_id)
            if not os.path.isdir(source):
                raise RunError(404, "this analysis has no workspace here yet; open it once first")
        run_id = dbm.new_run_id()
        sha, size = await self.driver.store_archive(run_id, source)
        collaborators = [r.get("user_id") for r in analysis.get("researchers", []) if r.get("user_id")]
        return await self.submit(
            run_id=run_id,
            analysis_id=analysis_id,
            analysis_title=str(analysis.get("title", "")),
            author=author,
            author_email=author_email,
            collaborators=collaborators,
            message=message,
            archive_sha256=sha,
            archive_bytes=size,
            analysis_api_key=str(analysis.get("api_key", "")),
            required_approvals=required_approvals,
        )

    async def submit(
        self,
        *,
        run_id: str,
        analysis_id: str,
        analysis_title: str,
        author: str,
        author_email: str,
        collaborators: list[str],
        message: str,
        archive_sha256: str,
        archive_bytes: int,
        analysis_api_key: str,
        required_approvals: int,
    ) -> RunRecord:
        """A new run, in ``submitted``; the pipeline starts on it."""

        def tx(session):
            run = Run(
                id=run_id,
                analysis_id=analysis_id,
                analysis_title=analysis_title[:500],
                author=author,
                author_email=author_email,
                collaborators=list(collaborators),
                message=message,
                archive_sha256=archive_sha256,
                archive_bytes=archive_bytes,
                analysis_api_key=analysis_api_key,
                required_approvals=required_approvals,
                state=State.SUBMITTED.value,
            )
            session.add(run)
            session.flush()
            dbm.add_event(
                session,
                run_id,
                "state",
                f"Submitted ({archive_bytes} bytes, sha256 {archive_sha256[:12]}…).",
                actor=author,
                state=State.SUBMITTED.value,
            )
            return RunRecord.of(run)

        record = await self.db.run(tx)
        self.metrics.submitted(archive_bytes)
        if self.driver is not None:
            self.driver.kick(run_id)
        return record

    async def transition(
        self,
        run_id: str,
        source: State | frozenset | tuple,
        target: State,
        message: str,
        *,
        actor: str = "system",
        failure: str = "",
        kind: str = "state",
        step: str = "",
        seconds: float | None = None,
    ) -> bool:
        """Move a run from ``source`` to ``target`` and record the event, in one transaction.
        False when the run was no longer in ``source`` (withdrawn meanwhile, decided by another).
        ``step`` and ``seconds``: the pipeline step whose outcome this is and how long it took
        (for the metrics; counted only when the move happened)."""
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
        if step:
            self.metrics.step_done(step, target, seconds)
        await self._tell_kinetic(run_id, key, target, message)
        return True

    async def _tell_kinetic(self, run_id: str, key: str, target: State, message: str) -> None:
        level = "error" if target in UNSUCCESSFUL else "info"
        err = await self.kinetic.log(key, target, level, f"{target.message} {message}".strip())
        if err:
            await self.note(run_id, "kinetic", f"Kinetic was not told: {err}")

    async def review(
        self, run_id: str, reviewer: str, is_reviewer: bool, decision: str, comment: str
    ) -> State:
        """One reviewer's decision; the run moves when it is decided. Returns the state after.

        Rules, each in the one transaction (two reviewers clicking at once cannot both be "the
        last"): only reviewers, never on a run of an analysis they are on, only ``in_review``, one
        decision each, a rejection says why; ``required_approvals`` approvals → ``approved``, any
        rejection → ``rejected``."""
        decision = (decision or "").strip().lower()
        comment = (comment or "").strip()
        if not is_reviewer:
            raise RunError(403, "only output reviewers can review runs")
        if decision not in DECISIONS:
            raise RunError(400, "decision must be 'approve' or 'reject'")
        if decision == "reject" and not comment:
            raise RunError(400, "a rejection needs a comment that tells the author why")
        if len(comment) > MAX_COMMENT:
            raise RunError(400, f"the comment is longer than {MAX_COMMENT} characters")

        def tx(session):
            run = session.get(Run, run_id, with_for_update=True)
            if run is None:
                raise RunError(404, "no such run")
            if reviewer == run.author or reviewer in (run.collaborators or []):
                raise RunError(403, "you cannot review a run of an analysis you are on")
            if run.state != State.IN_REVIEW.value:
                raise RunError(409, f"this run is not waiting for review (it is {run.state})")
            if any(r.reviewer == reviewer for r in run.reviews):
                raise RunError(409, "you have already reviewed this run; decisions cannot be changed")
            session.add(Review(run_id=run_id, reviewer=reviewer, decision=decision, comment=comment))
            try:
                session.flush()
            except IntegrityError:
                raise RunError(
                    409, "you have already reviewed this run; decisions cannot be changed"
                ) from None
            dbm.add_event(session, run_id, "review", f"A reviewer decided: {decision}.", actor=reviewer)
            session.refresh(run)
            approvals = sum(1 for r in run.reviews if r.decision == "approve")
            if decision == "reject":
                run.state = State.REJECTED.value
                run.failure = "Rejected by an output reviewer."
                dbm.add_event(
                    session, run_id, "state", "An output reviewer rejected the release.", state=run.state
                )
            elif approvals >= run.required_approvals:
                run.state = State.APPROVED.value
                dbm.add_event(
                    session, run_id, "state", f"{approvals} reviewers approved the release.", state=run.state
                )
            return State(run.state), run.kinetic_run_key

        state, key = await self.db.run(tx)
        if state == State.APPROVED:
            await self._tell_kinetic(run_id, key, state, "")
            if self.driver is not None:
                self.driver.kick(run_id)
        elif state == State.REJECTED:
            await self._tell_kinetic(run_id, key, state, "")
            if self.driver is not None:
                self.driver.finish_soon(run_id)
        return state

    async def withdraw(self, run: RunRecord, actor: str) -> None:
        """The author takes the run back before a decision: its state first (so a step that ends
        meanwhile loses the race), then its container stops and its staged data goes."""
        if actor != run.author:
            raise RunError(403, "only the author of a run can withdraw it")
        if run.state not in WITHDRAWABLE:
            raise RunError(409, f"this run can no longer be withdrawn (it is {run.state.value})")
        moved = await self.transition(
            run.id, WITHDRAWABLE, State.WITHDRAWN, "Withdrawn by its author.", actor=actor, kind="withdraw"
        )
        if not moved:
            raise RunError(409, "this run changed state meanwhile; reload it")
        if self.driver is not None:
            await self.driver.stop_run(run)
            self.driver.finish_soon(run.id)


def visible_reviews(run: RunRecord, reviews: list[dict], viewer: str, is_reviewer: bool) -> dict:
    """What ``viewer`` may see of the reviews (blinded until the run is decided)."""
    decided = run.state in DECIDED
    out = {
        "required": run.required_approvals,
        "received": len(reviews),
        "blinded": not decided,
        "reviews": [],
    }
    shown = [
        {"reviewer": r["reviewer"], "decision": r["decision"], "comment": r["comment"], "time": r["time"]}
        for r in reviews
    ]
    if decided:
        out["reviews"] = shown
    elif is_reviewer:
        out["reviews"] = [r for r in shown if r["reviewer"] == viewer]
    out["mine"] = next((r["decision"] for r in reviews if r["reviewer"] == viewer), None)
    return out
