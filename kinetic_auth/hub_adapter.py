"""The places Kinetic Workspaces relies on JupyterHub behaviour that is not a public API.

1. Skipping the OAuth confirmation page for a co-researcher who joins a workspace.
2. Asking Kinetic at every sign-in to a workspace (``WorkspaceLoginCheck``).

JupyterHub 6 has no public way to say "this person may enter that server without the OAuth
'Authorize access' page". Its authorization handler skips the page for a client id listed in the
tornado setting ``oauth_no_confirm_list`` (filled from services' ``oauth_no_confirm``, and changed at
run time by JupyterHub itself when services are added through the API). A co-researcher joins a
workspace only after Kinetic said they work on the analysis together, and the share still limits what
they reach, so the page would only ask them to confirm what Kinetic already decided.

Being on the list grants nothing by itself: access still needs the share (``access:servers``).

JupyterHub 6 also has no hook at the moment someone signs in to a server (its OAuth authorization
endpoint decides from scopes alone, and a share is a scope). Kinetic may have taken the person off the
analysis since the share was made, so ``WorkspaceLoginCheck`` stands in front of JupyterHub's own
handler for ``/hub/api/oauth2/authorize`` (our authenticator's routes come before JupyterHub's): for a
workspace's OAuth client it asks Kinetic, fresh, whether the person is on the analysis, refuses if not
(or if Kinetic cannot say), and otherwise lets JupyterHub's handler do everything else unchanged.
It first re-checks the browser's Kinetic sign-in (the authenticator's ``refresh_user``, now rather than
at the hub's refresh age), so a researcher signed out of Kinetic is sent to sign in again rather than
let in on the hub's session.

``tests/test_hub_adapter.py`` calls JupyterHub's own authorization check with this adapter's effect,
and checks the route and the client lookup the login check relies on; it fails when a JupyterHub
release changes them; update this module (and only this one) then.
"""

from __future__ import annotations

from jupyterhub.apihandlers.auth import OAuthAuthorizeHandler
from tornado import web
from tornado.httputil import url_concat

from kinetic_spawner import slugs

from .hub_api import HubAPI, HubAPIError
from .kinetic import KineticError

AUTHORIZE_ROUTE = r"/api/oauth2/authorize"

NO_CONFIRM_SETTING = "oauth_no_confirm_list"


def skip_oauth_confirmation(settings: dict, oauth_client_id: str) -> None:
    """Let people who have access to this OAuth client (a workspace) in without the confirm page."""
    settings.setdefault(NO_CONFIRM_SETTING, set()).add(oauth_client_id)


class WorkspaceLoginCheck(OAuthAuthorizeHandler):
    """JupyterHub's OAuth authorization endpoint, preceded by Kinetic's word for workspaces."""

    async def refusal(self) -> str | None:
        """Why the signed-in person may not sign in to the workspace asked for, or None."""
        user = self.current_user
        client = self.oauth_provider.fetch_by_client_id(self.get_argument("client_id", ""))
        spawner = getattr(client, "spawner", None) if client is not None else None
        if user is None or spawner is None:
            return None  # not signed in (JupyterHub's handler sends them to sign in), or a service
        aid = slugs.analysis_id_from_server_name(spawner.name)
        if aid is None:
            return None  # not a workspace (pre_spawn_start lets no such server start)
        try:
            analysis = await self.authenticator.authorize_analysis(user, aid, fresh=True)
        except KineticError as e:
            if e.status in (401, 403):
                return "Your Kinetic sign-in has ended. Sign in to Kinetic again."
            raise web.HTTPError(
                502, "Kinetic could not be reached to check your access; try again."
            ) from None
        if analysis is not None:
            return None
        owner = spawner.user.name
        if owner != user.name:
            # the share would only be refused here every time: take it away now
            try:
                await HubAPI(self.hub.api_url, self.authenticator.hub_api_token).revoke_share(
                    owner, spawner.name, user.name
                )
            except HubAPIError as e:
                self.log.warning(
                    "Could not revoke %s's share of %s/%s: %s", user.name, owner, spawner.name, e
                )
        return f"You are not a researcher on analysis {aid} in Kinetic."

    @web.authenticated
    async def get(self):
        # The browser's Kinetic sign-in is checked now, not at the hub's usual refresh age: signed out
        # of Kinetic → sign in again and come back; a renewed cookie → kept, and asked with below.
        user = self.current_user
        refreshed = await self.authenticator.refresh_user(user, self)
        if not refreshed:
            self.clear_login_cookie()  # the hub session ends with Kinetic's
            self.redirect(url_concat(self.get_login_url(), {"next": self.request.uri}))
            return
        if isinstance(refreshed, dict) and refreshed.get("auth_state") is not None:
            await user.save_auth_state(refreshed["auth_state"])
        why = await self.refusal()
        if why:
            self.log.warning("Workspace sign-in refused for %s: %s", self.current_user.name, why)
            raise web.HTTPError(403, why)
        return await super().get()

    @web.authenticated
    async def post(self):
        why = await self.refusal()
        if why:
            raise web.HTTPError(403, why)
        return super().post()
