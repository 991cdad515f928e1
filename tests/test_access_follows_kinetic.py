"""Issue 7, attack 3: removal from an analysis in Kinetic removes access to its running workspace —
the removed researcher's open session and a fresh sign-in both — within a stated bound, while the
researchers still on it keep working; signing out of Kinetic ends open workspace sessions too.

A real hub, proxy, container workspaces and a Kinetic stand-in of their own (its memberships are
changed here, as an analysis owner changes them in Kinetic)."""

from __future__ import annotations

import asyncio
import time

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from kinetic_auth.standin.seed import ADA, GRACE

from .hub import owner, running_hub
from .kernel import Kernel
from .support import running_standin

REVIEW_SECONDS = 5  # the test hub's review period; the default is 15
BOUND = 60  # what the README promises with the defaults


@pytest.fixture(scope="module")
def setting(tmp_path_factory, workspace_image):
    with running_standin(tmp_path_factory.mktemp("access-standin")) as standin:
        with running_hub(
            tmp_path_factory.mktemp("access-hub"),
            standin,
            env_overrides={"KINETIC_ACCESS_REVIEW_SECONDS": str(REVIEW_SECONDS)},
        ) as hub:
            yield standin, hub


def contents_url(hub, analysis_id=101):
    return hub.workspace_url(analysis_id, "api/contents/kinetic")


def shared_with(hub, analysis_id=101) -> set[str]:
    items = hub.api("GET", f"/shares/{owner(analysis_id)}/a-{analysis_id}").json()["items"]
    return {s["user"]["name"] for s in items}


def reaches(session: requests.Session, url: str) -> bool:
    """The person's browser session reads the workspace's files (following any sign-in redirect)."""
    r = session.get(url, timeout=30)
    return r.status_code == 200 and r.url == url and '"main.r"' in r.text


def seconds_until_refused(session, url, limit: float = BOUND + 30) -> float:
    t0 = time.monotonic()
    while reaches(session, url):
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"still reaches {url} after {limit} s")
        time.sleep(1)
    return time.monotonic() - t0


def test_a_researcher_removed_in_kinetic_loses_the_workspace_within_the_bound(setting):
    standin, hub = setting
    ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
    assert hub.open_analysis(ada, 101).url.startswith(hub.workspace_url(101))
    assert hub.open_analysis(grace, 101).url.startswith(hub.workspace_url(101))  # Grace joins
    url = contents_url(hub)
    assert reaches(ada, url) and reaches(grace, url)

    try:
        standin.set_researchers(101, [ADA])  # Ada removes Grace from the analysis in Kinetic
        took = seconds_until_refused(grace, url)
        assert took <= BOUND, took
        print(f"Grace's open session refused {took:.1f} s after her removal in Kinetic")
        # her share is gone, and a fresh sign-in is refused too (asked of Kinetic at the sign-in)
        assert shared_with(hub) == {ADA}
        fresh = hub.browser_session(GRACE)
        r = fresh.get(hub.workspace_url(101, "lab"), timeout=30)
        assert r.status_code == 403 and "not a researcher on analysis 101" in r.text, (r.status_code, r.url)
        assert not reaches(fresh, url)
        assert hub.open_analysis(fresh, 101, wait=False).status_code == 404
        # Ada, who opened it and is still on the analysis, works on undisturbed
        assert reaches(ada, url)
        assert "a-101" in hub.servers(owner(101))

        # Kinetic adds her back: she opens the analysis again and is in
        standin.set_researchers(101, [ADA, GRACE])
        back = hub.browser_session(GRACE)
        assert hub.open_analysis(back, 101).url.startswith(hub.workspace_url(101))
        assert reaches(back, url)
    finally:
        standin.set_researchers(101, [ADA, GRACE])


def test_a_fresh_sign_in_is_asked_of_kinetic_even_before_the_review_runs(setting):
    """The share is still there (the review has not run yet): the sign-in itself asks Kinetic."""
    standin, hub = setting
    ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
    hub.open_analysis(ada, 101)
    hub.open_analysis(grace, 101)
    later = hub.browser_session(GRACE)  # a second browser, never signed in to the workspace
    try:
        standin.set_researchers(101, [ADA])
        r = later.get(hub.workspace_url(101, "lab"), timeout=30)
        assert r.status_code == 403, (r.status_code, r.url)
    finally:
        standin.set_researchers(101, [ADA, GRACE])


def test_signing_out_of_kinetic_ends_open_workspace_sessions(setting):
    standin, hub = setting
    ada = hub.browser_session(ADA)
    hub.open_analysis(ada, 102)
    url = contents_url(hub, 102)
    assert reaches(ada, url)
    standin.sign_out(ada)  # in Kinetic: the hub is not visited
    took = seconds_until_refused(ada, url)
    assert took <= BOUND, took
    print(f"Ada's workspace session refused {took:.1f} s after she signed out of Kinetic")
    # her hub session is still there, but signing in to the workspace again checks Kinetic's: she is
    # sent to sign in to Kinetic, with a way back
    r = ada.get(hub.workspace_url(102, "lab"), timeout=30)
    assert r.url.startswith(f"{standin.browser_url}/accounts/login"), r.url
    assert "a-102" in hub.servers(owner(102))  # the workspace runs on (a long computation is not lost)
    assert shared_with(hub, 102) == set()  # her way in is gone until she opens it again
    # and keeps its own API token (the analysis's: activity reports, visitors' sign-ins)
    kept = hub.api("GET", f"/users/{owner(102)}/tokens").json()["api_tokens"]
    assert any(f"access:servers!server={owner(102)}/a-102" in t["scopes"] for t in kept), kept
    again = hub.browser_session(ADA)
    assert hub.open_analysis(again, 102).url.startswith(hub.workspace_url(102)) and reaches(again, url)
    hub.stop_workspace(owner(102), "a-102")


def test_the_opener_removed_in_kinetic_loses_the_workspace_and_the_others_keep_it(setting):
    """The workspace is the analysis's, not its opener's: taking the opener off the analysis takes
    their access away and leaves the workspace running for the researchers still on it."""
    standin, hub = setting
    ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
    hub.open_analysis(ada, 101)
    assert hub.servers(owner(101))["a-101"]["user_options"]["opened_by"] == ADA
    hub.open_analysis(grace, 101)
    url = contents_url(hub)
    try:
        standin.set_researchers(101, [GRACE])  # Grace takes Ada off the analysis
        took = seconds_until_refused(ada, url)
        assert took <= BOUND, took
        assert shared_with(hub) == {GRACE}
        assert reaches(grace, url) and hub.servers(owner(101))["a-101"]["ready"]  # not stopped
        assert hub.open_analysis(hub.browser_session(ADA), 101, wait=False).status_code == 404
        hub.stop_workspace(owner(101), "a-101")
    finally:
        standin.set_researchers(101, [ADA, GRACE])


def test_an_open_kernel_connection_ends_when_kinetic_removes_its_researcher(setting):
    """A websocket is checked once, when it opens: the workspace re-checks open connections with
    the hub (kinetic_session_check in the image) and closes the removed researcher's."""
    standin, hub = setting
    ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
    hub.open_analysis(ada, 101)
    hub.open_analysis(grace, 101)
    server = hub.workspace_url(101)
    # a token Grace made for this workspace (what her browser's sign-in is, minus the cookie jar)
    made = hub.api(
        "POST",
        f"/users/{GRACE}/tokens",
        json={"scopes": [f"access:servers!server={owner(101)}/a-101"], "expires_in": 900, "note": "grace's"},
    )
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"token {made.json()['token']}"}
    kernel = Kernel(server, made.json()["token"])
    assert kernel.run("cat(6 * 7)").stdout == "42"

    async def seconds_until_closed() -> tuple[float, int | None]:
        url = server.replace("http", "ws", 1) + f"api/kernels/{kernel.id}/channels"
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        standin.set_researchers(101, [ADA])
        t0 = time.monotonic()
        while await asyncio.wait_for(conn.read_message(), timeout=BOUND + 30) is not None:
            pass  # status messages; None = the server closed the connection
        return time.monotonic() - t0, conn.close_code

    try:
        took, code = asyncio.run(seconds_until_closed())
    finally:
        standin.set_researchers(101, [ADA, GRACE])
    assert took <= BOUND and code == 4403, (took, code)
    print(f"Grace's open kernel connection closed {took:.1f} s after her removal in Kinetic")
    # Ada's kernel connection (the same kernel) works on
    assert (
        Kernel(server, hub.api("POST", f"/users/{ADA}/tokens", json={"expires_in": 300}).json()["token"])
        .run("cat(1 + 1)")
        .stdout
        == "2"
    )


def test_signing_out_of_the_hub_ends_open_workspace_sessions(setting):
    """The hub's sign-out ends the Kinetic session too (it sends the browser on to Kinetic's), and
    JupyterHub deletes the sign-ins made in that hub session: even a copy of the workspace's login
    cookie (kept by code that saw it, or another tab) is refused at the workspace's next token check."""
    standin, hub = setting
    ada = hub.browser_session(ADA)
    hub.open_analysis(ada, 102)
    url = contents_url(hub, 102)
    assert reaches(ada, url)
    copy = requests.Session()
    copy.cookies.update({c.name: c.value for c in ada.cookies if c.name.startswith("jupyterhub-user-")})
    assert reaches(copy, url)
    r = ada.get(f"{hub.url}/hub/logout", timeout=30)  # follows on to Kinetic's sign-out
    assert "oxa" not in ada.cookies, r.url
    assert seconds_until_refused(ada, url) <= BOUND
    took = seconds_until_refused(copy, url)
    assert took <= BOUND, took
    print(f"a copy of Ada's workspace login refused {took:.1f} s after she signed out of the hub")
    hub.stop_workspace(owner(102), "a-102")
