"""The hub killed (SIGKILL, its whole process group, as an out-of-memory kill or a crashed host
would) at each step of a workspace start, then started again: every container is adopted or
removed, never two servers on one analysis home, and reopening the analysis works.

Grace's workspace (103) runs throughout: each restarted hub must adopt it, and with it the shared
reflector starts reaping what the killed start left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from kinetic_auth.standin.seed import ADA, GRACE

from .hub import owner, running_hub

GRACE_SECONDS = 3
# the progress message at which the hub is killed: before, during and after provisioning, while
# the server container starts, and just before the server answers
KILL_AT = [
    "Preparing storage",
    "Downloading synthetic data",
    "Synthetic data downloaded",
    "Starting the workspace server",
    "Waiting for the workspace server to answer",
]


def containers(analysis: int, instance_of=None) -> list[dict]:
    out = subprocess.run(
        [
            "podman",
            "ps",
            "-a",
            "--format",
            "json",
            "--filter",
            f"label=org.kinetic.workspace.analysis={analysis}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = json.loads(out or "[]") or []
    if instance_of is not None:
        found = [c for c in found if c["Labels"].get("org.kinetic.workspace.instance") == instance_of]
    return found


def kill_hub(hub) -> None:
    os.killpg(hub.proc.pid, signal.SIGKILL)
    hub.proc.wait(10)
    hub.proc = None


def kill_during_start(hub, session, analysis: int, message: str) -> list[str]:
    """Open the analysis and SIGKILL the hub when the progress stream shows ``message``."""
    r = session.get(f"{hub.url}/hub/analysis/{analysis}", allow_redirects=False)
    assert r.status_code == 200, r.text[:300]
    seen = []
    with session.get(f"{hub.url}/hub/analysis/{analysis}/progress", stream=True, timeout=120) as events:
        for line in events.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            seen.append(event.get("message", ""))
            if event.get("message", "").startswith(message):
                kill_hub(hub)
                return seen
            assert not event.get("failed") and not event.get("ready"), seen
    raise AssertionError(f"never saw {message!r}: {seen}")


@pytest.fixture
def hub(standin, tmp_path):
    with running_hub(
        tmp_path, standin, rstudio=False, env_overrides={"KINETIC_ORPHAN_GRACE_SECONDS": str(GRACE_SECONDS)}
    ) as h:
        yield h


def test_a_hub_killed_at_any_step_of_a_start_leaves_one_workspace_or_none(hub):
    grace = hub.browser_session(GRACE)
    assert hub.open_analysis(grace, 103, timeout=180).status_code == 200
    instance = hub.instance  # the label naming this hub's containers (ContainerBackend.instance)
    assert len(containers(103, instance)) == 1

    for message in KILL_AT:
        ada = hub.browser_session(ADA)
        seen = kill_during_start(hub, ada, 101, message)
        left = containers(101, instance)
        hub.start()
        # Grace's workspace was adopted, untouched
        assert hub.servers(owner(103)).get("a-103", {}).get("ready"), (message, hub.log()[-2000:])
        # what the killed start left is adopted (a server the hub recorded) or removed
        deadline = time.monotonic() + GRACE_SECONDS + 30
        while True:
            now = containers(101, instance)
            adopted = hub.servers(owner(101)).get("a-101", {}).get("ready")
            servers = [c for c in now if c["Labels"]["org.kinetic.workspace.role"] == "server"]
            if (adopted and len(now) == 1 and len(servers) == 1) or (not adopted and not now):
                break
            assert time.monotonic() < deadline, (message, seen, left, now, adopted, hub.log()[-3000:])
            time.sleep(1)
        print(
            f"killed at {message!r}: left {[c['Names'][0] for c in left]}, "
            f"{'adopted' if adopted else 'removed'}"
        )

        # reopening works, on exactly one server for the analysis home
        ada = hub.browser_session(ADA)
        page = hub.open_analysis(ada, 101, timeout=180)
        assert page.status_code == 200 and "/a-101/" in page.url, (message, page.text[:500])
        now = containers(101, instance)
        assert len(now) == 1 and now[0]["Labels"]["org.kinetic.workspace.role"] == "server", now
        assert (hub.state_dir / "workspaces" / "101" / "kinetic" / "main.r").exists()
        hub.stop_workspace(owner(101), "a-101", timeout=60)
        assert containers(101, instance) == []

    token = hub.api("POST", f"/users/{GRACE}/tokens", json={"expires_in": 600}).json()["token"]
    r = requests.get(
        hub.workspace_url(103, "api/status"), headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert r.status_code == 200  # Grace worked through five hub crashes
