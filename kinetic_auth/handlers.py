"""The hub pages researchers see: sign-in, their analyses, opening an analysis, its progress.

Routes (under /hub/), installed by KineticAuthenticator.get_handlers so they take precedence
over JupyterHub's own ``/login``, ``/logout`` and ``/home``:

    /login                     auto-login from the Kinetic SSO cookie (or off to Kinetic to sign in)
    /logout                    hub session and Kinetic session both end
    /home                      the researcher's analyses (from Kinetic) with each workspace's state
    /analysis/<id>             authorize with Kinetic, start or join the workspace, show progress
    /analysis/<id>/progress    event stream of the workspace's start (JupyterHub's own, re-authorized)
    /editor/                   Kinetic's old `/editor/#<id>` link, forwarded to /analysis/<id>
"""
from __future__ import annotations

import asyncio
from collections import defaultdict

from jupyterhub import orm
from jupyterhub.apihandlers.users import SpawnProgressAPIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.utils import url_escape_path, url_path_join
from tornado import web
from tornado.httputil import url_concat

from kinetic_spawner import slugs

from . import cookie as sso
from .kinetic import KineticError

# One lock per analysis: two clicks (or two researchers) at the same moment make one workspace.
# The hub is a single process, so an in-process lock is the whole story.
_analysis_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


def find_workspaces(handler: BaseHandler, analysis_ids) -> dict:
    """analysis id -> its active (starting or running) workspace, whoever owns it; one query."""
    names = {slugs.server_name(a): a for a in analysis_ids}
    found = {}
    for orm_spawner in handler.db.query(orm.Spawner).filter(orm.Spawner.name.in_(names)):
        if orm_spawner.user is None:
            continue
        spawner = handler.users[orm_spawner.user].spawners.get(orm_spawner.name)
        if spawner is not None and spawner.active:
            found[names[orm_spawner.name]] = spawner
    return found


def find_workspace(handler: BaseHandler, analysis_id: str):
    """The active workspace of one analysis, or None."""
    return find_workspaces(handler, [analysis_id]).get(analysis_id)


def workspace_url(spawner) -> str:
    return url_path_join(spawner.user.url, url_escape_path(spawner.name), "/")


class KineticPage(BaseHandler):
    """Shared bits: branded error pages and asking Kinetic about an analysis."""

    async def error_page(self, status: int, title: str, message: str):
        self.set_status(status)
        html = await self.render_template("kinetic_error.html", status=status, title=title,
                                          message=message)
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
            await self.error_page(502, "Kinetic is not answering",
                                  "We could not check your access with Kinetic. Please try again in a minute.")
            return None
        if analysis is None:
            self.log.warning("%s is not on analysis %s: refused", self.current_user.name, aid)
            await self.error_page(404, "Analysis not available",
                                  f"Analysis {aid} does not exist or you are not one of its researchers. "
                                  "Ask its owner in Kinetic to add you.")
            return None
        return aid, analysis


class KineticLoginHandler(KineticPage):
    async def get(self):
        auth = self.authenticator
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
                "kinetic_error.html", status=403, title="We could not verify your Kinetic sign-in",
                message=f"Reason: {e.reason}.", sign_in_url=url_concat(
                    auth.sign_in_redirect(),
                    {"r": f"{self.request.protocol}://{self.request.host}{self.settings['login_url']}"}))
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
        running = find_workspaces(self, [aid for aid, _ in valid])
        rows = []
        for aid, a in valid:
            spawner = running.get(aid)
            names = {r.get("user_id"): f"{r.get('first_name', '')} {r.get('last_name', '')}".strip()
                     for r in a.get("researchers", [])}
            if spawner is None:
                status = "Not running"
            else:
                who = "you" if spawner.user.name == user.name else names.get(spawner.user.name, "a co-researcher")
                status = f"{'Running' if spawner.ready else 'Starting'} (opened by {who})"
            rows.append({"id": aid, "title": a.get("title", ""), "description": a.get("description", ""),
                         "researchers": [n for n in names.values() if n], "status": status,
                         "running": spawner is not None,
                         "url": url_path_join(self.hub.base_url, "analysis", aid)})
        html = await self.render_template("home.html", analyses=rows, error=error,
                                          profile=state.get("profile", {}))
        self.finish(html)


class AnalysisHandler(KineticPage):
    @web.authenticated
    async def get(self, analysis_id):
        found = await self.authorized_analysis(analysis_id)
        if found is None:
            return
        aid, analysis = found
        user = self.current_user
        async with _analysis_locks[aid]:
            spawner = find_workspace(self, aid)
            if spawner is None:
                spawner = await self.start_workspace(user, aid)
            elif spawner.user.name != user.name:
                # A co-researcher joins the running workspace; a second one on the same storage
                # would have two R sessions writing the same files.
                orm.Share.grant(self.db, spawner.orm_spawner, user.orm_user)
                # Kinetic already says they work together on this analysis: no extra JupyterHub
                # "authorize access" page for the joiner (the share still limits what they reach).
                self.settings.setdefault("oauth_no_confirm_list", set()).add(spawner.oauth_client_id)
                self.log.info("%s joined the workspace of analysis %s opened by %s",
                              user.name, aid, spawner.user.name)
        if spawner.ready:
            self.redirect(workspace_url(spawner))
            return
        html = await self.render_template(
            "analysis_pending.html", analysis=analysis, spawner=spawner, user=user,
            # EventSource is a cors-mode fetch: JupyterHub wants the xsrf token on it
            progress_url=url_concat(url_path_join(self.hub.base_url, "analysis", aid, "progress"),
                                    {"_xsrf": self.xsrf_token.decode("ascii")}))
        self.finish(html)

    async def start_workspace(self, user, aid: str):
        name = slugs.server_name(aid)
        self.log.info("%s opens analysis %s: starting workspace %s", user.name, aid, name)
        existing = user.orm_user.orm_spawners.get(name)
        if existing is not None and existing.shares:
            # Shares from an earlier session are dropped: every join is re-checked with Kinetic,
            # so a researcher removed from the analysis cannot come back through an old share.
            for share in list(existing.shares):
                self.db.delete(share)
            self.db.commit()
        # With slow_spawn_timeout = 0 this returns once the spawn is pending; progress shows the rest.
        await self.spawn_single_user(user, name, options={"analysis_id": aid})
        return user.spawners[name]


class AnalysisProgressHandler(SpawnProgressAPIHandler):
    """JupyterHub's progress event stream, authorized by analysis membership instead of scopes,
    so a co-researcher who joins a workspace can watch it start too."""

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
        spawner = find_workspace(self, analysis_id)
        if spawner is None:
            # Not active: perhaps this researcher's own start just failed; the parent reports that.
            spawner = user.spawners.get(slugs.server_name(analysis_id))
            if spawner is None:
                raise web.HTTPError(404, "no workspace is starting for this analysis")
        await SpawnProgressAPIHandler.get.__wrapped__(self, spawner.user.name, spawner.name)


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
    ]
