"""KineticAuthenticator: researchers sign in to the hub with their Kinetic SSO cookie.

Auto-login: the hub's ``/hub/login`` reads the cookie Kinetic set, decrypts and verifies it with
the configured keys (or, with no keys, asks Kinetic who it belongs to), and signs the researcher
in as the hub user named by ``sub.uuid``. The cookie is kept in ``auth_state`` (encrypted at rest
by JupyterHub) because every later question to Kinetic is asked *as this researcher*.

The authenticator is also the one place that decides whether a researcher may use an analysis:
:meth:`authorize_analysis` asks Kinetic, and :meth:`pre_spawn_start` applies it to every spawn,
whichever path (page, REST API, admin panel) asked for it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Bool, Float, Integer, Unicode, default

from kinetic_spawner import slugs

from . import cookie as sso
from .hub_api import HubAPI
from .kinetic import KineticClient, KineticError


class KineticAuthenticator(Authenticator):
    # -- where Kinetic is ------------------------------------------------------------------
    kinetic_url = Unicode(
        "http://127.0.0.1:8900",
        help="""Base URL the hub uses to call the Kinetic API (server to server).

        Locally this is the stand-in started by `make demo`.""",
    ).tag(config=True)

    kinetic_timeout = Float(
        10,
        help="""Seconds to wait for one answer from Kinetic (a question that may be repeated is
        retried twice, with backoff). Kinetic not answering is never taken as yes.""",
    ).tag(config=True)

    kinetic_public_url = Unicode(
        "",
        help="""Base URL of Kinetic as researchers' browsers reach it (for sign-in redirects).

        Defaults to `kinetic_url`.""",
    ).tag(config=True)

    sign_in_url = Unicode(
        "",
        help="""Where a researcher without a valid Kinetic session is sent to sign in.

        A return link is appended as `r=<hub login URL>`. Defaults to
        `{kinetic_public_url}/accounts/login`.""",
    ).tag(config=True)

    sign_out_url = Unicode(
        "",
        help="""Where signing out of the hub sends the researcher, so that the Kinetic session ends too
        (otherwise auto-login would sign them straight back in). Defaults to
        `{kinetic_public_url}/accounts/logout`.""",
    ).tag(config=True)

    # -- the SSO cookie --------------------------------------------------------------------
    sso_cookie_name = Unicode(
        "oxa",
        help="Name of Kinetic's SSO cookie: `oxa` in production, `oxa_staging` on staging.",
    ).tag(config=True)

    sso_public_key_file = Unicode(
        "",
        help="""PEM file with the public half of Kinetic's RS256 signing key (the inner JWS).

        With no keys configured the hub asks Kinetic who a cookie belongs to instead
        (`ask_kinetic_without_keys`).""",
    ).tag(config=True)

    sso_encryption_key_file = Unicode(
        "",
        help="File holding the 32-byte shared key (base64) that decrypts the outer JWE (`dir`/`A256GCM`).",
    ).tag(config=True)

    ask_kinetic_without_keys = Bool(
        True,
        help="""With no keys configured, ask Kinetic's `/accounts/api/user` who the cookie belongs to.

        Slower (one request per sign-in) but needs no shared secret on the hub.""",
    ).tag(config=True)

    cookie_leeway_seconds = Integer(
        60,
        help="Clock skew allowed when checking the cookie's `exp` claim.",
    ).tag(config=True)

    authorization_cache_seconds = Integer(
        30,
        help="""How long an answer from Kinetic about (researcher, analysis) is reused.

        Only "yes" is reused. Short on purpose: removing a researcher from an analysis in Kinetic
        takes effect within this many seconds for new workspace starts and joins (at once for
        sign-ins to a running workspace, which always ask Kinetic; see access_review).""",
    ).tag(config=True)

    hub_api_token = Unicode(
        "",
        help="""Token of the hub-registered service the hub's own pages act as when they find, start,
        name and share workspaces through JupyterHub's REST API (see `kinetic_auth.hub_api`).

        Its role needs `list:users`, `read:servers`, `start:servers`, `shares` and `read:users:name`.
        hub_config/jupyterhub_config.py makes a fresh one at each hub start, kept in the hub's memory
        only. Never give it to anything else.""",
    ).tag(config=True)

    @default("auto_login")
    def _auto_login_default(self):
        return True

    @default("allow_all")
    def _allow_all_default(self):
        # Anyone Kinetic vouches for may sign in; what they can open is decided per analysis by Kinetic.
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        return True

    @default("login_service")
    def _login_service_default(self):
        return "Kinetic"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._keys = None
        self._authz_cache: dict[tuple[str, str], tuple[float, dict | None]] = {}
        # (owner, server) -> (when, the researcher opening it): see hand_over_opener
        self._openers: dict[tuple[str, str], tuple[float, object]] = {}
        self._access_review_task = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # made outside a running hub (a unit test, `jupyterhub --generate-config`)
        if self.hub_api_token:
            self._access_review_task = loop.create_task(self._run_access_review())

    async def _run_access_review(self):
        """Access follows Kinetic while workspaces run (see access_review)."""
        from .access_review import AccessReview

        # the hub's API address is known once the hub is initialized; the first pass comes after
        # one interval anyway
        review = AccessReview(self, api=None, parent=self)
        if review.interval <= 0:
            return
        await asyncio.sleep(review.interval)
        review.api = HubAPI(self.parent.hub.api_url, self.hub_api_token)
        self.log.info("Access review: every %.0f s, with Kinetic", review.interval)
        await review.run_forever()

    def remember_authorization(self, user_name: str, analysis_id: str, analysis: dict | None) -> None:
        """Keep a fresh "yes" from Kinetic for ``authorization_cache_seconds``; a "no" is not kept, so
        someone Kinetic adds back is let in at once, and forgets an earlier "yes"."""
        if analysis is None:
            self._authz_cache.pop((user_name, analysis_id), None)
        else:
            self._authz_cache[(user_name, analysis_id)] = (time.monotonic(), analysis)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def kinetic(self) -> KineticClient:
        return KineticClient(self.kinetic_url, cookie_name=self.sso_cookie_name, timeout=self.kinetic_timeout)

    def public_kinetic_url(self) -> str:
        return (self.kinetic_public_url or self.kinetic_url).rstrip("/")

    def sign_in_redirect(self) -> str:
        return self.sign_in_url or f"{self.public_kinetic_url()}/accounts/login"

    def sign_out_redirect(self) -> str:
        return self.sign_out_url or f"{self.public_kinetic_url()}/accounts/logout"

    def keys(self):
        """(public key, encryption key), or None when not configured. Read once."""
        if self._keys is None and self.sso_public_key_file and self.sso_encryption_key_file:
            self._keys = (
                sso.load_signing_key(Path(self.sso_public_key_file).read_bytes()),
                sso.load_encryption_key(Path(self.sso_encryption_key_file).read_text()),
            )
        return self._keys

    async def identify(self, token: str | None) -> sso.Researcher:
        """Who this cookie belongs to. Raises CookieError with a reason a person can read."""
        if not token:
            raise sso.CookieError("you are not signed in to Kinetic")
        keys = self.keys()
        if keys:
            return sso.decode(token, *keys, leeway=self.cookie_leeway_seconds)
        if not self.ask_kinetic_without_keys:
            raise sso.CookieError("the hub has no keys to check Kinetic sign-ins")
        try:
            who = await self.kinetic.whoami(token)
        except KineticError:
            raise sso.CookieError("Kinetic could not be asked who you are; try again shortly") from None
        if not who or not who.get("uuid"):
            raise sso.CookieError("Kinetic does not recognise this sign-in")
        return sso.Researcher(uuid=who["uuid"], is_test=False, claims={"sub": {"uuid": who["uuid"]}})

    async def _profile(self, token: str) -> dict:
        """Name and email for pages and release mail; best effort, sign-in works without it."""
        try:
            who = await self.kinetic.whoami(token) or {}
        except KineticError:
            who = {}
        return {k: who.get(k, "") for k in ("first_name", "last_name", "email")}

    # -- the Authenticator API -------------------------------------------------------------
    async def authenticate(self, handler, data=None):
        """``data`` is ``{"sso_cookie": token}`` from KineticLoginHandler; the token is verified here."""
        token = (data or {}).get("sso_cookie")
        try:
            who = await self.identify(token)
        except sso.CookieError as e:
            self.log.warning("Kinetic sign-in refused: %s", e.reason)  # never the cookie itself
            return None
        if slugs.is_workspace_owner(who.uuid):
            # the hub users that own analyses' workspaces are never people (Kinetic names people by
            # uuid); signing in as one would open every workspace of that analysis
            self.log.warning("Kinetic sign-in refused: %r is a workspace owner's name", who.uuid)
            return None
        return {
            "name": who.uuid,
            "auth_state": {"sso_cookie": token, "uuid": who.uuid, "profile": await self._profile(token)},
        }

    async def refresh_user(self, user, handler=None):
        """Re-check the Kinetic cookie on the hub's own pages.

        Signed out of Kinetic, or signed in there as someone else → sign in again (False).
        Same researcher with a renewed cookie → keep the new cookie in auth_state.
        Without a request (API tokens, background work) there is no cookie to look at.
        """
        if handler is None or getattr(handler, "_token_authenticated", False):
            # API tokens (a workspace's own token, the culler) carry no browser cookie to check.
            return True
        token = handler.get_cookie(self.sso_cookie_name)
        try:
            who = await self.identify(token)
        except sso.CookieError:
            return False
        if who.uuid != user.name:
            return False
        state = await user.get_auth_state() or {}
        if state.get("sso_cookie") == token:
            return True
        state.update({"sso_cookie": token, "uuid": who.uuid})
        return {"name": user.name, "auth_state": state}

    async def authorize_analysis(self, user, analysis_id: str, fresh: bool = False) -> dict | None:
        """The analysis as Kinetic shows it to this researcher, or None if they are not on it.
        ``fresh`` asks Kinetic even if it answered moments ago (a sign-in to a workspace).

        Raises KineticError when Kinetic cannot be asked (callers show "try again", never "yes").
        """
        analysis_id = slugs.check_analysis_id(analysis_id)
        key = (user.name, analysis_id)
        hit = self._authz_cache.get(key)
        if not fresh and hit and time.monotonic() - hit[0] < self.authorization_cache_seconds:
            return hit[1]
        state = await user.get_auth_state() or {}
        token = state.get("sso_cookie")
        if not token:
            return None
        analysis = await self.kinetic.get_analysis(analysis_id, token)
        if analysis is not None and str(analysis.get("id")) != analysis_id:
            analysis = None  # Kinetic answered about something else: treat as no access
        self.remember_authorization(user.name, analysis_id, analysis)
        return analysis

    def hand_over_opener(self, owner: str, server_name: str, opener) -> None:
        """Say who is opening an analysis's workspace, just before the hub pages start it.

        The workspace's owner is the analysis (``slugs.owner_name``), which has no Kinetic sign-in
        of its own: the spawn is checked, and the analysis key fetched, as the researcher who opened
        it. Held in memory for ``HAND_OVER_SECONDS``, taken by the next ``pre_spawn_start``."""
        self._openers[(owner, server_name)] = (time.monotonic(), opener)

    HAND_OVER_SECONDS = 60

    async def pre_spawn_start(self, user, spawner):
        """Every spawn, by any path, must be of an analysis's own workspace, opened from
        /hub/analysis/<id> by a researcher Kinetic says is on the analysis (asked again here)."""
        analysis_id = slugs.analysis_id_from_server_name(spawner.name)
        if analysis_id is None or slugs.analysis_id_from_owner(user.name) != analysis_id:
            raise web.HTTPError(
                400,
                "Workspaces belong to Kinetic analyses (server a-<id> of analysis-<id>) and are "
                "opened from /hub/analysis/<id>.",
            )
        since, opener = self._openers.pop((user.name, spawner.name), (0.0, None))
        if opener is None or time.monotonic() - since > self.HAND_OVER_SECONDS:
            raise web.HTTPError(
                403, f"Open analysis {analysis_id} from Kinetic (/hub/analysis/{analysis_id}) to start it."
            )
        try:
            analysis = await self.authorize_analysis(opener, analysis_id)
        except KineticError:
            raise web.HTTPError(502, "Kinetic could not be reached to check access; try again.") from None
        if analysis is None:
            raise web.HTTPError(404, f"{opener.name} is not a researcher on analysis {analysis_id}.")
        spawner.analysis = analysis

    def get_handlers(self, app):
        from . import handlers  # late import: handlers import JupyterHub's web handlers

        return handlers.routes()
