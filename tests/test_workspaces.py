"""Opening an analysis: authorized by Kinetic, one workspace per analysis, joined by co-researchers."""

import datetime
import threading
import time

import requests

from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE

from .hub import owner


def _home(hub, analysis_id):
    return hub.state_dir / "workspaces" / str(analysis_id)


def _homes(hub):
    root = hub.state_dir / "workspaces"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_a_researcher_cannot_open_another_researchers_analysis(hub):
    kat = hub.browser_session(KATHERINE)
    before = _homes(hub)
    r = kat.get(f"{hub.url}/hub/analysis/103", allow_redirects=False)
    assert r.status_code == 404
    assert "not one of its researchers" in r.text
    assert hub.servers(KATHERINE) == {} and "a-103" not in hub.servers(owner(103))
    assert _homes(hub) == before  # no storage made
    assert kat.get(f"{hub.url}/hub/analysis/103/progress").status_code == 404


def test_the_rest_api_cannot_start_a_workspace_around_kinetic(hub):
    kat = hub.browser_session(KATHERINE)
    before = _homes(hub)
    token = hub.api("POST", f"/users/{KATHERINE}/tokens", json={"note": "test"}).json()["token"]
    headers = {"Authorization": f"token {token}"}
    import requests

    r = requests.post(f"{hub.url}/hub/api/users/{owner(102)}/servers/a-102", headers=headers)
    assert r.status_code == 403  # researchers hold no `servers` scope on anyone's servers
    r = requests.post(f"{hub.url}/hub/api/users/{KATHERINE}/servers/a-102", headers=headers)
    assert r.status_code == 403  # nor on their own
    # JupyterHub's own spawn page is closed too
    assert kat.get(f"{hub.url}/hub/spawn/{KATHERINE}/a-102", allow_redirects=False).status_code == 403
    # even an operator cannot start a workspace other than by opening the analysis from Kinetic:
    # not as a person's server, not as the analysis's without a researcher opening it
    assert hub.api("POST", f"/users/{owner(102)}").status_code in (201, 409)
    for who in (KATHERINE, owner(102)):
        r = hub.api("POST", f"/users/{who}/servers/a-102")
        assert r.status_code == 202 or r.status_code >= 400  # 202: accepted, then refused before any work
        deadline = time.monotonic() + 15
        while "a-102" in hub.servers(who):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert "Workspaces belong to Kinetic analyses" in hub.log()
    assert "Open analysis 102 from Kinetic (/hub/analysis/102) to start it" in hub.log()
    assert _homes(hub) == before
    # and no server that is not an analysis workspace
    hub.api("POST", f"/users/{KATHERINE}/servers/scratch")
    time.sleep(1)
    assert "scratch" not in hub.servers(KATHERINE)


def test_bad_analysis_ids_are_refused_in_words(hub):
    ada = hub.browser_session(ADA)
    for bad in ["abc", "0", "1;rm", "9" * 30]:
        r = ada.get(f"{hub.url}/hub/analysis/{bad}", allow_redirects=False)
        assert r.status_code == 404 and "Kinetic analysis" in r.text, bad
    r = ada.get(f"{hub.url}/hub/analysis/999", allow_redirects=False)
    assert r.status_code == 404


def test_opening_an_analysis_gives_a_seeded_workspace_through_the_proxy(hub):
    ada = hub.browser_session(ADA)
    first = ada.get(f"{hub.url}/hub/analysis/102", allow_redirects=False)
    assert first.status_code == 200 and "Spaced practice effects" in first.text  # progress page
    events = hub.progress_events(ada, 102)
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), messages
    assert len(events) >= 4 and [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    page = hub.open_analysis(ada, 102)
    assert page.status_code == 200
    assert page.url.startswith(hub.workspace_url(102, "rstudio/"))  # the analysis's own origin
    assert "RStudio" in page.text
    home = _home(hub, 102)
    main = (home / "kinetic" / "main.r").read_text()
    assert f'cutoff_date = "{datetime.date.today().isoformat()}"' in main
    model = hub.api("GET", f"/users/{owner(102)}").json()  # the analysis owns it, Ada is in it by share
    assert "a-102" in model["servers"] and hub.servers(ADA) == {}
    # JupyterHub 6's display name is the analysis title: the admin panel and the API say what it is
    assert model["servers"]["a-102"]["display_name"] == "Spaced practice effects"
    assert model["servers"]["a-102"]["user_options"]["opened_by"] == ADA
    server = hub.api("GET", f"/users/{owner(102)}/servers/a-102").json()
    assert server["display_name"] == "Spaced practice effects"
    renviron = (home / ".Renviron").read_text()
    assert renviron.count("ANALYSIS_API_KEY=a") == 1
    data = list((home / "kinetic" / "data").glob("*.csv"))
    assert data and data[0].read_text().startswith("student_id,")
    # home page shows it running
    assert "Running (opened by you)" in ada.get(f"{hub.url}/hub/home").text


def test_reopening_keeps_the_researchers_work(hub):
    ada = hub.browser_session(ADA)
    hub.open_analysis(ada, 102)
    main = _home(hub, 102) / "kinetic" / "main.r"
    main.write_text(main.read_text() + "\n# my change\n")
    (_home(hub, 102) / "kinetic" / "notes.r").write_text("x <- 1\n")
    hub.stop_workspace(owner(102), "a-102")
    assert "# my change" in main.read_text()
    page = hub.open_analysis(ada, 102)
    assert page.status_code == 200
    assert "# my change" in main.read_text()
    assert (_home(hub, 102) / "kinetic" / "notes.r").read_text() == "x <- 1\n"
    hub.stop_workspace(owner(102), "a-102")


def test_two_researchers_opening_at_the_same_moment_share_one_workspace(hub):
    sessions = {ADA: hub.browser_session(ADA), GRACE: hub.browser_session(GRACE)}
    barrier = threading.Barrier(2)
    results = {}

    def open_(uuid):
        barrier.wait()
        results[uuid] = sessions[uuid].get(f"{hub.url}/hub/analysis/101", allow_redirects=False).status_code

    threads = [threading.Thread(target=open_, args=(u,)) for u in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results.values()) <= {200, 302}
    assert hub.active_workspaces("a-101") == [owner(101)]  # one workspace, the analysis's
    for uuid, s in sessions.items():
        page = hub.open_analysis(s, 101)
        assert page.status_code == 200, (uuid, page.status_code)
        assert page.url.startswith(hub.workspace_url(101))  # both in the one workspace
    assert hub.active_workspaces("a-101") == [owner(101)]
    opener = hub.servers(owner(101))["a-101"]["user_options"]["opened_by"]
    other = GRACE if opener == ADA else ADA
    assert "Running (opened by " in sessions[other].get(f"{hub.url}/hub/home").text
    assert "Running (opened by you)" in sessions[opener].get(f"{hub.url}/hub/home").text
    hub.stop_workspace(owner(101), "a-101")


def test_a_co_researcher_joins_the_running_workspace(hub):
    ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
    hub.open_analysis(ada, 101)
    page = hub.open_analysis(grace, 101)
    assert page.status_code == 200 and page.url.startswith(hub.workspace_url(101))
    assert "a-101" not in hub.servers(GRACE) and "a-101" not in hub.servers(ADA)
    # Katherine, not on the analysis, cannot reach it even with the URL
    kat = hub.browser_session(KATHERINE)
    r = kat.get(hub.workspace_url(101, "rstudio/"), allow_redirects=True)
    assert "RStudio" not in r.text or r.status_code in (403, 404)

    def shared_with():
        return {sh["user"]["name"] for sh in hub.api("GET", f"/shares/{owner(101)}/a-101").json()["items"]}

    assert shared_with() == {ADA, GRACE}  # both researchers are in the analysis's workspace by share
    hub.stop_workspace(owner(101), "a-101")
    # the next start drops old shares: joining again goes through a fresh Kinetic check
    hub.open_analysis(ada, 101)
    assert shared_with() == {ADA}
    hub.stop_workspace(owner(101), "a-101")


def test_two_open_analyses_keep_separate_sessions(hub):
    """W5: the original set cookies for the whole domain, so a second analysis overwrote the first's
    session. Each workspace here has its own origin and its own login cookie, host-only there."""
    ada = hub.browser_session(ADA)
    first = hub.open_analysis(ada, 101)
    second = hub.open_analysis(ada, 102)
    assert first.url.startswith(hub.workspace_url(101)) and second.url.startswith(hub.workspace_url(102))
    cookie_hosts = {c.domain for c in ada.cookies if c.name.startswith("jupyterhub-user-")}
    assert cookie_hosts == {"analysis-101.localhost", "analysis-102.localhost"}, cookie_hosts
    for _ in range(2):  # alternate: neither session knocks the other out
        for url, marker in ((first.url, "a-101"), (second.url, "a-102")):
            r = ada.get(url, allow_redirects=False)
            assert r.status_code == 200 and "RStudio" in r.text, (marker, r.status_code)
    hub.stop_workspace(owner(101), "a-101")
    hub.stop_workspace(owner(102), "a-102")


def test_a_workspace_token_may_report_its_researchers_activity(hub):
    """The culler decides from activity: a workspace busy computing must be able to say so. Its
    server token has JupyterHub's `server` scopes, never more than its owner's role."""
    hub.browser_session(ADA)
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    server_scopes = ["users:activity!user", f"access:servers!server={ADA}/a-102"]
    r = hub.api("POST", f"/users/{ADA}/tokens", json={"note": "like a server token", "scopes": server_scopes})
    assert r.status_code == 201, r.text  # 403 when the researchers' role lacks users:activity
    user_token = hub.api("POST", f"/users/{ADA}/tokens", json={"note": "a researcher's own"}).json()["token"]
    for token in (r.json()["token"], user_token):
        headers = {"Authorization": f"token {token}"}
        r = requests.post(
            f"{hub.url}/hub/api/users/{ADA}/activity", headers=headers, json={"last_activity": now}
        )
        assert r.status_code == 200, r.text
        # only for themselves
        r = requests.post(
            f"{hub.url}/hub/api/users/{GRACE}/activity", headers=headers, json={"last_activity": now}
        )
        assert r.status_code in (403, 404), r.status_code
    assert hub.api("GET", f"/users/{ADA}").json()["last_activity"][:16] == now[:16]
