"""The web layer's shared parts: who is calling (from the hub), which runs they may see, and the
JSON shapes of a run. API handlers (``api.py``) and pages (``pages.py``) both build on this; neither
decides anything about a run's state — they parse, call :mod:`enclave_service.runs`, and render.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from kinetic_auth.kinetic import KineticError

from .db import Run, RunRecord
from .retention import RELEASE_DELETED
from .runs import RUN_ID_RE, visible_reviews
from .states import RunError, State

log = logging.getLogger("enclave.web")


@dataclass
class Caller:
    name: str
    kind: str  # user | service
    groups: list[str] = field(default_factory=list)
    sso: str = ""
    email: str = ""
    reviewer: bool = False
    display: str = ""  # "Ada Lovelace" from Kinetic's profile; pages show it, not the uuid


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Identity from the hub, resolved without blocking the event loop."""

    @property
    def service(self):
        return self.settings["enclave"]

    @property
    def db(self):
        return self.service.db

    @property
    def pipeline(self):
        return self.service.pipeline

    @property
    def runs(self):
        return self.service.pipeline.runs

    async def prepare(self):
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None
        self.set_header("Cache-Control", "no-store")

    async def caller(self) -> Caller | None:
        if hasattr(self, "_caller"):
            return self._caller
        model = self.current_user
        self._caller = None
        if model:
            c = Caller(name=model["name"], kind=model.get("kind", "user"))
            if c.kind == "user":
                full = await self.service.hub_user(c.name) or {}
                if not (full.get("auth_state") or {}).get("sso_cookie"):
                    # just signed in again: the cached model may predate the new sign-in
                    full = await self.service.hub_user(c.name, max_age=0) or {}
                c.groups = full.get("groups") or []
                state = full.get("auth_state") or {}
                c.sso = state.get("sso_cookie", "")
                profile = state.get("profile") or {}
                c.email = profile.get("email", "")
                c.display = " ".join(filter(None, (profile.get("first_name"), profile.get("last_name"))))
                c.reviewer = self.service.config.reviewers_group in c.groups
            self._caller = c
        return self._caller

    async def require_caller(self) -> Caller:
        c = await self.caller()
        if c is None or c.kind != "user":
            raise web.HTTPError(403, "sign in to the hub first (or send a hub API token)")
        return c

    async def analysis_for(self, caller: Caller, analysis_id: str) -> dict | None:
        """The analysis as Kinetic shows it to this researcher; None when they are not on it."""
        if not caller.sso:
            raise web.HTTPError(403, "the hub holds no Kinetic sign-in for you; sign in to the hub again")
        if self.service.kinetic is None:
            raise web.HTTPError(503, "Kinetic is not configured, so your access cannot be checked")
        try:
            return await self.service.kinetic.get_analysis(str(analysis_id), caller.sso)
        except KineticError as e:
            if e.status in (401, 403):
                raise web.HTTPError(
                    403, "Kinetic did not accept your sign-in; sign in to the hub again"
                ) from None
            raise web.HTTPError(503, f"Kinetic could not be asked: {e}") from None

    async def load_run(self, run_id: str) -> tuple[RunRecord, list[dict], list[dict]] | None:
        def q(session):
            run = session.get(Run, run_id)
            if run is None:
                return None
            events = [
                {"time": e.time, "actor": e.actor, "kind": e.kind, "state": e.state, "message": e.message}
                for e in run.events
            ]
            reviews = [
                {"reviewer": r.reviewer, "decision": r.decision, "comment": r.comment, "time": r.time}
                for r in run.reviews
            ]
            return RunRecord.of(run), events, reviews

        return await self.db.run(q)

    async def access(self, run_id: str, caller: Caller) -> tuple[RunRecord, list, list, str]:
        """The run and the caller's role on it ('author', 'researcher', 'reviewer'); 404 otherwise,
        so whether a run exists is not revealed to people who may not see it."""
        loaded = await self.load_run(run_id) if RUN_ID_RE.fullmatch(run_id) else None
        if loaded is None:
            raise web.HTTPError(404, "no such run")
        run, events, reviews = loaded
        if run.on_analysis(caller.name):
            analysis = await self.analysis_for(caller, run.analysis_id)
            if analysis is not None:
                return run, events, reviews, "author" if caller.name == run.author else "researcher"
        if caller.reviewer and caller.name != run.author:
            return run, events, reviews, "reviewer"
        raise web.HTTPError(404, "no such run")

    def log_exception(self, typ, value, tb):
        if isinstance(value, RunError):
            log.info("%s %s: %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RunError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def error_message(self, kwargs) -> str:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RunError):
            return exc.message
        if isinstance(exc, web.HTTPError) and exc.log_message:
            return exc.log_message
        return self._reason

    def write_error(self, status_code, **kwargs):
        message = self.error_message(kwargs)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    async def submit(
        self, caller: Caller, analysis_id: str, message: str, archive: bytes | None
    ) -> RunRecord:
        """The one submit of the API and the page: the owner checks, stores and creates."""
        cfg = self.service.config
        return await self.runs.submit_request(
            author=caller.name,
            author_email=caller.email,
            analysis_id=analysis_id,
            message=message,
            archive=archive,
            authorize=lambda aid: self.analysis_for(caller, aid),
            workspaces_root=cfg.workspaces_root,
            max_archive_bytes=cfg.max_archive_bytes,
            required_approvals=cfg.required_approvals,
        )

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return body


def run_summary(run: RunRecord) -> dict:
    return {
        "id": run.id,
        "analysis_id": run.analysis_id,
        "analysis_title": run.analysis_title,
        "author": run.author,
        "message": run.message,
        "state": run.state.value,
        "state_message": run.state.message,
        "failure": run.failure,
        "created": run.created,
        "updated": run.updated,
        "url": f"runs/{run.id}",
    }


def run_detail(
    run: RunRecord, events: list, reviews: list, role: str, caller: Caller, show_logs_to_researchers: bool
) -> dict:
    out = run_summary(run)
    review = visible_reviews(run, reviews, caller.name, role == "reviewer")
    if review["blinded"]:
        # blinding covers the audit trail too: another reviewer's decision shows as "a decision"
        events = [
            e
            if e["kind"] != "review" or e["actor"] == caller.name
            else dict(e, actor="a reviewer", message="A reviewer recorded a decision.")
            for e in events
        ]
    out.update(
        {
            "role": role,
            "archive_sha256": run.archive_sha256,
            "exit_code": run.exit_code,
            "events": events,
            "code_report": run.code_report,
            "output_report": run.output_report,
            "review": review,
            "kinetic": {"run_id": run.kinetic_run_id, "completed": run.kinetic_completed},
            "downloadable": run.state == State.RELEASED
            and role in ("author", "researcher")
            and not any(e["kind"] == RELEASE_DELETED for e in events),
        }
    )
    if role == "reviewer" or show_logs_to_researchers:
        out["logs"] = run.logs
    else:
        out["logs"] = None
        out["logs_note"] = "Run logs can contain real data; they are shown to reviewers only."
    return out


def my_runs(session, name: str, limit: int = 200) -> list[RunRecord]:
    return [
        RunRecord.of(r)
        for r in session.query(Run).filter(Run.author == name).order_by(Run.created.desc()).limit(limit)
    ]


def review_queue(session, reviewer: str) -> list[RunRecord]:
    """Runs waiting for review that ``reviewer`` may review (not on their analysis)."""
    return [
        rec
        for rec in (
            RunRecord.of(r)
            for r in session.query(Run).filter(Run.state == State.IN_REVIEW.value).order_by(Run.created)
        )
        if not rec.on_analysis(reviewer)
    ]
