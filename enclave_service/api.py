"""The enclave's REST API under ``/services/enclave/api/``.

Every call is authenticated by the hub (a hub API token in ``Authorization: token …``, or the
service's OAuth cookie from a page) and authorized here: researchers are checked against Kinetic
*as themselves* (their SSO cookie, from the hub's auth_state) for the analysis in question, so the
hub never decides on its own who is on an analysis (W1). Reviewers are the hub group
``reviewers_group``.

    POST api/runs                      submit (multipart/raw archive, or JSON with workspaces_root)
    GET  api/runs                      your runs; reviewers also get the review queue
    GET  api/runs/<id>                 state, timeline, check reports, reviews (blinded), logs*
    POST api/runs/<id>/review          {decision: approve|reject, comment}   (reviewers)
    POST api/runs/<id>/withdraw        (the author, before a decision)
    GET  api/runs/<id>/download        the release zip (released runs; researchers on the analysis)
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from kinetic_auth.kinetic import KineticError

from . import db as dbm
from .db import Release, Review, Run, State
from .pipeline import run_to_dict
from .retention import RELEASE_DELETED, days_words, release_missing
from .review import ReviewError, record_review, visible_reviews

log = logging.getLogger("enclave.api")
ANALYSIS_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_MESSAGE = 2000


@dataclass
class Caller:
    name: str
    kind: str                      # user | service
    groups: list[str] = field(default_factory=list)
    sso: str = ""
    email: str = ""
    reviewer: bool = False
    display: str = ""              # "Ada Lovelace" from Kinetic's profile; pages show it, not the uuid


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
            if "401" in str(e) or "403" in str(e):
                raise web.HTTPError(403, "Kinetic did not accept your sign-in; sign in to the hub again") from None
            raise web.HTTPError(503, f"Kinetic could not be asked: {e}") from None

    async def load_run(self, run_id: str) -> tuple[dict, list[dict], list[dict]] | None:
        def q(session):
            run = session.get(Run, run_id)
            if run is None:
                return None
            events = [{"time": e.time, "actor": e.actor, "kind": e.kind, "state": e.state,
                       "message": e.message} for e in run.events]
            reviews = [{"reviewer": r.reviewer, "decision": r.decision, "comment": r.comment,
                        "time": r.time} for r in run.reviews]
            return run_to_dict(run), events, reviews
        return await self.db.run(q)

    async def access(self, run_id: str, caller: Caller) -> tuple[dict, list, list, str]:
        """The run and the caller's role on it ('author', 'researcher', 'reviewer'); 404 otherwise,
        so whether a run exists is not revealed to people who may not see it."""
        loaded = await self.load_run(run_id) if re.fullmatch(r"[a-z0-9-]{1,63}", run_id) else None
        if loaded is None:
            raise web.HTTPError(404, "no such run")
        run, events, reviews = loaded
        if caller.name == run["author"] or caller.name in json.loads(run["collaborators"] or "[]"):
            analysis = await self.analysis_for(caller, run["analysis_id"])
            if analysis is not None:
                return run, events, reviews, "author" if caller.name == run["author"] else "researcher"
        if caller.reviewer and caller.name != run["author"]:
            return run, events, reviews, "reviewer"
        raise web.HTTPError(404, "no such run")

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return body


def run_summary(run: dict) -> dict:
    state = State(run["state"])
    return {"id": run["id"], "analysis_id": run["analysis_id"], "analysis_title": run["analysis_title"],
            "author": run["author"], "message": run["message"], "state": state.value,
            "state_message": state.message, "failure": run["failure"], "created": run["created"],
            "updated": run["updated"], "url": f"runs/{run['id']}"}


def run_detail(run: dict, events: list, reviews: list, role: str, caller: Caller,
               show_logs_to_researchers: bool) -> dict:
    out = run_summary(run)
    review = visible_reviews(run, reviews, caller.name, role == "reviewer")
    if review["blinded"]:
        # blinding covers the audit trail too: another reviewer's decision shows as "a decision"
        events = [e if e["kind"] != "review" or e["actor"] == caller.name else
                  dict(e, actor="a reviewer", message="A reviewer recorded a decision.") for e in events]
    out.update({
        "role": role,
        "archive_sha256": run["archive_sha256"],
        "exit_code": run["exit_code"],
        "events": events,
        "code_report": json.loads(run["code_report"]) if run["code_report"] else None,
        "output_report": json.loads(run["output_report"]) if run["output_report"] else None,
        "review": review,
        "kinetic": {"run_id": run["kinetic_run_id"], "completed": run["kinetic_completed"]},
        "downloadable": run["state"] == State.RELEASED.value and role in ("author", "researcher")
        and not any(e["kind"] == RELEASE_DELETED for e in events),
    })
    if role == "reviewer" or show_logs_to_researchers:
        out["logs"] = run["logs"]
    else:
        out["logs"] = None
        out["logs_note"] = "Run logs can contain real data; they are shown to reviewers only."
    return out


class RunsHandler(BaseHandler):
    async def get(self):
        caller = await self.require_caller()

        def q(session):
            mine = [run_to_dict(r) for r in session.query(Run).filter(Run.author == caller.name)
                    .order_by(Run.created.desc()).limit(200)]
            queue = []
            if caller.reviewer:
                queue = [run_to_dict(r) for r in session.query(Run)
                         .filter(Run.state == State.IN_REVIEW.value, Run.author != caller.name)
                         .order_by(Run.created)]
                reviewed = {r.run_id for r in session.query(Review).filter(Review.reviewer == caller.name)}
                for r in queue:
                    r["reviewed_by_me"] = r["id"] in reviewed
            return mine, queue
        mine, queue = await self.db.run(q)
        body = {"runs": [run_summary(r) for r in mine]}
        if caller.reviewer:
            body["queue"] = [dict(run_summary(r), reviewed_by_me=r["reviewed_by_me"]) for r in queue
                             if caller.name not in json.loads(r["collaborators"] or "[]")]
        self.finish(body)

    async def post(self):
        caller = await self.require_caller()
        ctype = self.request.headers.get("Content-Type", "")
        archive_bytes = None
        if ctype.startswith("application/json"):
            body = self.json_body()
            analysis_id, message = str(body.get("analysis_id", "")), str(body.get("message", ""))
        elif ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
            analysis_id = self.get_body_argument("analysis_id", "")
            message = self.get_body_argument("message", "")
            files = self.request.files.get("archive") or []
            if files:
                archive_bytes = files[0]["body"]
        else:   # raw body = the archive; fields in the query
            analysis_id = self.get_query_argument("analysis_id", "")
            message = self.get_query_argument("message", "")
            archive_bytes = self.request.body or None
        run = await submit(self, caller, analysis_id, message, archive_bytes)
        self.set_status(201)
        self.finish(run_summary(run))


async def submit(handler: BaseHandler, caller: Caller, analysis_id: str, message: str,
                 archive_bytes: bytes | None) -> dict:
    """Authorize, store the archive, create the run, start the pipeline. Nothing is stored when
    any check fails."""
    cfg = handler.service.config
    analysis_id = analysis_id.strip()
    message = message.strip()
    if not ANALYSIS_ID_RE.match(analysis_id):
        raise web.HTTPError(400, "analysis_id is missing or not an analysis id")
    if len(message) > MAX_MESSAGE:
        raise web.HTTPError(400, f"the message is longer than {MAX_MESSAGE} characters")
    if archive_bytes is None and not cfg.workspaces_root:
        raise web.HTTPError(400, "send the archive (field 'archive'); this enclave does not snapshot workspaces")
    analysis = await handler.analysis_for(caller, analysis_id)
    if analysis is None:
        raise web.HTTPError(404, "no such analysis, or you are not one of its researchers")
    if archive_bytes is not None and len(archive_bytes) > cfg.max_archive_bytes:
        raise web.HTTPError(413, "the archive is larger than this enclave accepts")

    pipeline = handler.pipeline
    run_id = dbm.new_run_id()
    run_dir = pipeline.run_dir(run_id)
    run_dir.mkdir(parents=True)
    dest = pipeline.archive_path(run_id)
    try:
        if archive_bytes is not None:
            def write():
                tmp = dest.with_suffix(".partial")
                tmp.write_bytes(archive_bytes)
                os.replace(tmp, dest)
                return hashlib.sha256(archive_bytes).hexdigest(), len(archive_bytes)
            sha, size = await asyncio.to_thread(write)
        else:
            from .archive import ArchiveError, create_archive
            src = os.path.join(cfg.workspaces_root, analysis_id)
            if not os.path.isdir(src):
                raise web.HTTPError(404, "this analysis has no workspace here yet; open it once first")
            try:
                info = await create_archive(src, dest)
            except ArchiveError as e:
                raise web.HTTPError(400, f"the workspace could not be archived: {e}") from None
            sha, size = info.sha256, info.bytes
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, run_dir, True)
        raise

    collaborators = [r.get("user_id") for r in analysis.get("researchers", []) if r.get("user_id")]

    def tx(session):
        run = Run(id=run_id, analysis_id=analysis_id, analysis_title=str(analysis.get("title", ""))[:500],
                  author=caller.name, author_email=caller.email, collaborators=json.dumps(collaborators),
                  message=message, archive_sha256=sha, archive_bytes=size,
                  analysis_api_key=str(analysis.get("api_key", "")),
                  required_approvals=cfg.required_approvals, state=State.SUBMITTED.value)
        session.add(run)
        session.flush()
        dbm.add_event(session, run_id, "state", f"Submitted ({size} bytes, sha256 {sha[:12]}…).",
                      actor=caller.name, state=State.SUBMITTED.value)
        return run_to_dict(run)
    run = await handler.db.run(tx)
    pipeline.kick(run_id)
    return run


class RunHandler(BaseHandler):
    async def get(self, run_id):
        caller = await self.require_caller()
        run, events, reviews, role = await self.access(run_id, caller)
        self.finish(run_detail(run, events, reviews, role, caller,
                               self.service.config.show_run_logs_to_researchers))


async def do_review(handler: BaseHandler, caller: Caller, run_id: str, decision: str, comment: str) -> State:
    if not caller.reviewer:
        raise web.HTTPError(403, "only output reviewers can review runs")
    loaded = await handler.load_run(run_id) if re.fullmatch(r"[a-z0-9-]{1,63}", run_id) else None
    if loaded is None:
        raise web.HTTPError(404, "no such run")
    if caller.name in [loaded[0]["author"], *json.loads(loaded[0]["collaborators"] or "[]")]:
        raise web.HTTPError(403, "you cannot review a run of an analysis you are on")
    try:
        state = await handler.db.run(record_review, run_id, caller.name, decision, comment)
    except ReviewError as e:
        raise web.HTTPError(e.status, e.message) from None
    if state == State.APPROVED:
        handler.pipeline.kick(run_id)
    elif state == State.REJECTED:
        run = await handler.pipeline.load(run_id)
        await handler.pipeline.kinetic.log(run["kinetic_run_key"], State.REJECTED, "error",
                                           State.REJECTED.message)
        asyncio.create_task(handler.pipeline.finish(run_id))
    return state


class ReviewHandler(BaseHandler):
    async def post(self, run_id):
        caller = await self.require_caller()
        body = self.json_body()
        state = await do_review(self, caller, run_id, str(body.get("decision", "")), str(body.get("comment", "")))
        self.finish({"id": run_id, "state": state.value, "state_message": state.message})


async def do_withdraw(handler: BaseHandler, caller: Caller, run_id: str) -> None:
    run, _, _, role = await handler.access(run_id, caller)
    if role != "author":
        raise web.HTTPError(403, "only the author of a run can withdraw it")
    if State(run["state"]) not in dbm.WITHDRAWABLE:
        raise web.HTTPError(409, f"this run can no longer be withdrawn (it is {run['state']})")
    moved = await handler.pipeline.transition(run_id, dbm.WITHDRAWABLE, State.WITHDRAWN,
                                              "Withdrawn by its author.", actor=caller.name, kind="withdraw")
    if not moved:
        raise web.HTTPError(409, "this run changed state meanwhile; reload it")
    task = handler.pipeline.tasks.get(run_id)
    if task and not task.done():
        task.cancel()
    runner = handler.pipeline.runner
    if runner is not None and run["image"]:
        try:
            await runner.terminate(handler.pipeline.make_job(run))
        except Exception:
            log.exception("run %s: stopping the container after withdrawal failed", run_id)
    await handler.pipeline.cleanup_run(run)
    asyncio.create_task(handler.pipeline.finish(run_id))


class WithdrawHandler(BaseHandler):
    async def post(self, run_id):
        caller = await self.require_caller()
        await do_withdraw(self, caller, run_id)
        self.finish({"id": run_id, "state": State.WITHDRAWN.value, "state_message": State.WITHDRAWN.message})


class DownloadHandler(BaseHandler):
    """The release zip. Needs a hub login (token or the page's cookie) at every download, the
    caller must be on the analysis (Kinetic says so, now), and every download is audited."""

    async def get(self, run_id):
        caller = await self.require_caller()
        run, _, _, role = await self.access(run_id, caller)
        if role not in ("author", "researcher"):
            raise web.HTTPError(403, "only the researchers of the analysis can download its release")
        if run["state"] != State.RELEASED.value:
            raise web.HTTPError(409, "this run has not been released")
        ip = self.request.remote_ip or ""

        def tx(session):
            rel = session.get(Release, run_id)
            if rel is None:
                return None
            if release_missing(rel.path):    # deleted by the retention janitor (stat on the db thread)
                return "gone"
            session.add(dbm.Download(run_id=run_id, user=caller.name, ip=ip))
            dbm.add_event(session, run_id, "download", "The release was downloaded.", actor=caller.name)
            return rel.path, rel.sha256, rel.bytes
        rel = await self.db.run(tx)
        if rel is None:
            raise web.HTTPError(409, "this run has no release file")
        path, sha, size = rel if rel != "gone" else ("", "", 0)
        try:
            f = open(path, "rb") if path else None
        except FileNotFoundError:
            f = None
        if f is None:
            days = days_words(self.pipeline.release_retention_days)
            raise web.HTTPError(410, f"the released outputs of this run were deleted after {days} "
                                "(retention); they can no longer be downloaded. The run's record and "
                                "its manifest are kept; submit the analysis again to get new outputs")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="enclave-run-{run_id}.zip"')
        self.set_header("Content-Length", str(size))
        self.set_header("X-Content-SHA256", sha)
        with f:
            while True:
                chunk = await asyncio.to_thread(f.read, 1 << 20)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        self.finish()


ROUTES = [
    (r"api/runs/?", RunsHandler),
    (r"api/runs/([^/]+)/?", RunHandler),
    (r"api/runs/([^/]+)/review", ReviewHandler),
    (r"api/runs/([^/]+)/withdraw", WithdrawHandler),
    (r"api/runs/([^/]+)/download", DownloadHandler),
]
