"""The enclave's REST API under ``/services/enclave/api/``.

Every call is authenticated by the hub (a hub API token in ``Authorization: token …``, or the
service's OAuth cookie from a page) and authorized here: researchers are checked against Kinetic
*as themselves* (their SSO cookie, from the hub's auth_state) for the analysis in question, so the
hub never decides on its own who is on an analysis (W1). Reviewers are the hub group
``reviewers_group``. Handlers parse, call :mod:`enclave_service.runs` (the owner of every state
change) and render; refusals come back from there as an HTTP status and words.

    POST api/runs                      submit (multipart/raw archive, or JSON with workspaces_root)
    GET  api/runs                      your runs; reviewers also get the review queue
    GET  api/runs/<id>                 state, timeline, check reports, reviews (blinded), logs*
    POST api/runs/<id>/review          {decision: approve|reject, comment}   (reviewers)
    POST api/runs/<id>/withdraw        (the author, before a decision)
    GET  api/runs/<id>/download        the release zip (released runs; researchers on the analysis)
    GET  metrics                       Prometheus metrics (a hub token with ``read:metrics``)
"""

from __future__ import annotations

import asyncio
import logging

from tornado import web

from . import db as dbm
from .db import Release, Review
from .metrics import METRICS_SCOPE
from .retention import days_words, release_missing
from .states import State
from .web import BaseHandler, my_runs, review_queue, run_detail, run_summary

log = logging.getLogger("enclave.api")


class RunsHandler(BaseHandler):
    async def get(self):
        caller = await self.require_caller()

        def q(session):
            mine = my_runs(session, caller.name)
            if not caller.reviewer:
                return mine, [], set()
            reviewed = {r.run_id for r in session.query(Review).filter(Review.reviewer == caller.name)}
            return mine, review_queue(session, caller.name), reviewed

        mine, queue, reviewed = await self.db.run(q)
        body = {"runs": [run_summary(r) for r in mine]}
        if caller.reviewer:
            body["queue"] = [dict(run_summary(r), reviewed_by_me=r.id in reviewed) for r in queue]
        self.finish(body)

    async def post(self):
        caller = await self.require_caller()
        ctype = self.request.headers.get("Content-Type", "")
        archive = None
        if ctype.startswith("application/json"):
            body = self.json_body()
            analysis_id, message = str(body.get("analysis_id", "")), str(body.get("message", ""))
        elif ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
            analysis_id = self.get_body_argument("analysis_id", "")
            message = self.get_body_argument("message", "")
            files = self.request.files.get("archive") or []
            if files:
                archive = files[0]["body"]
        else:  # raw body = the archive; fields in the query
            analysis_id = self.get_query_argument("analysis_id", "")
            message = self.get_query_argument("message", "")
            archive = self.request.body or None
        run = await self.submit(caller, analysis_id, message, archive)
        self.set_status(201)
        self.finish(run_summary(run))


class RunHandler(BaseHandler):
    async def get(self, run_id):
        caller = await self.require_caller()
        run, events, reviews, role = await self.access(run_id, caller)
        self.finish(
            run_detail(run, events, reviews, role, caller, self.service.config.show_run_logs_to_researchers)
        )


class ReviewHandler(BaseHandler):
    async def post(self, run_id):
        caller = await self.require_caller()
        body = self.json_body()
        state = await self.runs.review(
            run_id, caller.name, caller.reviewer, str(body.get("decision", "")), str(body.get("comment", ""))
        )
        self.finish({"id": run_id, "state": state.value, "state_message": state.message})


class WithdrawHandler(BaseHandler):
    async def post(self, run_id):
        caller = await self.require_caller()
        run, _, _, _ = await self.access(run_id, caller)
        await self.runs.withdraw(run, caller.name)
        self.finish({"id": run_id, "state": State.WITHDRAWN.value, "state_message": State.WITHDRAWN.message})


class DownloadHandler(BaseHandler):
    """The release zip. Needs a hub login (token or the page's cookie) at every download, the
    caller must be on the analysis (Kinetic says so, now), and every download is audited."""

    async def get(self, run_id):
        caller = await self.require_caller()
        run, _, _, role = await self.access(run_id, caller)
        if role not in ("author", "researcher"):
            raise web.HTTPError(403, "only the researchers of the analysis can download its release")
        if run.state != State.RELEASED:
            raise web.HTTPError(409, "this run has not been released")
        ip = self.request.remote_ip or ""

        def tx(session):
            rel = session.get(Release, run_id)
            if rel is None:
                return None
            if release_missing(rel.path):  # deleted by the retention janitor (stat on the db thread)
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
            raise web.HTTPError(
                410,
                f"the released outputs of this run were deleted after {days} "
                "(retention); they can no longer be downloaded. The run's record and "
                "its manifest are kept; submit the analysis again to get new outputs",
            )
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


class MetricsHandler(BaseHandler):
    """Prometheus metrics, for operators and their scraper: the caller's hub token (or OAuth
    cookie) must carry ``read:metrics`` — the hub's own scope for ``/hub/metrics`` — besides the
    access to this service every caller has. Researchers, reviewers and anonymous callers get 403:
    run counts and queue ages say what is going on in the enclave, which is operators' business."""

    async def get(self):
        model = self.current_user
        if not model or METRICS_SCOPE not in (model.get("scopes") or []):
            raise web.HTTPError(403, f"the enclave's metrics need a hub token with the {METRICS_SCOPE} scope")
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await self.pipeline.metrics.render(self.db)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


ROUTES = [
    (r"metrics", MetricsHandler),
    (r"api/runs/?", RunsHandler),
    (r"api/runs/([^/]+)/?", RunHandler),
    (r"api/runs/([^/]+)/review", ReviewHandler),
    (r"api/runs/([^/]+)/withdraw", WithdrawHandler),
    (r"api/runs/([^/]+)/download", DownloadHandler),
]
