"""What outlives what: idle workspaces lose compute but keep files; workspaces outlive the hub."""

import time

import pytest

from kinetic_auth.standin.seed import ADA, GRACE

from .hub import owner, running_hub
from .kernel import Kernel


@pytest.fixture
def own_state(tmp_path):
    return tmp_path


def test_an_idle_workspace_is_culled_and_its_files_come_back(own_state, standin):
    env = {"KINETIC_IDLE_TIMEOUT": "6", "KINETIC_IDLE_CHECK_EVERY": "2"}
    with running_hub(own_state, standin, env_overrides=env) as hub:
        grace = hub.browser_session(GRACE)
        assert hub.open_analysis(grace, 103).status_code == 200
        work = own_state / "workspaces" / "103" / "kinetic" / "analysis.r"
        work.write_text("summary(1:10)\n")
        deadline = time.monotonic() + 60
        while hub.servers(owner(103)).get("a-103", {}).get("ready"):
            assert time.monotonic() < deadline, "the idle culler did not stop the workspace"
            time.sleep(1)
        assert work.read_text() == "summary(1:10)\n"
        page = hub.open_analysis(grace, 103)
        assert page.status_code == 200 and "/a-103/" in page.url
        assert work.read_text() == "summary(1:10)\n"


def test_a_computing_workspace_is_not_culled_while_an_idle_one_is(own_state, standin):
    """No browser on either: Ada's kernel computes, Grace's workspace sits idle."""
    env = {"KINETIC_IDLE_TIMEOUT": "15", "KINETIC_IDLE_CHECK_EVERY": "3", "KINETIC_ACTIVITY_INTERVAL": "3"}
    with running_hub(own_state, standin, env_overrides=env, rstudio=False) as hub:
        ada, grace = hub.browser_session(ADA), hub.browser_session(GRACE)
        assert hub.open_analysis(ada, 101, timeout=180).status_code == 200
        assert hub.open_analysis(grace, 103, timeout=180).status_code == 200
        ada.close()
        grace.close()
        token = hub.api("POST", f"/users/{ADA}/tokens", json={"expires_in": 600}).json()["token"]
        kernel = Kernel(hub.workspace_url(101), token)
        kernel.submit("for (i in 1:120) Sys.sleep(1)", watch=3)  # two silent minutes of work
        assert kernel.state() == "busy"
        t0 = time.monotonic()
        while hub.servers(owner(103)).get("a-103", {}).get("ready"):
            assert time.monotonic() - t0 < 90, "the idle workspace was not culled"
            time.sleep(1)
        culled_after = time.monotonic() - t0
        assert culled_after > 5  # idle for the timeout, not stopped at once
        # twice the idle timeout since anyone touched Ada's workspace: computing, so still there
        time.sleep(max(0.0, t0 + 32 - time.monotonic()))
        assert hub.servers(owner(101)).get("a-101", {}).get("ready"), "the computing workspace was culled"
        assert kernel.state() == "busy"


def test_a_hub_restart_keeps_a_running_workspace(own_state, standin):
    with running_hub(own_state, standin) as hub:
        ada = hub.browser_session(ADA)
        page = hub.open_analysis(ada, 102)
        assert page.status_code == 200
        pid_before = hub.servers(owner(102))["a-102"]["url"]
        hub.stop()
        hub.start()
        servers = hub.servers(owner(102))
        assert servers.get("a-102", {}).get("ready"), servers
        assert servers["a-102"]["url"] == pid_before
        # the same browser session still reaches it through the new proxy
        again = ada.get(page.url)
        assert again.status_code == 200 and "RStudio" in again.text
        hub.stop_workspace(owner(102), "a-102")
