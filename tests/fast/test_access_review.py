"""The access review's decisions, fast: the real review and the real Kinetic stand-in (or a Kinetic
that never answers), with a tiny in-memory hub REST API that records what the review asked it to do.
The end-to-end path (real hub, workspaces, browser sessions refused) is
tests/test_access_follows_kinetic.py."""

from __future__ import annotations

import pytest
import requests

from kinetic_auth.access_review import (
    NOT_ON_ANALYSIS,
    ON_ANALYSIS,
    SIGNED_OUT,
    UNREACHABLE,
    AccessReview,
)
from kinetic_auth.authenticator import KineticAuthenticator
from kinetic_auth.hub_api import HubAPIError, Workspace
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE

from ..support import running_standin


class HubInMemory:
    """JupyterHub's REST API as the review uses it: one running workspace a-101, owned by Ada (as a
    release before analyses owned their workspaces left it) or by the analysis (``analysis-101``)."""

    def __init__(self, sign_ins: dict[str, str | None], shared=(GRACE,), owner=ADA):
        self.servers = {(owner, "a-101")}
        self.shares = {(owner, "a-101"): list(shared)}
        self.sign_ins = sign_ins  # person -> Kinetic cookie kept in auth_state
        scope = f"access:servers!server={owner}/a-101"
        self.tokens_of = {
            p: [
                {"id": f"{p}-oauth", "scopes": [scope], "oauth_client": f"Server at /user/{owner}/a-101/"},
                {"id": f"{p}-other", "scopes": ["read:users!user"], "oauth_client": "JupyterHub"},
            ]
            for p in (ADA, GRACE, KATHERINE, owner)
        }
        # the workspace's own API token: the owner's, with access to it too, made by JupyterHub
        self.tokens_of[owner].append({"id": "server", "scopes": [scope], "oauth_client": "JupyterHub"})
        self.done: list[tuple] = []

    async def active_servers_all(self):
        return [Workspace(o, n, n, True, None, f"/user/{o}/{n}/") for o, n in sorted(self.servers)]

    async def shared_with(self, owner, name):
        if (owner, name) not in self.servers:
            raise HubAPIError(404, "no such server")
        return list(self.shares[(owner, name)])

    async def auth_state(self, user):
        token = self.sign_ins.get(user)
        return {"sso_cookie": token} if token else None

    async def tokens(self, user):
        return list(self.tokens_of[user])

    async def revoke_token(self, user, token_id):
        self.tokens_of[user] = [t for t in self.tokens_of[user] if t["id"] != token_id]
        self.done.append(("revoke token", user, token_id))

    async def revoke_share(self, owner, name, user):
        self.shares[(owner, name)].remove(user)
        self.done.append(("revoke share", owner, name, user))

    async def stop_server(self, owner, name):
        self.servers.discard((owner, name))
        self.done.append(("stop", owner, name))


@pytest.fixture(scope="module")
def kinetic(tmp_path_factory):
    with running_standin(tmp_path_factory.mktemp("review-standin")) as s:
        yield s


def signed_in(kinetic, *people):
    out = {}
    for p in people:
        session = requests.Session()
        out[p] = kinetic.sign_in(session, p)
    return out


def review_with(kinetic_url, hub, **kw):
    auth = KineticAuthenticator(kinetic_url=kinetic_url, kinetic_timeout=0.5)
    return AccessReview(auth, hub, **kw)


async def test_people_on_the_analysis_are_kept(kinetic):
    hub = HubInMemory(signed_in(kinetic, ADA, GRACE))
    findings = await review_with(kinetic.url, hub).review()
    assert {(f.person, f.answer, f.action) for f in findings} == {
        (ADA, ON_ANALYSIS, "kept"),
        (GRACE, ON_ANALYSIS, "kept"),
    }
    assert hub.done == []


async def test_a_co_researcher_not_on_the_analysis_loses_share_and_sign_ins_only_to_it(kinetic):
    hub = HubInMemory(signed_in(kinetic, ADA, KATHERINE), shared=(KATHERINE,))  # Katherine: not on 101
    findings = await review_with(kinetic.url, hub).review()
    assert (KATHERINE, NOT_ON_ANALYSIS, "revoked") in {(f.person, f.answer, f.action) for f in findings}
    assert hub.done == [
        ("revoke token", KATHERINE, f"{KATHERINE}-oauth"),  # before the share: its scope is still listed
        ("revoke share", ADA, "a-101", KATHERINE),
    ]
    assert [t["id"] for t in hub.tokens_of[KATHERINE]] == [f"{KATHERINE}-other"]  # other tokens kept
    assert hub.servers == {(ADA, "a-101")}  # the owner works on


async def test_signed_out_of_kinetic_ends_sign_ins_but_not_the_owners_workspace(kinetic):
    sign_ins = signed_in(kinetic, ADA, GRACE)
    s = requests.Session()
    s.cookies.set("oxa", sign_ins[ADA])
    kinetic.sign_out(s)  # Ada signs out in Kinetic
    hub = HubInMemory(sign_ins, shared=())
    findings = await review_with(kinetic.url, hub).review()
    assert [(f.person, f.answer, f.action) for f in findings] == [(ADA, SIGNED_OUT, "revoked")]
    assert hub.done == [("revoke token", ADA, f"{ADA}-oauth")]  # her sign-in, not the server's token
    assert hub.servers == {(ADA, "a-101")}


async def test_an_owner_not_on_the_analysis_has_the_workspace_stopped(kinetic):
    hub = HubInMemory(signed_in(kinetic, ADA, GRACE))
    kinetic.set_researchers(101, [GRACE])
    try:
        findings = await review_with(kinetic.url, hub).review()
    finally:
        kinetic.set_researchers(101, [ADA, GRACE])
    assert (ADA, NOT_ON_ANALYSIS, "stopped") in {(f.person, f.answer, f.action) for f in findings}
    assert ("stop", ADA, "a-101") in hub.done and hub.servers == set()


async def test_in_an_analysis_owned_workspace_everyone_is_a_share_and_nobody_stops_it(kinetic):
    """The analysis owns the workspace: its owner is not a person and is never asked about; the
    researcher who opened it, taken off the analysis, loses her share and sign-ins; it runs on."""
    hub = HubInMemory(signed_in(kinetic, ADA, GRACE), shared=(ADA, GRACE), owner="analysis-101")
    kinetic.set_researchers(101, [GRACE])
    try:
        findings = await review_with(kinetic.url, hub).review()
    finally:
        kinetic.set_researchers(101, [ADA, GRACE])
    assert {(f.person, f.action) for f in findings} == {(ADA, "revoked"), (GRACE, "kept")}
    assert hub.done == [
        ("revoke token", ADA, f"{ADA}-oauth"),
        ("revoke share", "analysis-101", "a-101", ADA),
    ]
    assert hub.servers == {("analysis-101", "a-101")}  # not stopped
    assert [t["id"] for t in hub.tokens_of["analysis-101"]][-1] == "server"  # its own token kept


async def test_kinetic_unreachable_never_means_yes(kinetic, silent_kinetic):
    """A short outage keeps people working; past the grace period access goes, as if Kinetic said no."""
    clock = [1000.0]
    hub = HubInMemory(signed_in(kinetic, ADA, GRACE))
    review = review_with(silent_kinetic, hub, unreachable_grace=30)
    review.clock = lambda: clock[0]
    first = await review.review()
    assert {(f.answer, f.action) for f in first} == {(UNREACHABLE, "waiting")}
    assert hub.done == []
    clock[0] += 31
    later = await review.review()
    assert {(f.person, f.action) for f in later} == {(ADA, "revoked"), (GRACE, "revoked")}
    assert ("revoke share", ADA, "a-101", GRACE) in hub.done
    assert hub.servers == {(ADA, "a-101")}  # the owner's workspace is not stopped for an outage
