"""The hub pages researchers see: sign-in, their analyses, opening an analysis, its progress.

Routes (under /hub/), installed by KineticAuthenticator.get_handlers so they take precedence
over JupyterHub's own ``/login``, ``/logout`` and ``/home``:

    /login                     auto-login from the Kinetic SSO cookie (or off to Kinetic to sign in)
    /logout                    hub session and Kinetic session both end
    /home                      the researcher's analyses (from Kinetic) with each workspace's state
    /analysis/<id>             authorize with Kinetic, start or join the workspace, show progress
    /analysis/<id>/progress    server-sent events of the workspace's start, authorized by analysis membership
    /editor/                   Kinetic's old `/editor/#<id>` link, forwarded to /analysis/<id>
    /api/oauth2/authorize      signing in to a workspace: Kinetic asked first (hub_adapter), then
                               JupyterHub's own OAuth authorization

Workspaces are found, started, named and shared through JupyterHub's public REST API (``hub_api``);
the one JupyterHub behaviour used that has no public API is kept in ``hub_adapter``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
from collections import defaultdict

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.utils import url_escape_path, url_path_join
from tornado import web
from tornado.httputil import url_concat
from tornado.iostream import StreamClosedError

from kinetic_spawner import slugs

from . import cookie as sso
from . import origins
from .hub_adapter import AUTHORIZE_ROUTE, WorkspaceLoginCheck, skip_oauth_confirmation
from .hub_api import HubAPI, HubAPIError, Workspace
from .kinetic import KineticError

# One lock per analysis: two clicks (or two researchers) at the same moment make one workspace.
# The hub is a single process, so an in-process lock is the whole story.
_analysis_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


def display_name(analysis: dict, analysis_id: str) -> str:
    """The workspace's JupyterHub display name: the analysis title, made valid for JupyterHub
    (1-255 printable characters, single spaces, none at the ends)."""
    title = unicodedata.normalize("NFC", str(analysis.get("title") or ""))
    title = "".join(c if unicodedata.category(c)[0] in "LMNPS" else " " for c in title)
    title = re.sub(" +", " ", title).strip()[:255].rstrip()
    return title or f"Analysis {analysis_id}"


def workspace_url(spawner) -> str:
    return url_path_join(spawner.user.url, url_escape_path(spawner.name), "/")


class KineticPage(BaseHandler):
    """Shared bits: branded error pages, asking Kinetic about an analysis, finding workspaces."""

    @property
    def hub_api(self) -> HubAPI:
        return HubAPI(self.hub.api_url, self.authenticator.hub_api_token)

    async def find_workspaces(self, analysis_ids) -> dict[str, Workspace]:
        """analysis id -> its active (starting or running) workspace, whoever owns it; one listing."""
        names = {slugs.server_name(a): a for a in analysis_ids}
        found = await self.hub_api.active_servers(names)
        return {names[name]: ws for name, ws in found.items()}

    async def find_workspace(self, analysis_id: str) -> Workspace | None:
        return (await self.find_workspaces([analysis_id])).get(analysis_id)

    def live_spawner(self, owner: str, server_name: str):
        """The hub's Spawner object of a workspace (for its state and progress), or None."""
        owner_user = self.find_user(owner)
        return owner_user.spawners.get(server_name) if owner_user is not None else None

    async def error_page(self, status: int, title: str, message: str):
        self.set_status(status)
        html = await self.render_template("kinetic_error.html", status=status, title=title, message=message)
        self.finish(html)

    async def authorized_analysis(self, analysis_id: str):
        """(analysis id, analysis) — or None after writing the error page."""
        try:
            aid = slugs.check_analysis_id(analysis_id)
        except slugs.BadAnalysisId:
            await self.error_page(404, "No such analysis", "That link does not name a Kinetic analysis.")
            return None
        try:
            analysis = await self.authenticator.authorize_analysis(self.current_user, aid)
        except KineticError:
            await self.error_page(
                502,
                "Kinetic is not answering",
                "We could not check your access with Kinetic. Please try again in a minute.",
            )
            return None
        if analysis is None:
            self.log.warning("%s is not on analysis %s: refused", self.current_user.name, aid)
            await self.error_page(
                404,
                "Analysis not available",
                f"Analysis {aid} does not exist or you are not one of its researchers. "
                "Ask its owner in Kinetic to add you.",
            )
            return None
        return aid, analysis


class KineticLoginHandler(KineticPage):
    async def get(self):
        auth = self.authenticator
        if origins.is_workspace_host(self.request.host, self.subdomain_host):
            # A workspace's host (analysis-<id>.<hub host>) serves its researchers' code: a hub
            # session there would let that code act as its visitor on the hub (origins.py).
            self.log.warning("Refused a sign-in on %s, which is not the hub's host", self.request.host)
            await self.error_page(404, "Not here", "Sign in to Kinetic Workspaces from its own address.")
            return
        token = self.get_cookie(auth.sso_cookie_name)
        if not token:
            here = f"{self.request.protocol}://{self.request.host}{self.request.uri}"
            self.redirect(url_concat(auth.sign_in_redirect(), {"r": here}))
            return
        try:
            await auth.identify(token)
        except sso.CookieError as e:
            self.log.warning("Refused a Kinetic cookie: %s", e.reason)
            self.set_status(403)
            html = await self.render_template(
                "kinetic_error.html",
                status=403,
                title="We could not verify your Kinetic sign-in",
                message=f"Reason: {e.reason}.",
                sign_in_url=url_concat(
                    auth.sign_in_redirect(),
                    {"r": f"{self.request.protocol}://{self.request.host}{self.settings['login_url']}"},
                ),
            )
            self.finish(html)
            return
        user = await self.login_user({"sso_cookie": token})
        if user is None:
            await self.error_page(403, "Sign-in refused", "Your Kinetic account may not use workspaces.")
            return
        self.redirect(self.get_next_url(user))


class KineticLogoutHandler(LogoutHandler):
    async def render_logout_page(self):
        # Ending only the hub session is pointless: auto-login would sign the researcher straight back in.
        home = f"{self.request.protocol}://{self.request.host}{self.hub.base_url}home"
        self.redirect(url_concat(self.authenticator.sign_out_redirect(), {"r": home}))


class AnalysesHomeHandler(KineticPage):
    @web.authenticated
    async def get(self):
        user = self.current_user
        state = await user.get_auth_state() or {}
        analyses, error = [], ""
        try:
            analyses = await self.authenticator.kinetic.list_analyses(state.get("sso_cookie", ""))
        except KineticError:
            error = "Kinetic is not answering, so your analyses cannot be listed right now."
        valid = []
        for a in analyses:
            try:
                valid.append((slugs.check_analysis_id(a.get("id")), a))
            except slugs.BadAnalysisId:
                continue
        running = {}
        try:
            running = await self.find_workspaces([aid for aid, _ in valid])
        except HubAPIError as e:
            self.log.error("Could not list running workspaces: %s", e)
            error = error or "The state of your workspaces cannot be shown right now."
        rows = []
        for aid, a in valid:
            ws = running.get(aid)
            names = {
                r.get("user_id"): f"{r.get('first_name', '')} {r.get('last_name', '')}".strip()
                for r in a.get("researchers", [])
            }
            if ws is None:
                status = "Not running"
            else:
                opener = ws.opened_by or ws.owner
                who = "you" if opener == user.name else names.get(opener, "a co-researcher")
                status = f"{'Running' if ws.ready else 'Starting'} (opened by {who})"
            rows.append(
                {
                    "id": aid,
                    "title": a.get("title", ""),
                    "description": a.get("description", ""),
                    "researchers": [n for n in names.values() if n],
                    "status": status,
                    "running": ws is not None,
                    "url": url_path_join(self.hub.base_url, "analysis", aid),
                }
            )
        html = await self.render_template(
            "home.html", analyses=rows, error=error, profile=state.get("profile", {})
        )
        self.finish(html)


class AnalysisHandler(KineticPage):
    @web.authenticated
    async def get(self, analysis_id):
        found = await self.authorized_analysis(analysis_id)
        if found is None:
            return
        aid, analysis = found
        user = self.current_user
        name = slugs.server_name(aid)
        try:
            async with _analysis_locks[aid]:
                ws = await self.find_workspace(aid)
                if ws is None:
                    owner = await self.start_workspace(user, aid, display_name(analysis, aid))
                else:
                    owner = ws.owner
                await self.join_workspace(user, aid, owner)
        except HubAPIError as e:
            self.log.error("Opening analysis %s for %s failed: %s", aid, user.name, e)
            await self.error_page(
                503 if e.status >= 500 else e.status,
                "The workspace could not be opened",
                "Something went wrong while opening this analysis' workspace. Please try again in a minute.",
            )
            return
        spawner = self.live_spawner(owner, name)
        if spawner is None:
            await self.error_page(503, "The workspace could not be opened", "Please try again in a minute.")
            return
        if spawner.ready:
            self.redirect(workspace_url(spawner))
            return
        html = await self.render_template(
            "analysis_pending.html",
            analysis=analysis,
            spawner=spawner,
            user=user,
            progress_url=url_concat(
                url_path_join(self.hub.base_url, "analysis", aid, "progress"),
                {"_xsrf": self.xsrf_token.decode("ascii")},
            ),
        )
        self.finish(html)

    async def start_workspace(self, user, aid: str, title: str) -> str:
        """Start the analysis's workspace, owned by the analysis (``slugs.owner_name``); returns
        the owner. The opener joins it like everyone else, by share (``join_workspace``)."""
        owner, name = slugs.owner_name(aid), slugs.server_name(aid)
        self.log.info("%s opens analysis %s: starting workspace %s/%s", user.name, aid, owner, name)
        await self.hub_api.ensure_user(owner)
        # Shares from an earlier session are dropped: every join is re-checked with Kinetic,
        # so a researcher removed from the analysis cannot come back through an old share.
        await self.hub_api.revoke_all_shares(owner, name)
        # pre_spawn_start checks the start (and fetches the analysis key) as this researcher
        self.authenticator.hand_over_opener(owner, name, user)
        # Returns once the start is pending (slow_spawn_timeout = 0); the progress page shows the rest.
        # The display name (the analysis title) is set, or renamed if Kinetic's title changed.
        await self.hub_api.start_server(owner, name, title, {"analysis_id": aid, "opened_by": user.name})
        return owner

    async def join_workspace(self, user, aid: str, owner: str) -> None:
        """Let a researcher Kinetic puts on the analysis into its running workspace: a share (access
        only) of the one workspace, never a second one on the same storage."""
        name = slugs.server_name(aid)
        if owner == user.name:
            return  # a workspace a researcher owns (started by a release before analyses owned them)
        await self.hub_api.grant_share(owner, name, user.name)
        spawner = self.live_spawner(owner, name)
        if spawner is not None:
            # Kinetic already says they are on the analysis: no extra JupyterHub "authorize
            # access" page (the share still limits what they reach).
            skip_oauth_confirmation(self.settings, spawner.oauth_client_id)
        self.log.info("%s is in the workspace of analysis %s (%s/%s)", user.name, aid, owner, name)


GENERIC_FAILURE = (
    "The workspace could not be started. Please try again; if it keeps failing, tell the Kinetic team."
)


class AnalysisProgressHandler(KineticPage):
    """Server-sent events of a workspace's start, authorized by analysis membership (so a
    co-researcher who joins a workspace can watch it start too).

    Each event is ``data: <json>``: the spawner's own steps ``{"progress", "message"}`` (messages
    shown as text, never HTML), then either ``{"progress": 100, "ready": true, "message", "url"}``
    or ``{"progress": 100, "failed": true, "message"}``.
    """

    keepalive_seconds = 8  # a comment line now and then, so proxies keep the stream open
    poll_seconds = 0.5  # how often the start's state is looked at between progress steps

    async def get(self, analysis_id):
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "sign in first")
        try:
            analysis = await self.authenticator.authorize_analysis(user, analysis_id)
        except (KineticError, slugs.BadAnalysisId):
            raise web.HTTPError(404, "no such analysis") from None
        if analysis is None:
            raise web.HTTPError(404, "no such analysis")
        name = slugs.server_name(analysis_id)
        try:
            ws = await self.find_workspace(analysis_id)
        except HubAPIError as e:
            raise web.HTTPError(503, "workspaces cannot be listed right now") from e
        # Not active: perhaps the start just failed; the stream reports that.
        owner = ws.owner if ws else slugs.owner_name(analysis_id)
        spawner = self.live_spawner(owner, name)
        if spawner is None:
            raise web.HTTPError(404, "no workspace is starting for this analysis")
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self.stream(spawner)
        except StreamClosedError:
            pass  # the page went away

    async def send(self, event: dict | None) -> None:
        self.write(f"data: {json.dumps(event)}\n\n" if event is not None else ":\n\n")
        await self.flush()

    def outcome(self, spawner) -> dict | None:
        """The final event once the start is over, None while it goes on."""
        if spawner.ready:
            return {
                "progress": 100,
                "ready": True,
                "message": "Your workspace is ready.",
                "url": workspace_url(spawner),
            }
        if not spawner.active:  # neither running nor pending: the start ended without a server
            return {
                "progress": 100,
                "failed": True,
                "message": getattr(spawner, "failure_message", None) or GENERIC_FAILURE,
            }
        return None

    async def stream(self, spawner) -> None:
        final = self.outcome(spawner)
        if final is not None:
            await self.send(final)
            return
        events: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for event in spawner.progress():
                    await events.put(event)
            except Exception:
                self.log.exception("progress of %s/%s failed", spawner.user.name, spawner.name)

        pumping = asyncio.ensure_future(pump())
        last_progress, last_sent = 0, time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), self.poll_seconds)
                except TimeoutError:
                    event = None
                if event is not None:
                    if not isinstance(event, dict):
                        continue
                    try:
                        last_progress = max(last_progress, min(99, int(event.get("progress", last_progress))))
                    except (TypeError, ValueError):
                        pass
                    await self.send({"progress": last_progress, "message": str(event.get("message", ""))})
                    last_sent = time.monotonic()
                    continue
                # nothing queued: every step so far has been sent, so the outcome comes last
                final = self.outcome(spawner)
                if final is not None:
                    await self.send(final)
                    return
                if time.monotonic() - last_sent > self.keepalive_seconds:
                    await self.send(None)
                    last_sent = time.monotonic()
        finally:
            pumping.cancel()


class EditorHandler(BaseHandler):
    """Kinetic links to /editor/#<analysisId>; the fragment never reaches a server, so a tiny page
    reads it and forwards to /hub/analysis/<id>."""

    async def get(self):
        self.finish(await self.render_template("editor.html"))


def routes():
    return [
        (r"/login", KineticLoginHandler),
        (r"/logout", KineticLogoutHandler),
        (r"/home", AnalysesHomeHandler),
        (r"/analysis/([^/]+)/progress", AnalysisProgressHandler),
        (r"/analysis/([^/]+)/?", AnalysisHandler),
        (r"/editor/?", EditorHandler),
        (AUTHORIZE_ROUTE, WorkspaceLoginCheck),
    ]
