"""Sign-in → workspace: how long a researcher waits, against the floor of starting the same
single-user server by hand (no hub, no provisioning, no proxy).

    make bench        (or: .venv/bin/python -m bench workspace_start)
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from kinetic_auth.standin.seed import ADA
from tests.hub import FAKE_RSERVER_DIR, running_hub
from tests.support import free_port, running_standin, stop_process, child_env

RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def bare_singleuser_start(home: Path, hub_api: str) -> float:
    """Time for `jupyterhub-singleuser` alone to answer HTTP: the lower bound for any spawner."""
    port = free_port()
    env = child_env(HOME=str(home), JUPYTERHUB_SERVICE_PREFIX="/user/bench/", JUPYTERHUB_API_TOKEN="x",
                   JUPYTERHUB_API_URL=hub_api, JUPYTERHUB_USER="bench",
                   JUPYTERHUB_CLIENT_ID="jupyterhub-user-bench", JUPYTERHUB_OAUTH_CALLBACK_URL="/x",
                   JUPYTERHUB_BASE_URL="/", JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}/user/bench/")
    env["PATH"] = f"{FAKE_RSERVER_DIR}:{env['PATH']}"
    args = [str(Path(sys.executable).parent / "jupyterhub-singleuser"),
            "--allow-root", "--SingleUserNotebookApp.default_url=/rstudio"]
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/user/bench/api", timeout=1)
                return time.monotonic() - started
            except requests.RequestException:
                time.sleep(0.05)
        raise TimeoutError("bare singleuser did not start")
    finally:
        stop_process(proc)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "standin").mkdir()
        (tmp / "home").mkdir()
        with running_standin(tmp / "standin") as standin, running_hub(tmp / "hub", standin) as hub:
            ours = []
            for i in range(RUNS):
                started = time.monotonic()
                s = hub.browser_session(ADA)                 # sign in at Kinetic and at the hub
                page = hub.open_analysis(s, 102, timeout=120)  # open the analysis, wait for the workspace
                assert page.status_code == 200 and "RStudio" in page.text
                ours.append(time.monotonic() - started)
                hub.stop_workspace(ADA, "a-102")
            floor = [bare_singleuser_start(tmp / "home", f"{hub.url}/hub/api") for _ in range(RUNS)]
    o, f = statistics.median(ours), statistics.median(floor)
    print(f"sign-in -> workspace (first run seeds the project): {', '.join(f'{x:.2f}' for x in ours)} s")
    print(f"bare jupyterhub-singleuser start (lower bound):      {', '.join(f'{x:.2f}' for x in floor)} s")
    print(f"median {o:.2f} s vs {f:.2f} s: ratio {o / f:.2f}x the lower bound")


if __name__ == "__main__":
    main()
