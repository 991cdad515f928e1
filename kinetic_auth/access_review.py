"""Access follows Kinetic: who may be in a running workspace is re-asked of Kinetic on a short period.

Kinetic decides who is on an analysis. The hub asks it when someone opens or joins a workspace, but a
workspace runs for hours and Kinetic's answer can change meanwhile: a researcher is removed from the
analysis, or signs out of Kinetic. Every ``interval`` seconds this review asks Kinetic, *as each
person* (with the Kinetic sign-in kept in their auth_state), about every person in every running
workspace — everyone it is shared with; a workspace belongs to its analysis (``slugs.owner_name``),
so every researcher in it is there by a share — and acts on the answer:

    answer                                          a researcher in the workspace (by share)
    ----------------------------------------------  ------------------------------------------------
    on the analysis                                 kept
    not on the analysis (Kinetic: 404)              sign-ins to it revoked, share removed
    Kinetic refuses their sign-in (signed out,      sign-ins to it revoked, share removed
    expired: 401/403)
    Kinetic unreachable                             nothing yet; after ``unreachable_grace`` seconds
                                                    of no answer, as "signed out"

The workspace itself runs on for the researchers still on the analysis (and is stopped by the idle
culler once nobody uses it). A workspace a *researcher* owns — started by a release before analyses
owned their workspaces, still running after the upgrade — is reviewed the old way: its owner too is
asked about, and an owner Kinetic no longer puts on the analysis has the workspace stopped (home kept).

"Sign-ins to it revoked" deletes the person's OAuth tokens for that workspace: the workspace re-checks
its visitors' tokens with the hub every ``HubOAuth.cache_max_age`` seconds (set in the workspace image),
so open browser sessions there end at the next check; a new sign-in to the workspace is asked of
Kinetic again (``hub_adapter.WorkspaceLoginCheck``). The bound: a change in Kinetic reaches every open
session within ``interval`` + the time to ask Kinetic + ``cache_max_age`` (15 + ≤ 10 + 15 s by
default: under 60 s). Kinetic unreachable never means yes: after ``unreachable_grace`` seconds without
an answer, access is taken away as if Kinetic had said no, and given back only by opening the
analysis again once Kinetic answers.

Everything goes through JupyterHub's REST API (``hub_api``) as the hub pages' service, so the hub's own
rules apply; the review runs inside the hub process, started by the authenticator.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from kinetic_spawner import slugs

from .hub_api import HubAPI, HubAPIError
from .kinetic import KineticError

# What Kinetic's answer about (person, analysis) was.
ON_ANALYSIS = "on the analysis"
NOT_ON_ANALYSIS = "not on the analysis"
SIGNED_OUT = "Kinetic refuses their sign-in"
UNREACHABLE = "Kinetic could not be asked"


@dataclass(frozen=True)
class Finding:
    """One person in one running workspace, what Kinetic said, and what the review did."""

    owner: str
    server: str
    person: str
    answer: str
    action: str  # "kept", "waiting", "revoked", "stopped"


class AccessReview(LoggingConfigurable):
    interval = Float(
        15,
        help="""Seconds between two reviews of every running workspace's people with Kinetic.

        With the workspace image's token cache (15 s), a removal in Kinetic ends every open session
        within about interval + 25 s. 0 turns the review off (tests of other things only).""",
    ).tag(config=True)

    unreachable_grace = Float(
        30,
        help="""How long Kinetic may fail to answer about someone before their access to running
        workspaces is taken away as if Kinetic had said no (Kinetic unreachable never means yes).
        Short outages do not interrupt work; opening the analysis again restores access once Kinetic
        answers.""",
    ).tag(config=True)

    concurrency = Integer(
        8,
        help="How many questions to Kinetic one review pass has in flight at once.",
    ).tag(config=True)

    def __init__(self, authenticator, api: HubAPI, **kwargs):
        super().__init__(**kwargs)
        self.authenticator = authenticator
        self.api = api
        self._unanswered_since: dict[tuple[str, str, str], float] = {}
        self.clock = time.monotonic  # (a test moves it on instead of waiting out the grace)
        self._running = asyncio.Lock()

    async def review(self) -> list[Finding]:
        """One pass over every running workspace. Never raises: a failed pass is logged and the next
        one tries again."""
        if self._running.locked():
            return []
        async with self._running:
            try:
                return await self._review()
            except Exception:
                self.log.exception("Access review: the pass failed; the next one will try again")
                return []

    async def _review(self) -> list[Finding]:
        people = []  # (owner, server, analysis id, person)
        for ws in await self.api.active_servers_all():
            aid = slugs.analysis_id_from_server_name(ws.name)
            if aid is None:
                continue
            try:
                sharers = await self.api.shared_with(ws.owner, ws.name)
            except HubAPIError as e:
                if e.status == 404:
                    continue  # stopped meanwhile
                raise
            # an analysis's own workspace owner is not a person: only those it is shared with are asked
            owners = () if slugs.is_workspace_owner(ws.owner) else (ws.owner,)
            people += [(ws.owner, ws.name, aid, person) for person in (*owners, *sharers)]
        # Kinetic is asked about several people at once (a slow answer does not hold up the rest)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(owner, server, aid, person):
            async with gate:
                return await self._review_person(owner, server, aid, person)

        findings = await asyncio.gather(*(one(*p) for p in people))
        seen = {(f.owner, f.server, f.person) for f in findings}
        for key in set(self._unanswered_since) - seen:
            del self._unanswered_since[key]
        return list(findings)

    async def ask_kinetic(self, person: str, aid: str) -> str:
        """What Kinetic says now about ``person`` on analysis ``aid`` (asked as them, no cache)."""
        state = await self.api.auth_state(person)
        token = (state or {}).get("sso_cookie")
        if not token:
            return SIGNED_OUT
        try:
            analysis = await self.authenticator.kinetic.get_analysis(aid, token)
        except KineticError as e:
            return SIGNED_OUT if e.status in (401, 403) else UNREACHABLE
        if analysis is None or str(analysis.get("id")) != aid:
            answer, analysis = NOT_ON_ANALYSIS, None
        else:
            answer = ON_ANALYSIS
        # the hub's pages reuse Kinetic's answers for a few seconds: give them this fresh one
        self.authenticator.remember_authorization(person, aid, analysis)
        return answer

    async def _review_person(self, owner: str, server: str, aid: str, person: str) -> Finding:
        key = (owner, server, person)
        answer = await self.ask_kinetic(person, aid)
        if answer == ON_ANALYSIS:
            self._unanswered_since.pop(key, None)
            return Finding(owner, server, person, answer, "kept")
        if answer == UNREACHABLE:
            since = self._unanswered_since.setdefault(key, self.clock())
            if self.clock() - since < self.unreachable_grace:
                self.log.warning(
                    "Access review: Kinetic did not answer about %s in %s/%s; kept for now",
                    person,
                    owner,
                    server,
                )
                return Finding(owner, server, person, answer, "waiting")
        self._unanswered_since.pop(key, None)
        if person == owner and answer == NOT_ON_ANALYSIS:
            self.log.warning(
                "Access review: %s opened %s/%s but is no longer on analysis %s: stopping it (home kept)",
                owner,
                owner,
                server,
                aid,
            )
            await self.revoke_sign_ins(person, owner, server)
            await self.api.stop_server(owner, server)
            return Finding(owner, server, person, answer, "stopped")
        self.log.warning("Access review: %s in %s/%s: %s; access revoked", person, owner, server, answer)
        await self.revoke_sign_ins(person, owner, server)
        if person != owner:
            await self.api.revoke_share(owner, server, person)
        return Finding(owner, server, person, answer, "revoked")

    async def revoke_sign_ins(self, person: str, owner: str, server: str) -> int:
        """Delete ``person``'s sign-ins to owner's ``server``: the OAuth tokens its login made for
        them and, for a co-researcher, any token they made carrying access to it. Never the owner's
        other tokens: the workspace's own API token is the owner's and carries that access too (the
        workspace reports activity and signs visitors in with it). Done before the share goes: a
        token's scopes are only listed while its owner still holds them."""
        scope = f"access:servers!server={owner}/{server}"
        path = f"/user/{owner}/{server}/"
        count = 0
        for token in await self.api.tokens(person):
            signed_in_there = path in (token.get("oauth_client") or "")
            made_for_it = person != owner and scope in token.get("scopes", [])
            if signed_in_there or made_for_it:
                await self.api.revoke_token(person, token["id"])
                count += 1
        return count

    # -- running it ----------------------------------------------------------------------------
    async def run_forever(self) -> None:
        while True:
            await self.review()
            await asyncio.sleep(self.interval)
