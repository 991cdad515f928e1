"""The enclave's pages: a researcher's runs and a run's timeline; the reviewers' queue and the
review page with a preview of the outputs. Everything shown is escaped by the templates
(tornado's autoescape), CSV cells included. Forms carry the hub's XSRF token."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

from tornado import web

from .db import Review, Run, RunRecord
from .states import WITHDRAWABLE, State
from .web import BaseHandler, my_runs, review_queue, run_detail, run_summary

PREVIEW_ROWS = 20
PREVIEW_COLS = 20
PREVIEW_BYTES = 64 * 1024


def fmt_time(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else ""


class PageHandler(BaseHandler):
    async def require_page_caller(self):
        c = await self.caller()
        if c is None:
            if self.request.method == "GET":
                # not signed in to the service: go through the hub's OAuth
                url = self.get_login_url()
                self.redirect(url)
                raise web.Finish()
            raise web.HTTPError(403, "sign in first")
        if c.kind != "user":
            raise web.HTTPError(403, "pages are for people")
        return c

    def render_page(self, template: str, **kw):
        self.render(
            template, prefix=self.service.prefix, fmt_time=fmt_time, json=json, caller=kw.pop("caller"), **kw
        )

    def write_error(self, status_code, **kwargs):
        message = self.error_message(kwargs)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            self.render_string("error.html", status=status_code, message=message, prefix=self.service.prefix)
        )


class HomePage(PageHandler):
    async def get(self):
        caller = await self.require_page_caller()

        runs = [run_summary(r) for r in await self.db.run(my_runs, caller.name)]
        can_submit = bool(self.service.config.workspaces_root)
        analyses = await self.my_analyses(caller) if can_submit else []
        self.render_page(
            "index.html",
            caller=caller,
            runs=runs,
            can_submit=can_submit,
            analyses=analyses,
            chosen=self.get_argument("analysis", ""),
        )

    async def my_analyses(self, caller) -> list[dict]:
        """The caller's analyses as Kinetic lists them, for the submit form (empty if Kinetic is down:
        the form then takes an id, and the submit itself is still checked with Kinetic)."""
        if not caller.sso:
            return []
        try:
            found = await self.service.kinetic.list_analyses(caller.sso)
        except Exception:  # noqa: BLE001 - a page must render even when Kinetic does not answer
            self.log.warning("Kinetic did not list analyses for %s", caller.name)
            return []
        return [{"id": str(a.get("id")), "title": a.get("title", "")} for a in found]

    async def post(self):
        """Submit from the page (local backend: the service snapshots the workspace)."""
        caller = await self.require_page_caller()
        run = await self.submit(
            caller, self.get_body_argument("analysis_id", ""), self.get_body_argument("message", ""), None
        )
        self.redirect(f"{self.service.prefix}runs/{run.id}")


class RunPage(PageHandler):
    async def get(self, run_id):
        caller = await self.require_page_caller()
        run, events, reviews, role = await self.access(run_id, caller)
        detail = run_detail(
            run, events, reviews, role, caller, self.service.config.show_run_logs_to_researchers
        )
        withdrawable = role == "author" and run.state in WITHDRAWABLE
        self.render_page("run.html", caller=caller, run=detail, withdrawable=withdrawable)


class WithdrawPage(PageHandler):
    async def post(self, run_id):
        caller = await self.require_page_caller()
        run, _, _, _ = await self.access(run_id, caller)
        await self.runs.withdraw(run, caller.name)
        self.redirect(f"{self.service.prefix}runs/{run_id}")


class QueuePage(PageHandler):
    async def get(self):
        caller = await self.require_page_caller()
        if not caller.reviewer:
            raise web.HTTPError(403, "the review queue is for output reviewers")

        def q(session):
            mine = {
                r.run_id: r.decision for r in session.query(Review).filter(Review.reviewer == caller.name)
            }
            recent = [
                RunRecord.of(r)
                for r in session.query(Run)
                .join(Review, Review.run_id == Run.id)
                .filter(Review.reviewer == caller.name, Run.state != State.IN_REVIEW.value)
                .order_by(Run.updated.desc())
                .limit(50)
            ]
            return review_queue(session, caller.name), mine, recent

        runs, mine, recent = await self.db.run(q)
        queue = [dict(run_summary(r), my_decision=mine.get(r.id)) for r in runs]
        self.render_page(
            "queue.html",
            caller=caller,
            queue=queue,
            recent=[dict(run_summary(r), my_decision=mine.get(r.id)) for r in recent],
        )


def preview_file(path: Path, rel: str) -> dict:
    """A bounded preview: CSV as rows of cells, other text as text; binary files are named only."""
    out = {"path": rel, "kind": "binary", "rows": [], "text": "", "truncated": False}
    try:
        with open(path, "rb") as f:
            data = f.read(PREVIEW_BYTES + 1)
    except OSError:
        out["kind"] = "missing"
        return out
    out["truncated"] = len(data) > PREVIEW_BYTES
    data = data[:PREVIEW_BYTES]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return out
    if rel.lower().endswith((".csv", ".tsv")):
        dialect = "excel-tab" if rel.lower().endswith(".tsv") else "excel"
        rows = []
        for i, row in enumerate(csv.reader(io.StringIO(text), dialect)):
            if i > PREVIEW_ROWS:
                out["truncated"] = True
                break
            rows.append(row[:PREVIEW_COLS])
        out.update(kind="table", rows=rows)
    else:
        out.update(kind="text", text=text[:8000])
    return out


class ReviewPage(PageHandler):
    async def get(self, run_id):
        caller = await self.require_page_caller()
        if not caller.reviewer:
            raise web.HTTPError(403, "reviews are for output reviewers")
        run, events, reviews, role = await self.access(run_id, caller)
        if role != "reviewer":
            raise web.HTTPError(403, "you cannot review a run of an analysis you are on")
        detail = run_detail(run, events, reviews, role, caller, True)
        manifest = (detail["output_report"] or {}).get("manifest") or {}
        outdir = self.pipeline.output_dir(run_id)
        previews = await asyncio.to_thread(
            lambda: [preview_file(outdir / rel, rel) for rel in sorted(manifest)]
        )
        can_review = run.state == State.IN_REVIEW and detail["review"]["mine"] is None
        self.render_page("review.html", caller=caller, run=detail, previews=previews, can_review=can_review)

    async def post(self, run_id):
        caller = await self.require_page_caller()
        await self.runs.review(
            run_id,
            caller.name,
            caller.reviewer,
            self.get_body_argument("decision", ""),
            self.get_body_argument("comment", ""),
        )
        self.redirect(f"{self.service.prefix}review/{run_id}")


ROUTES = [
    (r"", HomePage),
    (r"runs/([^/]+)", RunPage),
    (r"runs/([^/]+)/withdraw", WithdrawPage),
    (r"review/?", QueuePage),
    (r"review/([^/]+)", ReviewPage),
]
