"""WorkspaceSpawner with the process backend (development only) inside a real JupyterHub (MockHub + configurable-http-proxy),
with the real Kinetic stand-in, the real jupyterhub-singleuser and a fake `rserver` on PATH.

One workspace is started for the module and shared by the tests below (starting one takes
seconds); the tests run in file order: start → use → second researcher refused → hub restart
→ stop.
"""

import asyncio
import os
import time
from pathlib import Path

import pytest
import requests
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import add_user, api_request, async_requests, public_url
from tornado import web
from traitlets.config import Config

from kinetic_auth.standin.seed import ADA
from kinetic_spawner.backends.process import process_start_time
from kinetic_spawner.spawner import WorkspaceSpawner

from .support import ROOT

TESTS_BIN = Path(__file__).resolve().parent / "bin"
SERVER = "a-101"
# the hub runs on the session loop (the fixtures' loop); the tests must run on it too, or the hub
# cannot answer the workspace's calls while a test waits
pytestmark = pytest.mark.asyncio(loop_scope="session")


def group_members(pgid: int) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rfind(")") + 2 :].split()
            if rest[0] != "Z" and int(rest[2]) == pgid:
                pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def analysis(standin):
    s = requests.Session()
    standin.sign_in(s, ADA)
    return s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()


@pytest.fixture(scope="module")
async def hub(standin, tmp_path_factory):
    old_path = os.environ["PATH"]
    # configurable-http-proxy for the hub; the fake rserver for the workspace
    os.environ["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(TESTS_BIN), old_path])
    root = tmp_path_factory.mktemp("workspaces")
    cfg = Config()
    cfg.WorkspaceSpawner.backend = "process"
    cfg.HomesOnThisHost.workspaces_root = str(root)
    cfg.WorkspaceSpawner.kinetic_url = standin.url
    cfg.ProcessBackend.stop_timeout = 5
    cfg.ProcessBackend.run_as_root = True  # these tests run as root; the refusal is tested below
    app = MockHub.instance(
        config=cfg,
        spawner_class=WorkspaceSpawner,
        allow_named_servers=True,
        cleanup_servers=False,
        cookie_secret=os.urandom(32),
    )
    await app.initialize([])
    await app.start()
    for name in ("ada", "grace"):
        add_user(app.db, app, name=name)
    try:
        yield app
    finally:
        # stop what the tests left running, on this loop (MockHub's own cleanup uses another loop)
        for user in list(app.users.values()):
            for spawner in list(user.spawners.values()):
                if isinstance(spawner, WorkspaceSpawner):
                    await spawner.stop(now=True)
        for spawner in list(WorkspaceSpawner._active.values()):
            await spawner.stop(now=True)
        app.log.handlers = []
        MockHub.clear_instance()
        app.stop()
        os.environ["PATH"] = old_path


@pytest.fixture(scope="module")
async def workspace(hub, analysis):
    """Ada opens analysis 101 through the hub's REST API, as the hub's analysis page would."""
    user = hub.users["ada"]
    spawner = user.get_or_create_spawner(SERVER, "")
    spawner.analysis = analysis  # what KineticAuthenticator.pre_spawn_start does

    events = []

    async def follow():
        async for event in spawner.progress():
            events.append((time.monotonic(), event))

    follower = asyncio.create_task(follow())
    t0 = time.monotonic()
    r = await api_request(hub, "users", "ada", "servers", SERVER, method="post")
    assert r.status_code in (201, 202), r.text
    while not spawner.ready:
        assert time.monotonic() - t0 < 90, "workspace did not become ready"
        assert spawner.pending or spawner.ready, "spawn failed"
        await asyncio.sleep(0.1)
    started = time.monotonic() - t0
    await asyncio.wait_for(follower, 5)
    print(f"\nworkspace ready in {started:.1f}s")
    return {
        "user": user,
        "spawner": spawner,
        "events": events,
        "seconds": started,
        "ready_at": time.monotonic(),
        "token": user.new_api_token(note="test"),
    }


async def test_start_reports_each_step_in_order(workspace):
    messages = [e["message"] for _, e in workspace["events"]]
    progress = [e["progress"] for _, e in workspace["events"]]
    assert progress == sorted(progress)
    expected = [
        "Acquiring a host",
        "Preparing storage",
        "Provisioning the workspace",
        "Provisioning: seeded the blank project",
        "Downloading synthetic data",
        "Synthetic data downloaded",
        "Starting the workspace server (RStudio)",
        "Waiting for the workspace server to answer",
    ]
    found = [next(i for i, m in enumerate(messages) if m.startswith(x)) for x in expected]
    assert found == sorted(found), messages
    # events arrived as they happened (the first long before the server answered), not at the end
    times = [t for t, _ in workspace["events"]]
    assert times[-1] - times[0] > 0.1 and workspace["ready_at"] - times[0] > 0.5


async def test_workspace_answers_with_rstudio_through_the_proxy(hub, workspace):
    spawner, user, token = workspace["spawner"], workspace["user"], workspace["token"]
    headers = {"Authorization": f"token {token}"}
    api = await async_requests.get(public_url(hub, user, f"{SERVER}/api/status"), headers=headers)
    assert api.status_code == 200, api.text
    environ = Path(f"/proc/{spawner.get_state()['workspace']['pid']}/environ").read_bytes().split(b"\0")
    assert b"JUPYTERHUB_DEFAULT_URL=/rstudio" in environ
    jupyter_path = next(v for v in environ if v.startswith(b"JUPYTER_PATH=")).split(b"=", 1)[1]
    assert b"/usr/share/jupyter" in jupyter_path.split(b":")  # where Debian put the `ir` kernel
    kernels = await async_requests.get(public_url(hub, user, f"{SERVER}/api/kernelspecs"), headers=headers)
    assert "ir" in kernels.json()["kernelspecs"]  # JupyterLab offers R in the workspace
    landing = await async_requests.get(
        public_url(hub, user, f"{SERVER}/"), headers=headers, allow_redirects=False
    )
    assert landing.headers["Location"].split("?")[0].endswith(f"/user/ada/{SERVER}/rstudio")
    r = await async_requests.get(public_url(hub, user, f"{SERVER}/rstudio/"), headers=headers)
    assert r.status_code == 200 and "RStudio (test stand-in)" in r.text, r.text[:500]
    home = Path(spawner.get_state()["workspace"]["home"])
    assert f"<p id='home'>{home}</p>" in r.text  # RStudio runs in the analysis home
    assert (home / "kinetic" / "main.r").exists()
    assert (home / "kinetic" / "data" / "responses.csv").exists()
    assert oct(home.stat().st_mode & 0o777) == "0o700"


async def test_no_secret_in_arguments_or_saved_state(workspace, analysis):
    spawner = workspace["spawner"]
    saved = spawner.get_state()
    assert saved["version"] == 2 and saved["backend"] == "process"
    state = saved["workspace"]
    assert set(state) >= {"pid", "pid_start", "port", "home"}
    assert analysis["api_key"] not in repr(saved)
    token = spawner.api_token
    members = group_members(state["pid"])
    assert len(members) >= 2  # the server and RStudio (started by jupyter-rsession-proxy)
    for pid in members:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert analysis["api_key"].encode() not in cmdline and token.encode() not in cmdline
    main_cmd = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    assert any(a.endswith(b"/jupyterhub-singleuser") for a in main_cmd[:2]) and b"--allow-root" in main_cmd


async def test_a_second_instance_of_the_same_analysis_is_refused(hub, workspace, analysis):
    spawner = hub.users["grace"].get_or_create_spawner(SERVER, "")
    spawner.analysis = analysis
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    assert e.value.status_code == 409
    assert "already has a workspace running (owned by ada)" in e.value.log_message
    assert WorkspaceSpawner.active_for(101) is workspace["spawner"]
    assert WorkspaceSpawner.active_for(103) is None


async def test_start_refuses_what_is_not_an_analysis_workspace(hub, analysis):
    plain = hub.users["grace"].get_or_create_spawner("notes", "")
    plain.analysis = analysis
    with pytest.raises(web.HTTPError) as e:
        await plain.start()
    assert e.value.status_code == 400 and "not an analysis workspace" in e.value.log_message
    bare = hub.users["grace"].get_or_create_spawner("a-103", "")
    with pytest.raises(web.HTTPError) as e:
        await bare.start()
    assert e.value.status_code == 400 and "/hub/analysis/103" in e.value.log_message


async def test_the_aws_backend_is_refused_clearly_for_now(hub):
    spawner = hub.users["grace"].get_or_create_spawner("a-103", "")
    spawner.backend = "aws"
    spawner.analysis = {"id": 103, "api_key": "a-not-used"}
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    assert e.value.status_code == 501 and "not implemented yet" in e.value.log_message
    assert WorkspaceSpawner.active_for(103) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for a hub running as root")
async def test_the_process_backend_refuses_to_run_a_workspace_as_root(hub):
    """A workspace runs hostile code: as root (--allow-root) it would own the machine."""
    spawner = hub.users["grace"].get_or_create_spawner("a-103", "")
    spawner.backend = "process"
    spawner.analysis = {"id": 103, "title": "Root?", "api_key": "a-not-used"}
    spawner._backend_impl().run_as_root = False
    with pytest.raises(Exception) as e:
        await spawner.start()
    assert "would run this workspace as root" in str(e.value) + str(spawner.failure_message)
    assert spawner._backend_impl().running is False
    assert WorkspaceSpawner.active_for(103) is None


async def test_rserver_is_found_on_the_path_or_not_at_all(hub):
    spawner = hub.users["grace"].get_or_create_spawner("a-103", "")
    spawner.backend = "process"
    backend = spawner._backend_impl()
    assert backend.find_rserver("/usr/bin:/bin") is None
    assert backend.find_rserver(str(TESTS_BIN)).endswith("tests/bin/rserver")


async def test_after_a_hub_restart_the_running_workspace_is_found_again(hub, workspace):
    old = workspace["spawner"]
    state = old.get_state()
    WorkspaceSpawner._active.clear()  # a new hub process starts with an empty registry
    new = workspace["user"]._new_spawner(SERVER, spawner_class=WorkspaceSpawner)
    new.load_state(state)
    assert await new.poll() is None
    assert WorkspaceSpawner._active["101"] is new
    # a recycled pid (same number, another process) is not taken for the workspace
    other = workspace["user"]._new_spawner(SERVER, spawner_class=WorkspaceSpawner)
    inner = state["workspace"]
    other.load_state(dict(state, workspace=dict(inner, pid_start=inner["pid_start"] - 1)))
    assert await other.poll() == 0
    # the flat state of the previous release (version 1, backend "local") is still understood
    legacy = workspace["user"]._new_spawner(SERVER, spawner_class=WorkspaceSpawner)
    legacy.load_state({"backend": "local", "analysis_id": "101", **inner})
    assert legacy.workspace_backend.kind == "process" and await legacy.poll() is None
    WorkspaceSpawner._active["101"] = new
    workspace["restarted"] = new


async def test_stop_ends_the_process_group_and_keeps_the_files(workspace):
    new = workspace["restarted"]
    state = new.get_state()["workspace"]
    pgid, home = state["pid"], Path(state["home"])
    assert group_members(pgid)
    t0 = time.monotonic()
    await new.stop()
    assert time.monotonic() - t0 < 8
    assert group_members(pgid) == []
    assert process_start_time(pgid) is None
    assert await new.poll() == 0
    assert await workspace["spawner"].poll() is not None  # the hub's own handle sees it gone too
    assert "101" not in WorkspaceSpawner._active
    assert (home / "kinetic" / "main.r").exists() and (home / ".Renviron").exists()
    assert (home / "kinetic" / "data" / "responses.csv").exists()
